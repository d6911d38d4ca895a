"""Where a decode step's GPU time goes, and candidate changes side by side, in one run.

    python3 bench/device/decode_profile.py [phases...]
    phases: env ckpt tests graphs attention gemm engine serve offline
    (default: env ckpt tests graphs engine gemm serve offline)

graphs     decode-graph replay time at batch 1/16/64/256 (context 256, distinct random blocks,
           random KV) for this tree and variants (splits merged by a second kernel; batch-1
           products through cuBLAS), and a per-kernel profile of one replay (torch profiler):
           time per kernel class, bubbles between kernels, time of each projection
attention  the split-KV decode kernel's launch shapes at batch 1 (context 256) and 256
           (context 192), 32 layers' caches in turn, against the bytes of K and V read
gemm       cuBLAS at M = 256 and 16384 for every projection (32 layers' weights in turn), and
           Triton candidates at 256 (mm_candidates.py), with and without silu fused
engine     the engine in-process: W1-like (1 x 128 in / 256 out, greedy); W4-like (256 x
           128/128) overlapped, then step by step with each step's time, then profiled
serve      `serve` + the HTTP load generator: W1, W3, W2 (native_gpu.py's serve phase)
offline    W4 as native_gpu.py runs it: our engine and transformers generate_batch

Everything lands in $OUT/decode_profile.json (rewritten after every phase); a short table is
printed at the end.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
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
    if "nccl" in n:
        return "nccl_" + next((k for k in ("allgather", "allreduce", "broadcast") if k in n),
                              "other")
    if "allreduce_add_norm" in n:
        return "allreduce_add_norm"
    if "one_shot" in n or "symm" in n:
        return "symm_allreduce"
    for key, label in (("prefetch", "l2_prefetch"), ("_decode_split", "attn_split"),
                       ("_decode_merge", "attn_merge"), ("rms_norm", "rms_norm"),
                       ("rope", "rope_cache"), ("silu", "silu_mul"), ("unpack", "unpack"),
                       ("argmax", "argmax"), ("memcpy", "memcpy"), ("memset", "memset")):
        if key in n:
            return label
    if "reduce" in n:
        return "reduce"
    if any(k in n for k in ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitk", "sm90",
                            "_mm_")):
        return "gemm"
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
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
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


VARIANTS = tuple(os.environ.get("DECODE_PROFILE_VARIANTS", "new,merge_kernel,cublas_m1")
                 .split(","))                   # see variant()


@contextlib.contextmanager
def variant(name: str):
    """new: this tree as it is. merge_kernel: decode splits merged by a second kernel.
    cublas_m1: batch-1 products through cuBLAS instead of the Triton GEMV."""
    import torch.nn.functional as F

    import container.engine.layers.embedding as embedding
    import container.engine.layers.linear as linear
    from container.engine.kernels import paged_attention as pa

    saved = (linear.linear, embedding.linear, pa.DECODE_OVERRIDE)
    if name == "merge_kernel":
        pa.DECODE_OVERRIDE = dict(pa.DECODE_CONFIGS[True], merge_here=False)
    if name == "cublas_m1":
        linear.linear = embedding.linear = lambda x, w, b=None: F.linear(x, w, b)
    try:
        yield
    finally:
        linear.linear, embedding.linear, pa.DECODE_OVERRIDE = saved


def recapture(sizes: list[int], svc=None) -> None:
    """Re-capture the decode graphs of `svc` (default: this script's service) for these
    batch sizes only."""
    import torch

    import container.engine.cuda_graphs as cg

    svc = svc or service()
    runner = svc.runner
    runner.graphs = None
    gc.collect()
    torch.cuda.empty_cache()
    original = cg.bucket_sizes
    cg.bucket_sizes = lambda m: [s for s in sizes if s <= m]
    try:
        runner.capture_graphs(max(sizes), svc.max_model_len)
    finally:
        cg.bucket_sizes = original


ALL_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def phase_graphs() -> None:
    svc = service()
    runner = svc.runner
    vocab = runner.config.vocab_size
    blocks = svc.block_manager.num_blocks
    layers = runner.config.num_layers
    out = {}
    for name in VARIANTS:
        with variant(name):
            recapture([1, 16, 64, 256] if name == "new" else [1, 16])
            row = {}
            for batch in sorted(runner.graphs.graphs):
                runner.execute(decode_plan(batch, 256, blocks, vocab))
                row[batch] = round(time_graph(runner.graphs.graphs[batch]), 4)
                if name == "new" and batch in (1, 256):
                    graph = runner.graphs.graphs[batch]
                    RESULTS[f"profile_b{batch}"] = profile_kernels(graph.replay, 5)
                    RESULTS[f"gemm_roles_b{batch}"] = gemm_roles(graph.replay, layers)
            # the same again: how far apart two timings of one graph land
            runner.execute(decode_plan(1, 256, blocks, vocab))
            row["1_again"] = round(time_graph(runner.graphs.graphs[1]), 4)
        out[name] = row
        log(f"graph replay ms, {name}: {row}")
        RESULTS["graph_replay_ms_ctx256"] = out
        save()
    recapture(ALL_SIZES)
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
    results = {}
    for batch, ctx in ((256, 192), (64, 384), (1, 256)):
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
        default = pa.DECODE_CONFIGS[graph_splits > 1]
        configs = [(default, graph_splits)]
        for block_n in ((16, 32, 64) if graph_splits > 1 else (32, 64, 128)):
            for warps in (2, 4):
                for stages in (1, 2, 3):
                    config = dict(default, block_n=block_n, num_warps=warps, num_stages=stages)
                    if config != default:
                        configs.append((config, graph_splits))
        if graph_splits == 1:
            configs.append((dict(default, num_warps=8), 1))
            configs.append((pa.DECODE_CONFIGS[True], 2))
        rows = []
        reference = None
        for config, splits in configs:
            pa.DECODE_OVERRIDE = dict(config)
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
        pa.DECODE_OVERRIDE = None
        ok = [r for r in rows if "us_per_layer" in r]
        ok.sort(key=lambda r: r["us_per_layer"])
        results[f"b{batch}_ctx{ctx}"] = {"kv_MB_per_layer": kv_bytes / 1e6,
                                         "graph_splits": graph_splits, "rows": ok,
                                         "errors": [r for r in rows if "error" in r]}
        log(f"attention b{batch}: best {ok[:3]}")
    RESULTS["attention"] = results
    save()


def _graph_us(run, calls: int, replays: int = 5) -> float:
    import torch

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    return time_graph(graph, replays) * 1000 / calls


def phase_layouts() -> None:
    """cuBLAS on the same products with the weight stored as it is ([N, K]: F.linear), stored
    transposed ([K, N]: torch.mm(x, Wt)), and with the output transposed (W @ x^T), at W4's
    decode batch (256) and prefill chunk (16384)."""
    import torch
    import torch.nn.functional as F

    svc = service()
    model = svc.runner.model
    layers = model.model.layers
    roles = {"qkv": [l.self_attn.qkv_proj.weight for l in layers],
             "o": [l.self_attn.o_proj.weight for l in layers],
             "gate_up": [l.mlp.gate_up_proj.weight for l in layers],
             "down": [l.mlp.down_proj.weight for l in layers],
             "lm_head": [model.lm_head.weight] * 2}
    results = {}
    for m in (256, 16384):
        for role, weights in roles.items():
            if m > 256 and role == "lm_head":
                continue
            chosen = weights if m <= 256 else weights[:4]
            n, k = chosen[0].shape
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            flops = 2 * m * n * k
            row = {}
            for backend in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(backend)
                row[f"{backend}_tn"] = _graph_us(lambda: [F.linear(x, w) for w in chosen],
                                                 len(chosen))
                row[f"{backend}_out_t"] = _graph_us(lambda: [torch.mm(w, x.t()) for w in chosen],
                                                    len(chosen))
            transposed = [w.t().contiguous() for w in chosen]
            for backend in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(backend)
                row[f"{backend}_nn"] = _graph_us(lambda: [torch.mm(x, w) for w in transposed],
                                                 len(chosen))
            torch.backends.cuda.preferred_blas_library("cublas")
            transposed = None                      # free the copies
            results[f"{role}_m{m}"] = {key: {"us": round(us, 2),
                                             "TFLOPs": round(flops / us / 1e6, 1)}
                                       for key, us in row.items()}
            log(f"layouts {role} m{m}: " + ", ".join(f"{key} {us:.1f}" for key, us in row.items()))
            RESULTS["layouts"] = results
            save()


def phase_prefill_attention() -> None:
    """The prefill kernel's launch shapes on W4's prefill: 128 prompts x 128 tokens."""
    import numpy as np
    import torch

    from container.engine.kernels import paged_attention as pa

    svc = service()
    runner = svc.runner
    caches = runner.kv_caches
    layers = len(caches)
    heads, dim = runner.config.num_heads, runner.config.head_dim
    seqs, length, page = 128, 128, 16
    rng = np.random.default_rng(5)
    per = length // page
    tables = torch.from_numpy(rng.permutation(svc.block_manager.num_blocks)[:seqs * per]
                              .reshape(seqs, per).astype(np.int64)).cuda()
    seq_lens = torch.full((seqs,), length, dtype=torch.int64, device="cuda")
    starts = torch.arange(0, seqs * length + 1, length, dtype=torch.int64, device="cuda")
    q = torch.randn(seqs * length, heads, dim, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    configs = [None] + [{"rows": r, "block_n": b, "num_warps": w, "num_stages": st}
                        for r in (64, 128, 256) for b in (64, 128) for w in (4, 8)
                        for st in (2, 3)]
    rows, reference = [], None
    for config in configs:
        pa.PREFILL_OVERRIDE = config
        try:
            def run():
                for layer in range(layers):
                    pa.paged_prefill(q, caches[layer], tables, seq_lens, starts, length, 0.088,
                                     out=out)
            run()
            torch.cuda.synchronize()
            got = out.float().clone()
            if reference is None:
                reference = got
            error = ((got - reference).norm() / reference.norm()).item()
            us = _graph_us(run, layers, 10)
            rows.append({**(config or {"default": True}), "us_per_layer": round(us, 2),
                         "rel_err": error})
        except Exception as exc:  # noqa: BLE001
            rows.append({**(config or {}), "error": f"{type(exc).__name__}: {exc}"[:200]})
    pa.PREFILL_OVERRIDE = None
    ok = sorted((r for r in rows if "us_per_layer" in r), key=lambda r: r["us_per_layer"])
    RESULTS["prefill_attention_128x128"] = {"rows": ok, "errors": [r for r in rows if "error" in r]}
    log(f"prefill attention: best {ok[:3]}, default {[r for r in ok if r.get('default')]}")
    save()


def phase_norm() -> None:
    import torch

    from container.engine.kernels import fused

    svc = service()
    weight = svc.runner.model.model.norm.weight
    results = {}
    for m in (1, 256, 16384):
        x = torch.randn(m, weight.shape[0], device="cuda", dtype=torch.bfloat16)
        residual = torch.randn_like(x)
        for warps in (None, 4, 16):
            fused.NORM_WARPS = warps
            calls = 64 if m <= 256 else 8
            results[f"m{m}_w{warps or 'default'}"] = round(_graph_us(
                lambda: [fused.rms_norm(x, weight, 1e-5, residual) for _ in range(calls)],
                calls, 10), 2)
    fused.NORM_WARPS = None
    RESULTS["rms_norm_us"] = results
    log(f"rms norm: {results}")
    save()


def phase_gemm() -> None:
    """cuBLAS at the decode batch of W4 (256) and at W4's prefill chunk (16384 rows), next to
    Triton candidates at 256 (bench/device/mm_candidates.py), plain and with silu fused."""
    import torch
    import torch.nn.functional as F

    import mm_candidates as mm
    from container.engine.kernels.fused import silu_and_mul

    svc = service()
    model = svc.runner.model
    layers = model.model.layers
    roles = {"qkv": [l.self_attn.qkv_proj.weight for l in layers],
             "o": [l.self_attn.o_proj.weight for l in layers],
             "gate_up": [l.mlp.gate_up_proj.weight for l in layers],
             "down": [l.mlp.down_proj.weight for l in layers],
             "lm_head": [model.lm_head.weight] * 4}

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
        return time_graph(graph, 5) * 1000 / calls

    results = {}
    for m in (256, 16384):
        for role, weights in roles.items():
            if m > 256 and role == "lm_head":
                continue
            chosen = weights if m <= 256 else weights[:8]
            x = torch.randn(m, chosen[0].shape[1], device="cuda", dtype=torch.bfloat16)
            us = graph_us(lambda: [F.linear(x, w) for w in chosen], len(chosen))
            n, k = chosen[0].shape
            results[f"cublas_{role}_m{m}"] = {"us": round(us, 2),
                                             "TFLOPs": round(2 * m * n * k / us / 1e6, 1)}
    log(f"cublas: {results}")
    RESULTS["gemm"] = results
    save()

    m = 256
    trial = {}
    for role in ("qkv", "o", "gate_up", "down"):
        weights = roles[role]
        n, k = weights[0].shape
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        expected = F.linear(x, weights[0]).float()
        for tma in (False, True):
            for config in mm.CONFIGS:
                name = f"{role}_{'tma' if tma else 'ptr'}_{config['BM']}x{config['BN']}" \
                       f"_w{config['warps']}s{config['stages']}"
                try:
                    got = mm.matmul(x, weights[0], config, tma=tma).float()
                    error = ((got - expected).norm() / expected.norm()).item()
                    us = graph_us(lambda: [mm.matmul(x, w, config, tma=tma) for w in weights],
                                  len(weights))
                    trial[name] = {"us": round(us, 2), "TFLOPs": round(2 * m * n * k / us / 1e6, 1),
                                   "rel_err": error}
                except Exception as exc:  # noqa: BLE001
                    trial[name] = {"error": f"{type(exc).__name__}: {exc}"[:160]}
        best = min((v["us"], key) for key, v in trial.items()
                   if key.startswith(role + "_") and "us" in v)
        log(f"triton {role} m256: best {best} vs cublas {results[f'cublas_{role}_m256']}")
        RESULTS["gemm_triton_m256"] = trial
        save()
    # gate/up with silu in the epilogue, against cuBLAS gate/up + the silu kernel
    weights = roles["gate_up"]
    x = torch.randn(m, weights[0].shape[1], device="cuda", dtype=torch.bfloat16)
    fused = {"cublas_then_silu": round(graph_us(
        lambda: [silu_and_mul(F.linear(x, w)) for w in weights], len(weights)), 2)}
    expected = silu_and_mul(F.linear(x, weights[0])).float()
    for tma in (False, True):
        for config in mm.CONFIGS:
            name = f"silu_{'tma' if tma else 'ptr'}_{config['BM']}x{config['BN']}" \
                   f"_w{config['warps']}s{config['stages']}"
            try:
                got = mm.matmul(x, weights[0], config, silu=True, tma=tma).float()
                error = ((got - expected).norm() / expected.norm()).item()
                fused[name] = {"us": round(graph_us(
                    lambda: [mm.matmul(x, w, config, silu=True, tma=tma) for w in weights],
                    len(weights)), 2), "rel_err": error}
            except Exception as exc:  # noqa: BLE001
                fused[name] = {"error": f"{type(exc).__name__}: {exc}"[:160]}
    RESULTS["gemm_gate_up_silu_m256"] = fused
    log(f"gate/up + silu m256: {fused}")
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
    import torch

    from container.bench.offline import random_token_prompts

    svc = service()
    engine = svc.engine
    vocab = svc.runner.config.vocab_size
    if svc.runner.graphs is None or len(svc.runner.graphs.graphs) < len(ALL_SIZES):
        recapture(ALL_SIZES)
    prompts_w1 = iter(random_token_prompts(vocab, 40, 128, seed=7))
    # as the HTTP bench does: two requests at once to warm up, then one at a time; the first
    # of those, profiled (host and device), shows whatever a first batch-1 request still pays
    from container.workers.protocol import SamplingParams

    for i in range(2):
        engine.add_request(f"warm{i}", next(prompts_w1),
                           SamplingParams(max_new_tokens=256, ignore_eos=True))
    while engine.has_work():
        engine.step()
    for label in ("engine_first_request", "engine_second_request"):
        before = dict(engine.seconds)
        RESULTS[label] = _engine_w1(engine, next(prompts_w1), 8)
        RESULTS[label]["phase_ms"] = {k: round((v - before.get(k, 0.0)) * 1000, 2)
                                      for k, v in engine.seconds.items()}
    log(f"first / second request after warm-up: {RESULTS['engine_first_request']} / "
        f"{RESULTS['engine_second_request']}")
    _engine_w1(engine, next(prompts_w1), 16)                        # warm
    runs = [_engine_w1(engine, next(prompts_w1)) for _ in range(3)]
    RESULTS["engine_w1"] = {"runs": runs, "tok_s": max(r["tok_s"] for r in runs),
                            "itl_ms": min(r["itl_ms"] for r in runs)}
    log(f"engine W1: {RESULTS['engine_w1']}")
    save()

    seeds = iter(range(100, 200))

    def prompts():                          # fresh prompts each run: no prefix-cache hits
        return random_token_prompts(vocab, 256, 128, seed=next(seeds))
    _engine_w4(engine, prompts()[:8], 8)
    RESULTS["engine_w4"] = {"default": _engine_w4(engine, prompts())}
    log(f"engine W4: {RESULTS['engine_w4']}")
    # each step's wall time, the GPU drained after every step (no overlap): where W4's time goes
    from container.workers.protocol import SamplingParams

    engine.overlap = False
    steps = []
    for i, prompt in enumerate(prompts()):
        engine.add_request(f"s{i}", prompt, SamplingParams(max_new_tokens=128, ignore_eos=True))
    while engine.has_work():
        torch.cuda.synchronize()
        began = time.perf_counter()
        tokens = sum(len(o.new_token_ids) for o in engine.step())
        torch.cuda.synchronize()
        steps.append((round((time.perf_counter() - began) * 1000, 3),
                      len(engine.scheduler.running), tokens))
    engine.overlap = svc.options.overlap_scheduling
    RESULTS["engine_w4_steps_ms"] = steps
    log(f"W4 steps (ms, running, tokens): first {steps[:4]}, total "
        f"{sum(s[0] for s in steps):.0f} ms")
    save()

    def w4_once():
        _engine_w4(engine, prompts())
    RESULTS["profile_engine_w4"] = profile_kernels(w4_once, 1)
    save()


def _release_service() -> None:
    global _SERVICE
    import torch

    _SERVICE = None
    gc.collect()
    torch.cuda.empty_cache()


def phase_serve() -> None:
    _release_service()
    base.phase_serve()
    for name in ("W1", "W2", "W3"):
        RESULTS[f"serve_{name}"] = base.SUMMARY.get(name)
    save()


def phase_offline() -> None:
    """W4 exactly as native_gpu.py runs it: our engine, then transformers generate_batch."""
    _release_service()
    w4 = base.run_w4()
    if w4 is not None:
        RESULTS["W4"] = w4
    save()


def report() -> None:
    lines = []
    if "graph_replay_ms_ctx256" in RESULTS:
        lines.append("graph replay ms (ctx 256): " + json.dumps(RESULTS["graph_replay_ms_ctx256"]))
    for key in ("profile_b1", "profile_b256", "profile_engine_w4"):
        if key in RESULTS and "per_repeat_us" in RESULTS[key]:
            p = RESULTS[key]
            lines.append(f"{key}: busy {p['busy_us_per_repeat']:.0f} span "
                         f"{p['span_us_per_repeat']:.0f} us; {json.dumps(p['per_repeat_us'])}")
    for key in ("gemm_roles_b1", "gemm_roles_b256"):
        if key in RESULTS:
            lines.append(f"{key}: {RESULTS[key]}")
    if "gemm" in RESULTS:
        lines.append("cublas: " + json.dumps({k: v["us"] for k, v in RESULTS["gemm"].items()}))
    trial = RESULTS.get("gemm_triton_m256", {})
    for role in ("qkv", "o", "gate_up", "down"):
        ok = sorted((v["us"], k) for k, v in trial.items() if k.startswith(role + "_") and "us" in v)
        if ok:
            lines.append(f"triton {role} m256 best: {ok[:2]}")
    fused = RESULTS.get("gemm_gate_up_silu_m256", {})
    ok = sorted((v["us"], k) for k, v in fused.items() if isinstance(v, dict) and "us" in v)
    if ok:
        lines.append(f"gate_up+silu m256: cublas+silu {fused.get('cublas_then_silu')}, best {ok[:2]}")
    for key, row in RESULTS.get("layouts", {}).items():
        lines.append(f"layout {key}: " + ", ".join(f"{k} {v['us']}" for k, v in row.items()))
    for key, value in RESULTS.get("attention", {}).items():
        lines.append(f"decode attention {key}: best " + json.dumps(value["rows"][:3]))
    if "prefill_attention_128x128" in RESULTS:
        rows = RESULTS["prefill_attention_128x128"]["rows"]
        lines.append("prefill attention: best " + json.dumps(rows[:3]) + " default " +
                     json.dumps([r for r in rows if r.get("default")]))
    if "rms_norm_us" in RESULTS:
        lines.append("rms norm us: " + json.dumps(RESULTS["rms_norm_us"]))
    if "engine_w1" in RESULTS:
        w1 = RESULTS["engine_w1"]
        lines.append(f"engine W1: {w1['tok_s']:.1f} tok/s, ITL {w1['itl_ms']:.3f} ms")
    if "engine_w4" in RESULTS:
        lines.append("engine W4: " + json.dumps({k: round(v["tok_s"]) for k, v in
                                                 RESULTS["engine_w4"].items()}))
    for name in ("W1", "W3", "W2"):
        w = RESULTS.get(f"serve_{name}")
        if w:
            lines.append(f"serve {name}: {w['output_tokens_per_s']:.1f} tok/s, ITL "
                         f"{w['itl_ms']['mean']:.3f} ms, TTFT {w['ttft_ms']['mean']:.1f} ms")
    for row in RESULTS.get("W4", []):
        lines.append(f"W4 {row.get('name')}: {row.get('output_tokens_per_s')} tok/s, "
                     f"ours/this {row.get('ours_vs_this')}")
    lines.append(f"gpu tests: {RESULTS.get('gpu_tests')}; errors: {RESULTS.get('phase_errors')}")
    print("\n".join(lines))


if __name__ == "__main__":
    phases = sys.argv[1:] or ["env", "ckpt", "tests", "graphs", "engine", "gemm", "serve",
                              "offline"]
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
