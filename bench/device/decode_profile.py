"""Where a decode step's GPU time goes, and candidate changes side by side, in one run.

    python3 bench/device/decode_profile.py [phases...]
    phases: env ckpt tests graphs attention gemm engine serve_w1   (default: all, in that order)

graphs     decode-graph replay time at batch 1/16/64/256 (context 256, distinct random blocks,
           random KV) for each L2-prefetch setting (kernels/prefetch.py), and a per-kernel
           profile of one replay (torch profiler): time per kernel class, bubbles between kernels
attention  the split-KV decode kernel's launch shapes at batch 1 (context 256) and 256
           (context 192), 32 layers' caches in turn, against the bytes of K and V read
gemm       cuBLAS vs cuBLASLt for every projection at M = 1 and 256 (32 layers' weights in turn)
engine     the engine in-process: W1-like (1 x 128 in / 256 out, greedy) per prefetch setting,
           with a profile of the steps (gaps between graph replays); W4-like (256 x 128/128)
           with the default and the best attention shape, prefill budget 16384 and 32768
serve_w1   `serve` + the HTTP load generator, W1 only (batch 1, 128/256)

Everything lands in $OUT/decode_profile.json (rewritten after every phase); a short table is
printed at the end.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import native_gpu as base  # noqa: E402

REPO = base.REPO
OUT = base.OUT
CKPT = base.CKPT
RESULTS: dict = {}
log = base.log


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.update({k: v for k, v in base.SUMMARY.items() if k in ("env", "checkpoint",
                                                                    "gpu_tests")})
    (OUT / "decode_profile.json").write_text(json.dumps(RESULTS, indent=1, default=str))


# shared state ------------------------------------------------------------------------------------
_SERVICE = None


def service():
    global _SERVICE
    if _SERVICE is None:
        import torch

        from container.config.loader import load_config
        from container.engine.service import NativeService
        from container.workers.dist_env import DistEnv

        env = {"OPTION_MAX_ROLLING_BATCH_SIZE": "256", "OPTION_MAX_MODEL_LEN": "2048",
               "OPTION_TENSOR_PARALLEL_DEGREE": "1",
               "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS": "16384"}
        started = time.perf_counter()
        _SERVICE = NativeService(load_config(str(CKPT), env), DistEnv(0, 1, 0, 1))
        for cache in _SERVICE.runner.kv_caches:          # never time attention on zeros
            cache.normal_()
        torch.cuda.synchronize()
        RESULTS["service_load_s"] = time.perf_counter() - started
    return _SERVICE


def decode_plan(batch: int, ctx: int, num_blocks: int, vocab: int, seed: int = 0):
    import numpy as np

    from container.engine.model_runner import StepPlan

    rng = np.random.default_rng(seed)
    page = 16
    per = -(-ctx // page)
    width = -(-per // 16) * 16
    tables = np.zeros((batch, width), np.int64)
    tables[:, :per] = rng.permutation(num_blocks)[:batch * per].reshape(batch, per)
    pos = ctx - 1
    ids = rng.integers(1, vocab, batch)
    positions = np.full(batch, pos)
    slots = tables[:, pos // page] * page + pos % page
    header = [batch, batch, width, batch, batch]
    data = np.concatenate([header, ids, positions, slots, np.arange(batch + 1),
                           np.full(batch, ctx), tables.ravel(), np.arange(batch),
                           np.full(batch, -1)]).astype(np.int64)
    return StepPlan(data)


def time_graph(graph, count: int = 50) -> float:
    import torch

    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(count):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / count


def kernel_class(name: str) -> str:
    n = name.lower()
    for key, label in (("prefetch", "l2_prefetch"), ("_decode_split", "attn_split"),
                       ("_decode_merge", "attn_merge"), ("rms_norm", "rms_norm"),
                       ("rope", "rope_cache"), ("silu", "silu_mul"), ("unpack", "unpack"),
                       ("argmax", "argmax"), ("memcpy", "memcpy"), ("memset", "memset")):
        if key in n:
            return label
    if any(k in n for k in ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitk", "sm90")):
        return "gemm"
    if "reduce" in n:
        return "reduce"
    if "index" in n or "embedding" in n:
        return "index/embedding"
    return "other"


def profile_kernels(fn, repeats: int) -> dict:
    """Run fn() `repeats` times under the profiler; GPU kernels grouped by class per repeat,
    busy time (union of kernel intervals) against the span, and the first 40 kernels."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    events.sort(key=lambda e: e.time_range.start)
    if not events:
        return {"error": "no CUDA events"}
    classes: dict = {}
    names: dict = {}
    for e in events:
        c = kernel_class(e.name)
        d = e.time_range.end - e.time_range.start
        classes.setdefault(c, [0.0, 0])
        classes[c][0] += d
        classes[c][1] += 1
        names.setdefault(e.name[:90], [0.0, 0])
        names[e.name[:90]][0] += d
        names[e.name[:90]][1] += 1
    busy, cursor = 0.0, None
    for e in events:
        s, t = e.time_range.start, e.time_range.end
        if cursor is None or s > cursor:
            busy += t - s
            cursor = t
        elif t > cursor:
            busy += t - cursor
            cursor = t
    span = events[-1].time_range.end - events[0].time_range.start
    first = events[0].time_range.start
    top = sorted(names.items(), key=lambda kv: -kv[1][0])[:25]
    return {
        "per_repeat_us": {c: round(v[0] / repeats, 1) for c, v in
                          sorted(classes.items(), key=lambda kv: -kv[1][0])},
        "count_per_repeat": {c: v[1] / repeats for c, v in classes.items()},
        "busy_us_per_repeat": busy / repeats, "span_us_per_repeat": span / repeats,
        "top_kernels": [{"name": n, "us_per_repeat": round(v[0] / repeats, 2),
                         "count_per_repeat": v[1] / repeats} for n, v in top],
        "first_kernels": [{"name": e.name[:70], "start_us": round(e.time_range.start - first, 2),
                           "us": round(e.time_range.end - e.time_range.start, 2)}
                          for e in events[:40]],
    }


