"""The native engine inside the worker group: build it, then serve the front end (rank 0) or
follow rank 0's steps (other ranks)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from ..config.loader import ServingConfig
from ..config import values
from ..config.options_native import NativeOptions
from ..errors import StartupError
from ..storage.resolve import resolve_model_dir, weights_source
from ..workers.dist_env import DistEnv
from ..workers.ipc_server import IpcServer
from .block_manager import BlockManager
from .llm_engine import LLMEngine, follow_steps
from .model_config import ModelConfig, NotNativeArchitecture
from .model_runner import ModelRunner, resolve_dtype
from .parallel import TensorParallel
from .plan_channel import PlanChannel
from .quant.plan import plan_quantization
from .scheduler import Scheduler
from .serving_loop import ServingLoop

log = logging.getLogger(__name__)



def generation_eos_ids(model_dir: Path) -> list[int]:
    """EOS ids of generation_config.json (Llama 3 lists several), which generate() stops on."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except ValueError:
        return []
    return [eos] if isinstance(eos, int) else [int(e) for e in eos or []]


def choose_device(dist: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def kv_block_count(options: NativeOptions, runner: ModelRunner, device: torch.device,
                   max_model_len: int, extra_per_block: int = 0) -> int:
    """extra_per_block: bytes another cache takes per block (a draft model's, as many blocks)."""
    if options.num_kv_blocks:
        return options.num_kv_blocks
    # Never more than a full batch of full-length sequences can use.
    useful = options.max_rolling_batch_size * -(-max_model_len // runner.block_size) + 1
    per_block = runner.kv_bytes_per_block() + extra_per_block
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        budget = total * options.gpu_memory_utilization - used - _activation_reserve(options, runner)
        blocks = int(budget // per_block)
    else:
        blocks = int(options.cpu_kv_cache_gb * (1 << 30) // per_block)
    blocks = min(blocks, useful)
    if blocks < 1:
        raise StartupError("no memory is left for the KV cache: raise "
                           "option.gpu_memory_utilization (GPU) / option.cpu_kv_cache_gb (CPU) or "
                           "use more tensor-parallel ranks")
    return blocks


def _activation_reserve(options: NativeOptions, runner: ModelRunner) -> int:
    """Room for one step's activations and logits at the full token budget."""
    config = runner.config
    tokens = options.max_rolling_batch_prefill_tokens
    element = torch.tensor([], dtype=runner.dtype).element_size()
    per_token = (config.hidden_size * 6 + config.intermediate_size * 3) * element
    spec = options.speculative_config       # verification: 1 + k logit rows per sequence
    rows = options.max_rolling_batch_size * (1 + (spec.num_speculative_tokens if spec else 0))
    logits = min(tokens, rows) * config.vocab_size * 4 * 3
    if spec is not None and spec.method == "draft_model":     # the drafts' q rows, float32
        logits += options.max_rolling_batch_size * spec.num_speculative_tokens * \
            config.vocab_size * 4 * 2
    return int(tokens * per_token * 2 + logits + (512 << 20))


def _small_all_reduce(device: torch.device):
    """GPU tensor parallelism: the symmetric-memory fast path, if it checks out here."""
    if device.type != "cuda" or os.environ.get("SERVE_SYMMETRIC_ALLREDUCE", "1") == "0":
        return None
    from .parallel import SmallAllReduce

    reducer = SmallAllReduce(torch.distributed.group.WORLD.group_name)
    if reducer.self_check(device, torch.bfloat16):
        log.info("small all-reduces: one-shot over symmetric memory")
        return reducer
    log.info("small all-reduces: NCCL (symmetric memory unavailable)")
    return None


class NativeService:
    def __init__(self, config: ServingConfig, dist: DistEnv):
        self.config = config
        self.dist = dist
        self.options = NativeOptions.from_options(config.options)
        self.model_dir = resolve_model_dir(config)
        device = choose_device(dist)
        model_config, prebuilt = self._choose_path(device, dist)
        self.model_config = model_config
        tp = TensorParallel(dist.rank, dist.world_size)
        self.plan_channel = None
        self.pipeline = None
        if self.options.pipeline_parallel_degree > 1:
            tp, model_config = self._join_pipeline(dist, device, model_config, prebuilt)
            self.model_config = model_config
        elif dist.world_size > 1:
            from ..workers.group import init_process_group

            init_process_group(dist)
            self.plan_channel = PlanChannel()
            tp = TensorParallel(dist.rank, dist.world_size, _small_all_reduce(device))
        max_len = self.options.max_model_len or model_config.max_position_embeddings
        if prebuilt is not None:
            max_len = min(max_len, model_config.max_position_embeddings)
        dtype = resolve_dtype(self.options.dtype, model_config.torch_dtype, device)
        self.quant = plan_quantization(self.options.quantize, self.options.kv_cache_dtype,
                                       self.model_dir, model_config.module,
                                       model_config.architecture)
        started = time.monotonic()
        try:
            if prebuilt is not None:
                prebuilt = prebuilt(dtype)
                model_config = self.model_config = prebuilt.config
            weights = weights_source(config, self.model_dir)
            if self.pipeline is not None:
                from .pipeline import StageCheckpoint

                weights = StageCheckpoint(weights, model_config, self.pipeline.first,
                                          self.pipeline.end)
            self.runner = ModelRunner(model_config, weights,
                                      max_len, dtype, device, tp, int(self.options.kv_block_size),
                                      model=prebuilt,
                                      lora=self.options if self.options.enable_lora else None,
                                      quant=self.quant)
        except ValueError as exc:   # shapes that cannot be split or loaded
            raise StartupError(str(exc)) from None
        spec = self.options.speculative_config
        draft_runner = None
        if spec is not None and spec.method == "draft_model" and dist.rank == 0:
            from .speculative.setup import load_draft_runner

            draft_runner = load_draft_runner(spec, config, model_config, max_len, dtype, device,
                                             int(self.options.kv_block_size))
        blocks = kv_block_count(self.options, self.runner, device, max_len,
                                draft_runner.kv_bytes_per_block() if draft_runner else 0)
        if self.pipeline is not None:
            blocks = self.pipeline.agree_min(blocks)
        elif tp.enabled:
            count = torch.tensor([blocks], dtype=torch.int64)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN,
                                         group=self.plan_channel.group)
            blocks = int(count[0])
        self.runner.allocate_kv_cache(blocks)
        block_size = self.runner.block_size
        self.max_model_len = min(max_len, blocks * block_size)
        log.info("%s: %s path (%s); attention per layer: %s", model_config.architecture,
                 self.path, self.path_reason, ", ".join(model_config.attention_kinds))
        if device.type == "cuda" and not self.options.enforce_eager and self.path == "native" \
                and self.pipeline is None:
            # pipeline stages run eagerly (no graphs for them yet)
            self.runner.capture_graphs(min(self.options.max_rolling_batch_size, 512),
                                       self.max_model_len)
        self.quantization = self.quant.describe(dtype)
        log.info("model loaded in %.1f s on %s (%s, tp=%d): %d KV blocks of %d tokens "
                 "(%.2f GiB, %s), max_model_len %d; quantization: %s", time.monotonic() - started,
                 device, dtype, tp.size, blocks, block_size,
                 blocks * self.runner.kv_bytes_per_block() / (1 << 30),
                 self.quantization["kv_cache_dtype"], self.max_model_len,
                 self.quantization["weights"])
        self.block_manager = BlockManager(blocks, block_size, self.options.enable_prefix_caching)
        scheduler = Scheduler(self.block_manager, self.options.max_rolling_batch_size,
                              self.options.max_rolling_batch_prefill_tokens)
        eos = sorted(set(model_config.eos_token_ids) | set(generation_eos_ids(self.model_dir)))
        speculator = None
        if spec is not None and dist.rank == 0:
            from .speculative.setup import build_speculator

            graphs = device.type == "cuda" and not self.options.enforce_eager
            speculator = build_speculator(
                spec, draft_runner, blocks, self.options.max_rolling_batch_prefill_tokens,
                min(self.options.max_rolling_batch_size, 512) if graphs else None,
                self.max_model_len)
        if self.pipeline is not None:
            from .pipeline import PipelineEngine, StageLink

            self.link = StageLink(self.pipeline, model_config.hidden_size, dtype, device)
            self.engine = PipelineEngine(self.runner, scheduler, eos, self.max_model_len,
                                         self.pipeline, self.link)
        else:
            self.engine = LLMEngine(self.runner, scheduler, eos, self.max_model_len,
                                    self.plan_channel, overlap=self.options.overlap_scheduling,
                                    speculator=speculator)
        self.eos_token_ids = eos
        self.engine.tokenizer_dir = str(self.model_dir)       # structured output's grammars
        self.lora = None
        if self.runner.lora is not None and dist.rank == 0:
            from .lora.api import register_at_start
            from .lora.registry import LoRARegistry

            self.lora = LoRARegistry(self.runner.lora.slots, self.model_dir,
                                     self.plan_channel.send_command if self.plan_channel else None)
            scheduler.lora = self.lora
            register_at_start(self.lora, self.options.adapters, self.model_dir)
        if device.type == "cuda" and dist.rank == 0:     # other ranks follow its plans later
            self._warm_up()

    def _join_pipeline(self, dist: DistEnv, device, model_config, prebuilt):
        """This rank's pipeline stage and its tensor-parallel group (engine/pipeline.py)."""
        from ..workers.group import init_process_group
        from .pipeline import PipelineGroup

        stages = self.options.pipeline_parallel_degree
        if prebuilt is not None:
            raise StartupError(f"{self.path_reason.split(';')[0]}; pipeline parallelism needs "
                               "the native model code: set option.pipeline_parallel_degree=1")
        if dist.world_size % stages:
            raise StartupError(f"{dist.world_size} ranks cannot form option.pipeline_parallel_"
                               f"degree={stages} stages: launch tensor_parallel_degree x "
                               "pipeline_parallel_degree ranks")
        init_process_group(dist)
        self.pipeline = PipelineGroup(dist.rank, dist.world_size, stages,
                                      model_config.num_layers, self.options.pipeline_layer_split)
        log.info("%s", self.pipeline.describe())
        # (the symmetric-memory all-reduce is set up for the whole world only: NCCL here)
        return self.pipeline.tensor_parallel(), self.pipeline.stage_config(model_config)

    def _choose_path(self, device: torch.device, dist: DistEnv):
        """Our model code when the architecture has it, else transformers' (any
        AutoModelForCausalLM) under the same engine. Returns the ModelConfig (None until the
        transformers model is loaded) and, for that path, a loader taking the dtype."""
        try:
            model_config = ModelConfig.from_dir(self.model_dir)
        except NotNativeArchitecture as exc:
            reason = str(exc).split(";")[0]
        else:
            self.path = "native"
            self.path_reason = (f"engine/models/{model_config.module}.py implements "
                                f"{model_config.architecture}")
            return model_config, None
        if dist.world_size > 1:
            raise StartupError(f"{reason}; its transformers path runs on one rank: set "
                               "option.tensor_parallel_degree=1")
        from .models.transformers_fallback import load_transformers_model

        trust = values.boolean(self.config.option("trust_remote_code", "false"))
        self.path = "transformers"
        self.path_reason = f"{reason}; trust_remote_code={'on' if trust else 'off'}"
        log.info("not native: %s; serving through transformers with paged attention", reason)

        def load(dtype):
            model, loaded_config = load_transformers_model(self.model_dir, dtype, device, trust)
            model.config = loaded_config
            return model

        raw = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        text = raw.get("text_config") or raw
        placeholder = ModelConfig(
            architecture=(raw.get("architectures") or [raw.get("model_type", "?")])[0],
            vocab_size=0, hidden_size=0, intermediate_size=0, num_layers=0, num_heads=0,
            num_kv_heads=0, head_dim=0, rms_norm_eps=0.0, rope_theta=0.0, rope_scaling=None,
            max_position_embeddings=int(text.get("max_position_embeddings")
                                        or text.get("n_positions") or 2048),
            tie_word_embeddings=False, qkv_bias=False,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"), module="transformers")
        return placeholder, load

    def _warm_up(self) -> None:
        """Compile the prefill kernels now, not on the first request's time."""
        from ..workers.protocol import SamplingParams

        spec = self.options.speculative_config
        extra = spec.num_speculative_tokens if spec else 0    # reach a verification step
        length = min(64, self.max_model_len - 4 - extra)
        prompt = [1 + i % (self.model_config.vocab_size - 1) for i in range(length)]
        self.engine.add_request("__warmup__", prompt, SamplingParams(max_new_tokens=2 + extra))
        while self.engine.has_work():
            self.engine.step()
        self.engine.counters = {k: 0 for k in self.engine.counters}
        self.engine.seconds.clear()
        speculator = getattr(self.engine, "speculator", None)
        if speculator is not None:
            speculator.counters = {k: 0 for k in speculator.counters}

    def model_info(self) -> dict:
        return {
            "kind": "llm",
            "engine": "native",
            "name": self.config.model_name,
            "tokenizer_dir": str(self.model_dir),
            "max_model_len": self.max_model_len,
            "eos_token_ids": self.eos_token_ids,
            "vocab_size": self.model_config.vocab_size,
            "kv_blocks": self.block_manager.num_blocks,
            "kv_block_size": self.block_manager.block_size,
            "architecture": self.model_config.architecture,
            "model_path": self.path,
            "model_path_reason": self.path_reason,
            "attention": self.model_config.attention_kinds,
            "lora": self.runner.lora is not None,
            "quantization": self.quantization,
            "speculative": (self.options.speculative_config.method
                            if self.options.speculative_config else None),
        }

    # rank 0 ------------------------------------------------------------------------------------
    def serve(self, ipc: IpcServer, ready) -> None:
        ServingLoop(self.engine, ipc, self.lora).run_forever(ready)

    # other ranks -------------------------------------------------------------------------------
    def follow(self) -> None:
        if self.pipeline is not None:
            from .pipeline import follow_pipeline

            follow_pipeline(self.runner, self.pipeline, self.link)
            return
        follow_steps(self.runner, self.plan_channel)


def build_native_service(config: ServingConfig, dist: DistEnv) -> NativeService:
    return NativeService(config, dist)
