"""Offline benchmark: the native engine in-process (no HTTP), next to transformers' peers.

`python -m container.bench.offline --model-dir DIR --num-prompts 256 --input-len 128
--output-len 128 --peers generate_batch` prints output tok/s for our engine and for
transformers' generate (static batch) / generate_batch (continuous batching) on the same
prompts, and saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import sys
import time

from .results import device_name, save, table


def our_engine(model_dir: str, prompts: list[list[int]], output_len: int,
               options: dict[str, str], more_runs: list[list[list[int]]] = ()) -> dict:
    """Our engine on the prompts, then on each prompt set of more_runs (fresh prompts: a set
    run twice would be served from the prefix cache); the figures are the median run's."""
    from ..config.loader import load_config
    from ..engine.service import NativeService
    from ..workers.dist_env import DistEnv
    from ..workers.protocol import SamplingParams

    env = {f"OPTION_{k.upper()}": v for k, v in options.items()}
    env.setdefault("OPTION_TENSOR_PARALLEL_DEGREE", "1")
    started = time.perf_counter()
    service = NativeService(load_config(model_dir, env), DistEnv(0, 1, 0, 1))
    load_s = time.perf_counter() - started
    engine = service.engine
    sampling = SamplingParams(max_new_tokens=output_len, ignore_eos=True)
    for warm, prompt in enumerate(prompts[:2]):             # compile kernels, first touches
        engine.add_request(f"warm{warm}", prompt, SamplingParams(max_new_tokens=4))
    while engine.has_work():
        engine.step()
    _sync()
    runs = []
    for run, prompt_set in enumerate([prompts, *more_runs]):
        engine.seconds.clear()
        started = time.perf_counter()
        for i, prompt in enumerate(prompt_set):
            engine.add_request(f"{run}-{i}", prompt, sampling)
        produced = 0
        steps = 0
        while engine.has_work():
            produced += sum(len(o.new_token_ids) for o in engine.step())
            steps += 1
        _sync()
        runs.append(_run_figures(produced, time.perf_counter() - started, steps=steps,
                                 phase_seconds={k: round(v, 3)
                                                for k, v in engine.seconds.items()}))
    result = {"name": "native engine", **_median_run(runs), "load_s": load_s}
    del service, engine
    _release()
    return result


def _run_figures(produced: int, elapsed: float, **more) -> dict:
    return {"output_tokens": produced, "seconds": elapsed,
            "output_tokens_per_s": produced / elapsed, **more}


def _median_run(runs: list[dict]) -> dict:
    """The median run's figures, with every run's tok/s when there was more than one."""
    ranked = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    median = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        median["runs_tok_s"] = [round(r["output_tokens_per_s"], 1) for r in runs]
    return median


def transformers_peer(model_dir: str, prompts: list[list[int]], output_len: int, kind: str,
                      batch: int, more_runs: list[list[list[int]]] = ()) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    attention = "paged|sdpa" if kind == "generate_batch" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation=attention, device_map="cuda" if cuda else None).eval()
    load_s = time.perf_counter() - started
    config = GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    generate = _continuous_batches if kind == "generate_batch" else \
        functools.partial(_static_batches, batch=batch)
    runs = []
    with torch.no_grad():
        for prompt_set in [prompts, *more_runs]:
            runs.append(_run_figures(*generate(model, prompt_set, config, warm=not runs)))
    del model
    _release()
    return {"name": f"transformers {kind}" + (f" (batch {batch})" if kind == "generate" else ""),
            **_median_run(runs), "load_s": load_s}


def _continuous_batches(model, prompts, config, warm: bool) -> tuple[int, float]:
    """transformers generate_batch (continuous batching) over all the prompts; tokens made and
    seconds spent in it. warm: a short call first (not timed)."""
    from transformers import GenerationConfig

    if warm:
        model.generate_batch(inputs=prompts[:2], generation_config=GenerationConfig(
            max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0))
    _sync()
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config)
    _sync()
    return (sum(len(o.generated_tokens) for o in outputs.values()),
            time.perf_counter() - started)


def _static_batches(model, prompts, config, warm: bool, batch: int) -> tuple[int, float]:
    """transformers generate over the prompts in static batches (left-padded); tokens made
    and seconds spent in generate. warm: a short call first (not timed)."""
    import torch

    produced, elapsed = 0, 0.0
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                            device=model.device)
        if warm and start == 0:
            model.generate(input_ids=ids[:, :8], attention_mask=mask[:, :8],
                           max_new_tokens=2, do_sample=False, pad_token_id=0)
        _sync()
        began = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        _sync()
        elapsed += time.perf_counter() - began
        produced += (out.shape[1] - width) * len(chunk)
    return produced, elapsed


def _sync():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def _release():
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def random_token_prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(length)] for _ in range(count)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m container.bench.offline")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--option", action="append", default=[], help="engine option key=value")
    p.add_argument("--peers", default="", help="comma list: generate, generate_batch")
    p.add_argument("--peer-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each engine, each on fresh prompts; the median run is reported")
    p.add_argument("--label", default="offline")
    p.add_argument("--results-dir", default=os.environ.get("BENCH_RESULTS_DIR", "bench/results"))
    args = p.parse_args(argv)
    from ..engine.model_config import ModelConfig

    vocab = ModelConfig.from_dir(args.model_dir).vocab_size
    prompts, *more_runs = [random_token_prompts(vocab, args.num_prompts, args.input_len, seed)
                           for seed in range(max(1, args.repeats))]
    options = dict(item.split("=", 1) for item in args.option)
    rows = [our_engine(args.model_dir, prompts, args.output_len, options, more_runs)]
    for peer in filter(None, args.peers.split(",")):
        try:
            rows.append(transformers_peer(args.model_dir, prompts, args.output_len, peer,
                                          args.peer_batch, more_runs))
        except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
            rows.append({"name": f"transformers {peer}", "error": f"{type(exc).__name__}: {exc}"})
    ours = rows[0]["output_tokens_per_s"]
    for row in rows:
        if row.get("output_tokens_per_s"):
            row["ours_vs_this"] = ours / row["output_tokens_per_s"]
    report = {"label": args.label, "device": device_name(), "mode": "offline",
              "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len,
                           "output_len": args.output_len},
              "repeats": args.repeats, "options": options, "results": rows}
    path = save(report, args.results_dir, args.label)
    print(f"# {args.label} on {report['device']}: {args.num_prompts} requests, "
          f"{args.input_len} in / {args.output_len} out")
    print(table(rows, [("engine", "name"), ("out tok/s", "output_tokens_per_s"),
                       ("seconds", "seconds"), ("load s", "load_s"), ("ours / this", "ours_vs_this"),
                       ("error", "error")]))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
