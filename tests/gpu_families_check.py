"""On a GPU machine: each family through the GPU path (Triton kernels, CUDA graphs) against
transformers on the same weights; prints agreement per family (not part of the CPU suite)."""

import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

from container.engine.block_manager import BlockManager  # noqa: E402
from container.engine.llm_engine import LLMEngine  # noqa: E402
from container.engine.model_config import ModelConfig  # noqa: E402
from container.engine.model_runner import ModelRunner  # noqa: E402
from container.engine.parallel import TensorParallel  # noqa: E402
from container.engine.scheduler import Scheduler  # noqa: E402
from test_engine import random_prompts, run_staggered  # noqa: E402
from tiny_models import build_model, reference_greedy  # noqa: E402

root = Path(sys.argv[1])
for family in sys.argv[2:]:
    try:
        model_dir = build_model(root / family, family)
        config = ModelConfig.from_dir(model_dir)
        runner = ModelRunner(config, str(model_dir), 512, torch.float32, torch.device("cuda"),
                             TensorParallel(), 16)
        runner.allocate_kv_cache(64)
        runner.capture_graphs(8, 512)
        engine = LLMEngine(runner, Scheduler(BlockManager(64, 16), 8, 64), [], 512)
        prompts = random_prompts(config.vocab_size)
        ours = run_staggered(engine, prompts, 12)
        theirs = reference_greedy(model_dir, prompts, 12)
        same = sum(a == b for x, y in zip(ours, theirs) for a, b in zip(x, y))
        print(f"RESULT {family}: {same}/{sum(map(len, theirs))} tokens equal, "
              f"{sum(x == y for x, y in zip(ours, theirs))}/16 sequences, "
              f"graphs={runner.graphs is not None}", flush=True)
    except Exception:
        print(f"RESULT {family}: FAILED\n{traceback.format_exc()}", flush=True)
