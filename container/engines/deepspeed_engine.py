"""engine=DeepSpeed inside the worker group: DeepSpeed tensor-parallel inference behind the shared
front end.

Every rank (started by mpirun, as DJL does) loads the checkpoint with transformers and calls
`deepspeed.init_inference` (kernel injection or AutoTP: deepspeed_config.py). Rank 0 runs the
shared ServingLoop over a DeepSpeedRollingBatch and broadcasts each step's BatchPlan; the other
ranks follow, so every forward and the all-reduces AutoTP puts inside it run on all ranks.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..config import values
from ..config.loader import ServingConfig
from ..config.options_deepspeed import DeepSpeedOptions
from ..engine.model_runner import resolve_dtype
from ..engine.serving_loop import ServingLoop
from ..engine.service import choose_device, generation_eos_ids
from ..errors import StartupError
from ..storage.resolve import resolve_model_dir
from ..workers.dist_env import DistEnv
from ..workers.ipc_server import IpcServer
from .deepspeed_batch import PaddedKVBatch
from .deepspeed_config import build_setup
from .deepspeed_model import import_deepspeed, load_model
from .deepspeed_plan import BatchPlan
from .deepspeed_rolling import DeepSpeedRollingBatch
from .deepspeed_shm import unlink_allreduce_buffer

log = logging.getLogger(__name__)

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _model_config(model_dir: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise StartupError(f"engine=DeepSpeed found no config.json in {model_dir}: point "
                           "option.model_id at a Hugging Face checkpoint directory")
    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:
        raise StartupError(f"transformers cannot read {model_dir}/config.json: "
                           f"{' '.join(str(exc).split())[:300]}") from None


def _eos_ids(hf_config, model_dir: Path) -> list[int]:
    eos = getattr(hf_config.get_text_config(), "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids) | set(generation_eos_ids(model_dir)))


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    from deepspeed.accelerator import get_accelerator

    supported = get_accelerator().supported_dtypes()
    if dtype not in supported:
        names = ", ".join(_DTYPE_NAMES[d] for d in supported if d in _DTYPE_NAMES)
        raise StartupError(f"option.dtype={_DTYPE_NAMES.get(dtype, dtype)}: DeepSpeed on "
                           f"{device.type} runs {names}")


def _describe_shard(model, text_config, rank: int) -> str | None:
    """Which attention heads this rank holds (AutoTP may split them unevenly, e.g. SmolLM2's 9
    query / 3 KV heads over 2 ranks: 6+3 / 2+1, keeping each KV head with its query heads)."""
    heads = getattr(text_config, "num_attention_heads", None)
    if not heads:
        return None
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    for module in model.modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        if getattr(q, "weight", None) is not None and getattr(k, "weight", None) is not None:
            return (f"rank {rank} holds {q.weight.shape[0] // head_dim} of {heads} query heads "
                    f"and {k.weight.shape[0] // head_dim} of {kv_heads} KV heads")
    return None


def _rows_that_fit(requested: int, text_config, dtype: torch.dtype, tp: int, max_model_len: int,
                   device: torch.device) -> int:
    """GPU: cap the batch so full-length rows of KV cache fit in the memory left after loading.

    The batch has no paged pool to run out of: too many rows would end in an out-of-memory
    crash, so the cap is decided once, from the worst case (every row max_model_len long)."""
    layers = getattr(text_config, "num_hidden_layers", None)
    heads = getattr(text_config, "num_attention_heads", None)
    if device.type != "cuda" or not layers or not heads:
        return requested
    kv_heads = -(-(getattr(text_config, "num_key_value_heads", None) or heads) // tp)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    element = torch.tensor([], dtype=dtype).element_size()
    per_row = 2 * layers * kv_heads * head_dim * element * max_model_len
    free, _ = torch.cuda.mem_get_info(device)
    # room for activations, and for the copy transformers' cache makes of a layer per step
    budget = free * 0.85 - (2 << 30) - per_row * requested / layers
    fits = max(1, int(budget // per_row))
    if fits < requested:
        log.warning("max_rolling_batch_size %d lowered to %d: that many rows of %d tokens of KV "
                    "cache fit in the GPU memory left after loading", requested, fits,
                    max_model_len)
    return min(requested, fits)


def _warm_up(batch: PaddedKVBatch) -> None:
    """One prefill and one decode on every rank at start: a model DeepSpeed or the batch cannot
    run fails here, with a start-up error, instead of on the first request."""
    batch.execute(BatchPlan([], [], [[0, 1]]))
    batch.execute(BatchPlan([0], [1], []))
    batch.execute(BatchPlan([], [], []))


class DeepSpeedService:
    def __init__(self, config: ServingConfig, dist: DistEnv):
        self.config = config
        options = DeepSpeedOptions.from_options(config.options)
        import_deepspeed()                        # the install hint before anything is loaded
        trust = values.boolean(config.option("trust_remote_code", "false"))
        self.model_dir = resolve_model_dir(config)
        hf_config = _model_config(self.model_dir, trust)
        text_config = hf_config.get_text_config()
        tp = config.tensor_parallel_degree
        if dist.world_size != tp:
            raise StartupError(f"engine=DeepSpeed started {dist.world_size} rank(s) for "
                               f"tensor_parallel_degree={tp}; launch it through serve")
        device = choose_device(dist)
        if device.type == "cpu" and tp > 1 and os.environ.get("LOCAL_SIZE") != str(tp):
            # DeepSpeed's CPU all-reduce then skips its shared-memory set-up but still calls
            # it, and the ranks crash (segfault) at the first forward.
            raise StartupError(f"engine=DeepSpeed on CPUs needs all {tp} ranks on one host "
                               f"(LOCAL_SIZE={os.environ.get('LOCAL_SIZE')}): lower "
                               "option.tensor_parallel_degree to the ranks one host runs")
        plan_channel = None
        if dist.world_size > 1:
            from ..engine.plan_channel import PlanChannel
            from ..workers.group import init_process_group

            init_process_group(dist)
            plan_channel = PlanChannel()
        checkpoint_dtype = str(getattr(hf_config, "dtype", None)
                               or getattr(hf_config, "torch_dtype", None)).removeprefix("torch.")
        dtype = resolve_dtype(options.dtype, checkpoint_dtype, device)
        setup = build_setup(options, tp, self.model_dir, device.type, hf_config.model_type, dtype)
        _check_dtype(setup.load_dtype, device)
        log.info("DeepSpeed %s (tp=%d, %s on %s): %s", setup.mode, tp, setup.load_dtype, device,
                 setup.why)
        if device.type == "cpu" and tp > 1:
            log.info("DeepSpeed builds its shared-memory all-reduce op on first use (cached in "
                     "TORCH_EXTENSIONS_DIR=%s)", os.environ.get("TORCH_EXTENSIONS_DIR",
                                                            "~/.cache/torch_extensions"))
        started = time.monotonic()
        model = load_model(self.model_dir, setup, trust)
        shard = _describe_shard(model, text_config, dist.rank)
        if shard:
            log.info("%s", shard)
        batch = PaddedKVBatch(model, device, regroup=not setup.kernel_injection)
        _warm_up(batch)
        if device.type == "cpu" and tp > 1:
            unlink_allreduce_buffer(dist.rank)   # the warm-up's all-reduces ran on all ranks
        self.max_model_len = min(options.max_tokens, getattr(
            text_config, "max_position_embeddings", None) or options.max_tokens)
        self.vocab_size = int(text_config.vocab_size)
        self.eos_token_ids = _eos_ids(hf_config, self.model_dir)
        self.mode = setup.mode
        self.batch = batch
        self.plan_channel = plan_channel
        self.max_rows = _rows_that_fit(options.max_rolling_batch_size, text_config,
                                       setup.load_dtype, tp, self.max_model_len, device)
        if plan_channel is not None:          # every rank must hold rank 0's rows
            rows = torch.tensor([self.max_rows], dtype=torch.int64)
            torch.distributed.all_reduce(rows, op=torch.distributed.ReduceOp.MIN,
                                         group=plan_channel.group)
            self.max_rows = int(rows[0])
        self.engine = DeepSpeedRollingBatch(
            batch, self.vocab_size, self.max_model_len, self.eos_token_ids, self.max_rows,
            options.max_rolling_batch_prefill_tokens, plan_channel)
        log.info("DeepSpeed model loaded in %.1f s: max_model_len %d, %s batch of up to %d rows",
                 time.monotonic() - started, self.max_model_len,
                 "rolling" if batch.regroup else "static", self.max_rows)

    def model_info(self) -> dict:
        return {
            "kind": "llm",
            "engine": "deepspeed",
            "deepspeed_mode": self.mode,
            "name": self.config.model_name,
            "tokenizer_dir": str(self.model_dir),
            "max_model_len": self.max_model_len,
            "eos_token_ids": self.eos_token_ids,
            "vocab_size": self.vocab_size,
            "max_rolling_batch_size": self.max_rows,
        }

    # rank 0 ------------------------------------------------------------------------------------
    def serve(self, ipc: IpcServer, ready) -> None:
        ServingLoop(self.engine, ipc).run_forever(ready)

    # other ranks -------------------------------------------------------------------------------
    def follow(self) -> None:
        while True:
            received = self.plan_channel.receive()
            if received is not None:              # None: rank 0's idle heartbeat
                self.batch.execute(BatchPlan.from_data(received.data))


def build_deepspeed_service(config: ServingConfig, dist: DistEnv) -> DeepSpeedService:
    return DeepSpeedService(config, dist)