def gemm_roles(fn, layers: int) -> dict | None:
    """Mean time of each GEMM of a layer (qkv, o, gate_up, down) and the LM head in one replay,
    if the replay holds exactly 4 per layer + 1."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA
                     and kernel_class(e.name) == "gemm"), key=lambda e: e.time_range.start)
    if len(events) != 4 * layers + 1:
        return {"gemm_kernels": len(events)}
    out = {}
    for i, role in enumerate(("qkv", "o", "gate_up", "down")):
        times = [events[4 * j + i].time_range.end - events[4 * j + i].time_range.start
                 for j in range(layers)]
        out[role] = sum(times) / layers
    out["lm_head"] = events[-1].time_range.end - events[-1].time_range.start
    return {k: round(v, 2) for k, v in out.items()}


# phases --------------------------------------------------------------------------------------------
def phase_env() -> None:
    base.phase_env()
    save()


def phase_ckpt() -> None:
    base.phase_ckpt()
    save()


def phase_tests() -> None:
    import subprocess

    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py",
                            "-p", "no:cacheprovider"], cwd=REPO)
    RESULTS["gpu_tests"] = "passed" if code == 0 else f"FAILED ({code})"
    RESULTS["gpu_tests_s"] = time.perf_counter() - started
    log(f"gpu tests: {RESULTS['gpu_tests']}")
    save()


PREFETCH_VARIANTS = {          # name -> (mode, MB of the partial prefetches)
    "off": ("0", 8), "o": ("o", 8), "all4": ("all", 4), "all8": ("all", 8),
    "all16": ("all", 16), "all32": ("all", 32),
}


def recapture(sizes: list[int], mode: str, megabytes: float, max_batch: int = 64) -> None:
    import torch

    import container.engine.cuda_graphs as cg
    from container.engine.kernels.prefetch import PREFETCH

    svc = service()
    runner = svc.runner
    runner.graphs = None
    gc.collect()
    torch.cuda.empty_cache()
    PREFETCH.mode, PREFETCH.small_bytes, PREFETCH.max_batch = mode, int(megabytes * (1 << 20)), \
        max_batch
    original = cg.bucket_sizes
    cg.bucket_sizes = lambda m: [s for s in sizes if s <= m]
    try:
        runner.capture_graphs(max(sizes), svc.max_model_len)
    finally:
        cg.bucket_sizes = original


def phase_graphs() -> None:
    import torch

    svc = service()
    runner = svc.runner
    vocab = runner.config.vocab_size
    blocks = svc.block_manager.num_blocks
    out = {}
    sizes = [1, 16, 64]
    for name, (mode, mb) in PREFETCH_VARIANTS.items():
        recapture(sizes + ([256] if name == "off" else []), mode, mb)
        row = {}
        for batch in sorted(runner.graphs.graphs):
            runner.execute(decode_plan(batch, 256, blocks, vocab))
            row[batch] = round(time_graph(runner.graphs.graphs[batch]), 4)
        out[name] = row
        log(f"graph replay ms, prefetch {name}: {row}")
        if name == "off":
            graph256 = runner.graphs.graphs[256]
            graph1 = runner.graphs.graphs[1]
            RESULTS["profile_b256_off"] = profile_kernels(graph256.replay, 5)
            RESULTS["gemm_roles_b256"] = gemm_roles(graph256.replay, runner.config.num_layers)
            runner.execute(decode_plan(1, 256, blocks, vocab))
            RESULTS["profile_b1_off"] = profile_kernels(graph1.replay, 10)
            RESULTS["gemm_roles_b1_off"] = gemm_roles(graph1.replay, runner.config.num_layers)
        if name == "all8":
            runner.execute(decode_plan(1, 256, blocks, vocab))
            graph1 = runner.graphs.graphs[1]
            RESULTS["profile_b1_all8"] = profile_kernels(graph1.replay, 10)
        RESULTS["graph_replay_ms_ctx256"] = out
        save()
    best = min((n for n in out), key=lambda n: out[n][1])
    RESULTS["prefetch_best_b1"] = best
    torch.cuda.synchronize()
    save()


def phase_attention() -> None:
    import torch

    from container.engine.kernels import paged_attention as pa
    from container.engine.kernels.workspace import DecodeWorkspace, decode_splits

    svc = service()
    runner = svc.runner
    caches = runner.kv_caches
    layers = len(caches)
    blocks = svc.block_manager.num_blocks
    heads, kv_heads, dim = runner.config.num_heads, runner.local_kv_heads, runner.config.head_dim
    default = dict(pa.DECODE_CONFIG)
    results = {}
    for batch, ctx in ((1, 256), (256, 192)):
        plan = decode_plan(batch, ctx, blocks, 1000, seed=batch)
        layout = plan.layout()
        start, size = layout["tables"]
        num_seqs, width = layout["shape"]
        tables = torch.from_numpy(plan.data[start:start + size].reshape(num_seqs, width)).cuda()
        seq_lens = torch.full((batch,), ctx, dtype=torch.int64, device="cuda")
        q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        kv_bytes = batch * ctx * kv_heads * dim * 2 * 2
        graph_splits = decode_splits(batch, kv_heads, 2048, runner.sm_count)
        configs = []
        for block_n in (32, 64, 128):
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    configs.append(({"block_n": block_n, "num_warps": warps,
                                     "num_stages": stages}, graph_splits))
        for splits in sorted({1, 2, 4, 8, 16} - {graph_splits}):
            if batch == 1 or splits <= 2:
                configs.append((default, splits))
        rows = []
        reference = None
        for config, splits in configs:
            pa.DECODE_CONFIG = dict(config)
            workspace = DecodeWorkspace()
            try:
                def run():
                    for layer in range(layers):
                        pa.paged_decode(q, caches[layer], tables, seq_lens, 0.088, splits,
                                        workspace, out=out)
                run()
                torch.cuda.synchronize()
                got = out.float().clone()
                if reference is None:
                    reference = got
                error = ((got - reference).norm() / reference.norm()).item()
                graph = torch.cuda.CUDAGraph()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    with torch.cuda.graph(graph, stream=stream):
                        run()
                torch.cuda.current_stream().wait_stream(stream)
                us = time_graph(graph, 20) * 1000 / layers
                rows.append({**config, "splits": splits, "us_per_layer": round(us, 2),
                             "TBps": round(kv_bytes / us / 1e6, 3), "rel_err": error})
            except Exception as exc:  # noqa: BLE001 - an invalid shape is a row, not a stop
                rows.append({**config, "splits": splits, "error": f"{type(exc).__name__}: {exc}"[:200]})
        pa.DECODE_CONFIG = dict(default)
        ok = [r for r in rows if "us_per_layer" in r]
        ok.sort(key=lambda r: r["us_per_layer"])
        results[f"b{batch}_ctx{ctx}"] = {"kv_MB_per_layer": kv_bytes / 1e6,
                                         "graph_splits": graph_splits, "rows": ok,
                                         "errors": [r for r in rows if "error" in r]}
        log(f"attention b{batch}: best {ok[:3]}, default "
            f"{[r for r in ok if r['block_n'] == 64 and r['num_warps'] == 4 and r['num_stages'] == 3 and r['splits'] == graph_splits]}")
    RESULTS["attention"] = results
    save()


def phase_gemm() -> None:
    import torch
    import torch.nn.functional as F

    svc = service()
    model = svc.runner.model
    layers = model.model.layers
    roles = {"qkv": [l.self_attn.qkv_proj.weight for l in layers],
             "o": [l.self_attn.o_proj.weight for l in layers],
             "gate_up": [l.mlp.gate_up_proj.weight for l in layers],
             "down": [l.mlp.down_proj.weight for l in layers],
             "lm_head": [model.lm_head.weight] * 4}
    results = {}
    for backend in ("cublas", "cublaslt"):
        try:
            torch.backends.cuda.preferred_blas_library(backend)
        except Exception as exc:  # noqa: BLE001
            results[backend] = {"error": str(exc)}
            continue
        for m in (1, 64, 256):
            for role, weights in roles.items():
                x = torch.randn(m, weights[0].shape[1], device="cuda", dtype=torch.bfloat16)
                def run():
                    for w in weights:
                        F.linear(x, w)
                run()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    with torch.cuda.graph(graph, stream=stream):
                        run()
                torch.cuda.current_stream().wait_stream(stream)
                us = time_graph(graph, 10) * 1000 / len(weights)
                n, k = weights[0].shape
                results.setdefault(backend, {})[f"{role}_m{m}"] = {
                    "us": round(us, 2), "TBps": round(n * k * 2 / us / 1e6, 3),
                    "TFLOPs": round(2 * m * n * k / us / 1e6, 1)}
        log(f"gemm {backend}: {results.get(backend)}")
    torch.backends.cuda.preferred_blas_library("cublas")
    RESULTS["gemm"] = results
    save()

    from container.engine.kernels.fused import silu_and_mul
    from container.engine.kernels.gemv import gemv, silu_mul_gemv

    def graph_us(run, calls):
        run()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        return time_graph(graph, 10) * 1000 / calls

    triton_rows = {}
    for role, weights in roles.items():
        x = torch.randn(1, weights[0].shape[1], device="cuda", dtype=torch.bfloat16)
        us = graph_us(lambda: [gemv(x, w) for w in weights], len(weights))
        n, k = weights[0].shape
        triton_rows[f"triton_gemv_{role}"] = {"us": round(us, 2), "TBps": round(n * k * 2 / us / 1e6, 3)}
    downs = roles["down"]
    inter = downs[0].shape[1]
    gate_up = torch.randn(1, 2 * inter, device="cuda", dtype=torch.bfloat16)
    triton_rows["silu_then_cublas_down"] = {"us": round(graph_us(
        lambda: [F.linear(silu_and_mul(gate_up), w) for w in downs], len(downs)), 2)}
    triton_rows["silu_mul_gemv_down"] = {"us": round(graph_us(
        lambda: [silu_mul_gemv(gate_up, w) for w in downs], len(downs)), 2)}
    expected = F.linear(silu_and_mul(gate_up), downs[0]).float()
    got = silu_mul_gemv(gate_up, downs[0]).float()
    triton_rows["silu_mul_gemv_rel_err"] = ((got - expected).norm() / expected.norm()).item()
    RESULTS["gemv_m1_triton"] = triton_rows
    log(f"triton m=1: {triton_rows}")
    save()


def _engine_w1(engine, prompt, output_len: int = 256) -> dict:
    import torch

    from container.workers.protocol import SamplingParams

    torch.cuda.synchronize()
    started = time.perf_counter()
    engine.add_request("w1", prompt, SamplingParams(max_new_tokens=output_len, ignore_eos=True))
    first, produced = None, 0
    while engine.has_work():
        for o in engine.step():
            produced += len(o.new_token_ids)
            if first is None and produced:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"tok_s": produced / (end - started), "ttft_ms": (first - started) * 1000,
            "itl_ms": (end - first) * 1000 / max(produced - 1, 1)}


def _engine_w4(engine, prompts, output_len: int = 128) -> dict:
    import torch

    from container.workers.protocol import SamplingParams

    engine.seconds.clear()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"w4-{i}", prompt, SamplingParams(max_new_tokens=output_len,
                                                             ignore_eos=True))
    produced, steps = 0, 0
    while engine.has_work():
        produced += sum(len(o.new_token_ids) for o in engine.step())
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"tok_s": produced / elapsed, "seconds": elapsed, "steps": steps,
            "phase_seconds": {k: round(v, 3) for k, v in engine.seconds.items()}}


def phase_engine() -> None:
    from container.bench.offline import random_token_prompts
    from container.engine.kernels import paged_attention as pa

    svc = service()
    engine = svc.engine
    vocab = svc.runner.config.vocab_size
    prompts_w1 = iter(random_token_prompts(vocab, 40, 128, seed=7))
    w1 = {}
    chosen = RESULTS.get("prefetch_best_b1", "all8")
    for name in dict.fromkeys(["off", "o", "all8", chosen]):
        mode, mb = PREFETCH_VARIANTS[name]
        recapture([1, 2, 4, 8, 16, 32, 64, 128, 256], mode, mb)
        _engine_w1(engine, next(prompts_w1), 16)                        # warm
        runs = [_engine_w1(engine, next(prompts_w1)) for _ in range(3)]
        w1[name] = {"runs": runs, "tok_s": max(r["tok_s"] for r in runs),
                    "itl_ms": min(r["itl_ms"] for r in runs)}
        log(f"engine W1 prefetch {name}: {w1[name]['tok_s']:.1f} tok/s, "
            f"ITL {w1[name]['itl_ms']:.3f} ms")
        RESULTS["engine_w1"] = w1
        save()
    best = max(w1, key=lambda n: w1[n]["tok_s"])
    mode, mb = PREFETCH_VARIANTS[best]
    recapture([1, 2, 4, 8, 16, 32, 64, 128, 256], mode, mb)

    def one_request():
        _engine_w1(engine, next(prompts_w1), 32)
    RESULTS["profile_engine_w1_32tok"] = profile_kernels(one_request, 1)
    save()

    seeds = iter(range(100, 200))

    def prompts():                          # fresh prompts each run: no prefix-cache hits
        return random_token_prompts(vocab, 256, 128, seed=next(seeds))
    _engine_w4(engine, prompts()[:8], 8)
    w4 = {"default": _engine_w4(engine, prompts())}
    log(f"engine W4 default: {w4['default']}")
    engine.scheduler.max_num_batched_tokens = 32768
    w4["prefill32768"] = _engine_w4(engine, prompts())
    log(f"engine W4 prefill 32768: {w4['prefill32768']}")
    engine.scheduler.max_num_batched_tokens = 16384
    rows = RESULTS.get("attention", {}).get("b256_ctx192", {}).get("rows", [])
    if rows:
        top = rows[0]
        pa.DECODE_CONFIG = {k: top[k] for k in ("block_n", "num_warps", "num_stages")}
        recapture([1, 2, 4, 8, 16, 32, 64, 128, 256], mode, mb)
        _engine_w4(engine, prompts()[:8], 8)
        w4["attention_best"] = {**_engine_w4(engine, prompts()), "config": pa.DECODE_CONFIG}
        log(f"engine W4 attention {pa.DECODE_CONFIG}: {w4['attention_best']}")
        pa.DECODE_CONFIG = {"block_n": 64, "num_warps": 4, "num_stages": 3}
        recapture([1, 2, 4, 8, 16, 32, 64, 128, 256], mode, mb)
        _engine_w4(engine, prompts()[:8], 8)
        w4["default_again"] = _engine_w4(engine, prompts())
    RESULTS["engine_w4"] = w4
    save()


def phase_serve_w1() -> None:
    global _SERVICE
    import torch

    _SERVICE = None
    gc.collect()
    torch.cuda.empty_cache()
    base.phase_serve_w1_only()
    RESULTS["serve_W1"] = base.SUMMARY.get("W1")
    save()


def report() -> None:
    lines = []
    if "graph_replay_ms_ctx256" in RESULTS:
        lines.append("graph replay ms (ctx 256): " + json.dumps(RESULTS["graph_replay_ms_ctx256"]))
    for key in ("profile_b1_off", "profile_b1_all8", "profile_b256_off"):
        if key in RESULTS and "per_repeat_us" in RESULTS[key]:
            p = RESULTS[key]
            lines.append(f"{key}: busy {p['busy_us_per_repeat']:.0f} span "
                         f"{p['span_us_per_repeat']:.0f} us; {json.dumps(p['per_repeat_us'])}")
    for key in ("gemm_roles_b1_off", "gemm_roles_b256"):
        if key in RESULTS:
            lines.append(f"{key}: {RESULTS[key]}")
    for key, value in RESULTS.get("attention", {}).items():
        lines.append(f"attention {key}: " + json.dumps(value["rows"][:3]))
    for backend, rows in RESULTS.get("gemm", {}).items():
        lines.append(f"gemm {backend}: " + json.dumps({k: v.get("us") for k, v in rows.items()}
                                                     if isinstance(rows, dict) else rows))
    if "gemv_m1_triton" in RESULTS:
        lines.append("triton m=1: " + json.dumps(RESULTS["gemv_m1_triton"]))
    if "engine_w1" in RESULTS:
        lines.append("engine W1: " + json.dumps({k: (round(v["tok_s"], 1), round(v["itl_ms"], 3))
                                                 for k, v in RESULTS["engine_w1"].items()}))
    if "engine_w4" in RESULTS:
        lines.append("engine W4: " + json.dumps({k: round(v["tok_s"]) for k, v in
                                                 RESULTS["engine_w4"].items()}))
    if RESULTS.get("serve_W1"):
        w1 = RESULTS["serve_W1"]
        lines.append(f"serve W1: {w1['output_tokens_per_s']:.1f} tok/s, ITL "
                     f"{w1['itl_ms']['mean']:.3f} ms, TTFT {w1['ttft_ms']['mean']:.1f} ms")
    lines.append(f"gpu tests: {RESULTS.get('gpu_tests')}")
    print("\n".join(lines))


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "ckpt", "tests", "graphs", "attention", "gemm", "engine",
                              "serve_w1"]
    try:
        for phase in phases:
            log(f"== {phase}")
            try:
                globals()[f"phase_{phase}"]()
            except Exception as exc:  # noqa: BLE001 - keep going: the other phases still tell
                import traceback

                traceback.print_exc()
                RESULTS.setdefault("phase_errors", {})[phase] = f"{type(exc).__name__}: {exc}"
                save()
    finally:
        save()
        report()
