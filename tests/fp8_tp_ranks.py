"""Two gloo ranks for tests/test_fp8.py: each loads the model at TP=2 with FP8 weights
(quantized at load, then from an FP8 checkpoint), computes the prompts' last logits and saves
its shards of every layer tensor with the full-tensor rows they came from.

usage: python fp8_tp_ranks.py MODEL_DIR FP8_CHECKPOINT_DIR PROMPTS_JSON OUT PORT
(writes OUT.0 and OUT.1)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def rows_of(model) -> dict:
    """State-dict key -> the full tensor's rows this rank holds ([(start, count), ...]), or
    ("cols", start, count) for a row-parallel weight."""
    from container.engine.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                                RowParallelLinear)

    out = {}
    for path, module in model.named_modules():
        if isinstance(module, QKVParallelLinear):
            (qs, qc), (ks, kc) = module.q_rows, module.kv_rows
            rows = [(qs, qc), (module.full_q + ks, kc), (module.full_q + module.full_kv + ks, kc)]
            out[f"{path}.weight"] = out[f"{path}.weight_scale"] = rows
        elif isinstance(module, MergedColumnParallelLinear):
            rows = [(sum(module.out_features[:i]) + s, c) for i, (s, c) in
                    enumerate(module.pieces)]
            out[f"{path}.weight"] = out[f"{path}.weight_scale"] = rows
        elif isinstance(module, RowParallelLinear):
            out[f"{path}.weight"] = ("cols", module.start, module.local_in)
            out[f"{path}.weight_scale"] = [(0, module.weight.shape[0])]
    return out


def rank_main(rank: int, model_dir: str, checkpoint: str, prompts: str, out: str,
              port: str) -> None:
    import torch
    import torch.distributed as dist

    from container.engine.model_config import ModelConfig
    from container.engine.model_runner import ModelRunner
    from container.engine.parallel import TensorParallel
    from container.engine.quant.plan import QuantPlan, plan_quantization
    from test_fp8 import our_logits

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    for name, directory, plan in (
            ("quantize", model_dir, QuantPlan(quantize_at_load=True)),
            ("checkpoint", checkpoint, plan_quantization(None, None, checkpoint, "llama",
                                                         "LlamaForCausalLM"))):
        config = ModelConfig.from_dir(directory)
        runner = ModelRunner(config, directory, 512, torch.float32, torch.device("cpu"),
                             TensorParallel(rank, 2), 4, quant=plan)
        runner.allocate_kv_cache(64)
        rows = rows_of(runner.model)
        shards = {k: v.clone() for k, v in runner.model.state_dict().items() if k in rows}
        result[name] = {"logits": our_logits(runner, json.loads(prompts)), "shards": shards,
                        "rows": rows}
    torch.save(result, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(rank_main, args=tuple(sys.argv[1:6]), nprocs=2)
