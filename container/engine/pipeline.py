"""Pipeline parallelism: the model's layers in P stages, each stage T tensor-parallel ranks.

Rank r is stage r // T, tensor-parallel rank r % T. Each stage builds and loads only its layers
(the embedding on the first stage, the final norm and lm_head on the last). A step travels as
one message per hop, rank (s, t) -> (s + 1, t): the plan (the same flat array TP ranks get),
the sampling rows, and the residual stream of every token. Rank 0 runs the scheduler and the
first stage; the last stage's rank 0 samples and sends the tokens back to rank 0.

Micro-batches: rank 0 keeps up to P steps in flight, each over sequences no other step in
flight holds, so while stage 1 computes step k stage 0 already computes step k + 1. Splitting
the running batch into P shares keeps every stage busy in steady state; a sequence rejoins a
step only once its last one came back (its next input is that step's token). Preemption and
chunked prefill are the scheduler's as usual: it only ever sees the sequences not in flight.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import re
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import StartupError
from ..workers.group import collective_timeout_s
from .llm_engine import PLACEHOLDER, Launched, LLMEngine
from .model_runner import ModelRunner, StepPlan
from .parallel import TensorParallel
from .sampler import SamplingBatch, sample_with_top
from .weights import LocalCheckpoint

log = logging.getLogger(__name__)


# layout --------------------------------------------------------------------------------------
def split_layers(num_layers: int, stages: int, split: str | None) -> list[tuple[int, int]]:
    """[first, end) of each stage: even (earlier stages take the remainder) or as written in
    option.pipeline_layer_split ("12,12,8": layers per stage)."""
    if split:
        try:
            counts = [int(part) for part in split.replace(" ", "").split(",")]
        except ValueError:
            counts = []
        if len(counts) != stages or min(counts, default=0) < 1 or sum(counts) != num_layers:
            raise StartupError(
                f"option.pipeline_layer_split={split!r} must list {stages} positive layer "
                f"counts (one per pipeline stage) adding up to the model's {num_layers} layers, "
                f"e.g. {','.join(str(c) for c in _even(num_layers, stages))}")
    else:
        if num_layers < stages:
            raise StartupError(
                f"option.pipeline_parallel_degree={stages} exceeds the model's {num_layers} "
                f"layers: use at most {num_layers} stages")
        counts = _even(num_layers, stages)
    ranges, first = [], 0
    for count in counts:
        ranges.append((first, first + count))
        first += count
    return ranges


def _even(num_layers: int, stages: int) -> list[int]:
    base, extra = divmod(num_layers, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


@dataclass(frozen=True)
class Layout:
    stages: int
    tp: int
    ranges: tuple[tuple[int, int], ...]

    def stage(self, rank: int) -> int:
        return rank // self.tp

    def rank(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank

    def next_rank(self, rank: int) -> int | None:
        stage = self.stage(rank)
        return None if stage == self.stages - 1 else rank + self.tp

    def previous_rank(self, rank: int) -> int:
        """Whom this rank hears a step from: the stage before, or rank 0 on the first stage."""
        return rank - self.tp if self.stage(rank) else 0

    @property
    def sampler_rank(self) -> int:
        return self.rank(self.stages - 1, 0)


class StageCheckpoint:
    """A checkpoint seen through one stage: only its layers (renumbered from 0) and the
    embedding / norm / lm_head where that stage keeps them; nothing else is read."""

    _LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")

    def __init__(self, source, config, first: int, end: int):
        self.inner = LocalCheckpoint(source) if isinstance(source, (str, Path)) else source
        self.description = self.inner.description
        self.first, self.end = first, end
        last = end == config.num_layers
        self.keep_embedding = first == 0 or (last and config.tie_word_embeddings)
        self.keep_head = last

    def local_name(self, name: str) -> str | None:
        match = self._LAYER.search(name)
        if match:
            index = int(match.group(2))
            if not self.first <= index < self.end:
                return None
            return name[:match.start(2)] + str(index - self.first) + name[match.end(2):]
        if "embed_tokens." in name:
            return name if self.keep_embedding else None
        if name.startswith("lm_head.") or ".norm." in f".{name}" and "layers." not in name:
            return name if self.keep_head else None
        return name

    def open_files(self):
        for opened in self.inner.open_files():
            yield _StageFile(opened, self)


class _StageFile:
    def __init__(self, opened, stage: StageCheckpoint):
        self.opened, self.stage = opened, stage

    def __enter__(self):
        handle = self.opened.__enter__()
        self.handle = handle
        self.names = {}
        for name in handle.keys():
            local = self.stage.local_name(name)
            if local is not None:
                self.names[local] = name
        return self

    def __exit__(self, *exc):
        return self.opened.__exit__(*exc)

    def keys(self):
        return list(self.names)

    def get_slice(self, name):
        return self.handle.get_slice(self.names[name])


# joining the group -----------------------------------------------------------------------------
class PipelineGroup:
    """This rank's place in the P x T grid, with the groups it talks over. Every rank creates
    every group in the same order (torch.distributed requires it)."""

    def __init__(self, rank: int, world_size: int, stages: int, num_layers: int,
                 split: str | None):
        if world_size % stages:
            raise StartupError(f"{world_size} ranks cannot form {stages} pipeline stages")
        tp = world_size // stages
        self.layout = Layout(stages, tp, tuple(split_layers(num_layers, stages, split)))
        self.rank = rank
        self.stage = self.layout.stage(rank)
        self.tp_rank = rank % tp
        timeout = datetime.timedelta(seconds=collective_timeout_s())
        # control messages (headers, plans, tokens) on gloo, CPU tensors, on any machine
        self.control = dist.new_group(backend="gloo", timeout=timeout)
        stage_groups = [dist.new_group(ranks=[self.layout.rank(s, t) for t in range(tp)],
                                       timeout=timeout) for s in range(stages)]
        self.stage_group = stage_groups[self.stage]
        self.first, self.end = self.layout.ranges[self.stage]

    @property
    def is_last(self) -> bool:
        return self.stage == self.layout.stages - 1

    def tensor_parallel(self, small_all_reduce=None) -> TensorParallel:
        return TensorParallel(self.tp_rank, self.layout.tp, small_all_reduce, self.stage_group)

    def stage_config(self, config):
        return replace(config, layer_range=(self.first, self.end))

    def agree_min(self, value: int) -> int:
        """The smallest value over every rank (each stage sizes its own KV cache)."""
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.control)
        return int(tensor[0])

    def describe(self) -> str:
        return (f"pipeline stage {self.stage + 1}/{self.layout.stages} (layers {self.first}-"
                f"{self.end - 1}), tensor-parallel rank {self.tp_rank}/{self.layout.tp}")


# the messages between stages -------------------------------------------------------------------
_HEADER = 5   # plan length, row bytes, hidden rows, mask rows, mask words (all 0: heartbeat)


@dataclass
class StageMessage:
    plan: StepPlan
    rows: list[dict]
    mask: torch.Tensor | None
    hidden: torch.Tensor | None


class StageLink:
    """Point-to-point sends along the pipeline. Sends are asynchronous (kept alive until done),
    so a stage hands on a step and goes straight to its next one."""

    KEEP = 8

    def __init__(self, group: PipelineGroup, hidden_size: int, dtype: torch.dtype,
                 device: torch.device):
        self.group = group
        self.hidden_size, self.dtype, self.device = hidden_size, dtype, device
        self.pending: deque = deque()

    def _isend(self, tensor: torch.Tensor, dst: int, control: bool = True) -> None:
        work = dist.isend(tensor, dst, group=self.group.control if control else None)
        self.pending.append((work, tensor))
        while len(self.pending) > self.KEEP:
            self.pending.popleft()[0].wait()
        while self.pending and self.pending[0][0].is_completed():
            self.pending.popleft()

    def send_step(self, dst: int, plan: StepPlan, rows: bytes, mask: torch.Tensor | None,
                  hidden: torch.Tensor | None) -> None:
        mask_shape = tuple(mask.shape) if mask is not None else (0, 0)
        rows_padded = rows + b"\0" * (-len(rows) % 8)
        header = torch.tensor([plan.data.size, len(rows),
                               0 if hidden is None else hidden.shape[0], *mask_shape],
                              dtype=torch.int64)
        payload = torch.from_numpy(np.concatenate(
            [plan.data, np.frombuffer(rows_padded, np.int64)]))
        self._isend(header, dst)
        self._isend(payload, dst)
        if mask is not None:
            self._isend(mask.to("cpu", torch.int32).contiguous(), dst)
        if hidden is not None:
            self._isend(hidden.contiguous(), dst, control=False)

    def heartbeat(self, dst: int) -> None:
        self._isend(torch.zeros(_HEADER, dtype=torch.int64), dst)

    def receive_step(self, src: int) -> StageMessage | None:
        header = torch.empty(_HEADER, dtype=torch.int64)
        dist.recv(header, src, group=self.group.control)
        plan_len, row_bytes, hidden_rows, mask_rows, mask_words = (int(x) for x in header)
        if plan_len == 0:
            return None
        payload = torch.empty(plan_len + -(-row_bytes // 8), dtype=torch.int64)
        dist.recv(payload, src, group=self.group.control)
        data = payload.numpy()
        rows = pickle.loads(data[plan_len:].tobytes()[:row_bytes]) if row_bytes else []
        mask = None
        if mask_rows:
            mask = torch.empty((mask_rows, mask_words), dtype=torch.int32)
            dist.recv(mask, src, group=self.group.control)
        hidden = None
        if hidden_rows:
            hidden = torch.empty((hidden_rows, self.hidden_size), dtype=self.dtype,
                                 device=self.device)
            dist.recv(hidden, src)
        return StageMessage(StepPlan(data[:plan_len].copy()), rows, mask, hidden)

    def send_tokens(self, tokens: torch.Tensor, logprobs: torch.Tensor | None) -> None:
        width = 0 if logprobs is None else logprobs.shape[1]
        self._isend(torch.tensor([width], dtype=torch.int64), 0)
        self._isend(tokens.to("cpu", torch.int64).contiguous(), 0)
        if logprobs is not None:
            self._isend(logprobs.to("cpu", torch.float32).contiguous(), 0)

    def receive_tokens(self, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        src = self.group.layout.sampler_rank
        width = torch.empty(1, dtype=torch.int64)
        dist.recv(width, src, group=self.group.control)
        tokens = torch.empty(count, dtype=torch.int64)
        dist.recv(tokens, src, group=self.group.control)
        logprobs = None
        if int(width[0]):
            logprobs = torch.empty((count, int(width[0])), dtype=torch.float32)
            dist.recv(logprobs, src, group=self.group.control)
        return tokens, logprobs


def run_stage(runner: ModelRunner, plan: StepPlan, hidden: torch.Tensor | None, last: bool):
    """This stage's layers over the step: the residual stream to hand on, or on the last
    stage the logits of the rows that sample (None when none does)."""
    step = runner.prepare(plan)
    out = runner.model.model(step.input_ids, step.positions, runner.kv_caches, step.meta, hidden)
    if not last:
        return out
    if not step.logits_rows.numel():
        return None
    return runner.model.compute_logits(out[step.logits_rows])


# rank 0 ----------------------------------------------------------------------------------------
class PipelineEngine(LLMEngine):
    """The engine on rank 0: the scheduler, the first stage, and up to P steps in flight."""

    def __init__(self, runner: ModelRunner, scheduler, eos_token_ids, max_model_len: int,
                 group: PipelineGroup, link: StageLink):
        super().__init__(runner, scheduler, eos_token_ids, max_model_len, None, overlap=False)
        self.group, self.link = group, link
        self.stages = group.layout.stages
        self.pipe: deque[Launched] = deque()

    def add_request(self, request_id, prompt_token_ids, sampling, owner=b""):
        if sampling.prompt_logprobs >= 0:
            raise ValueError("prompt log-probs are not available with pipeline parallelism "
                             "(option.pipeline_parallel_degree > 1)")
        return super().add_request(request_id, prompt_token_ids, sampling, owner)

    def has_work(self) -> bool:
        return bool(self.pipe) or self.scheduler.has_work()

    def heartbeat(self) -> None:
        for dst in self._first_hop():
            self.link.heartbeat(dst)

    def stats(self):
        return dict(super().stats(), steps_in_flight=len(self.pipe))

    def step(self):
        launched = self._launch() if len(self.pipe) < self.stages else None
        if launched is not None:
            self.pipe.append(launched)
        if self.pipe and (launched is None or len(self.pipe) >= self.stages):
            oldest = self.pipe.popleft()
            if oldest.sampled:
                oldest.tokens, oldest.logprobs = self.link.receive_tokens(len(oldest.sampled))
                oldest.copy_to_host()
            return self._finalize(oldest)
        return []

    def _first_hop(self) -> list[int]:
        """Rank 0 sends each step to its own stage's other ranks and to the next stage."""
        layout = self.group.layout
        return [layout.rank(0, t) for t in range(1, layout.tp)] + [layout.next_rank(0)]

    def _launch(self):
        decision = self._schedule_share()
        if not decision.scheduled:
            return None
        self._count(decision)
        plan = StepPlan.build(decision.scheduled, self.runner.block_size)
        sampling = [item.seq for item in decision.scheduled if item.samples]
        rows = [self._sampling_row(seq) for seq in sampling]
        mask = None
        if any(seq.matcher is not None for seq in sampling):
            mask = self._structured.bitmask([seq.matcher for seq in sampling])
        packed = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL) if rows else b""
        layout = self.group.layout
        for t in range(1, layout.tp):                  # this stage's other ranks need the plan
            self.link.send_step(layout.rank(0, t), plan, packed, mask, None)
        hidden = run_stage(self.runner, plan, None, last=False)
        self.link.send_step(layout.next_rank(0), plan, packed, mask, hidden)
        for item in decision.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        result = Launched(decision.scheduled)
        for row, seq in enumerate(sampling):
            seq.token_ids.append(PLACEHOLDER)          # its value comes back from the last stage
            result.rows[id(seq)] = row
            result.sampled.append((seq, len(seq.token_ids) - 1))
        return result

    def _schedule_share(self):
        """Schedule one micro-batch: about 1/P of the sequences, none of them in flight. The
        scheduler is shown only those (its own rules then decide chunks and preemption)."""
        scheduler = self.scheduler
        busy = {id(item.seq) for launched in self.pipe for item in launched.scheduled}
        everyone = scheduler.running
        total = len(everyone) + len(scheduler.waiting)
        share = max(1, -(-total // self.stages))
        visible = [seq for seq in everyone if id(seq) not in busy][:share]
        visible_ids = {id(seq) for seq in visible}
        limit = scheduler.max_num_seqs
        scheduler.running = list(visible)
        scheduler.max_num_seqs = min(limit - (len(everyone) - len(visible)), share)
        try:
            decision = scheduler.schedule()
        finally:
            after = scheduler.running
            kept = {id(seq) for seq in after}
            known = {id(seq) for seq in everyone}
            scheduler.running = [seq for seq in everyone
                                 if id(seq) not in visible_ids or id(seq) in kept] + \
                [seq for seq in after if id(seq) not in known]
            scheduler.max_num_seqs = limit
        return decision


# the other ranks -------------------------------------------------------------------------------
@torch.inference_mode()
def follow_pipeline(runner: ModelRunner, group: PipelineGroup, link: StageLink) -> None:
    """Every rank but 0: take each step from the previous hop, run this stage's layers, hand
    the stream on (or, on the last stage, sample and send the tokens to rank 0)."""
    source = group.layout.previous_rank(group.rank)
    onward = group.layout.next_rank(group.rank)
    samples = group.is_last and group.tp_rank == 0
    while True:
        message = link.receive_step(source)
        if message is None:                         # rank 0 is idle: pass the heartbeat on
            if onward is not None:
                link.heartbeat(onward)
            continue
        out = run_stage(runner, message.plan, message.hidden, group.is_last)
        if onward is not None:
            packed = pickle.dumps(message.rows, protocol=pickle.HIGHEST_PROTOCOL) \
                if message.rows else b""
            link.send_step(onward, message.plan, packed, message.mask, out)
        elif samples and message.rows:
            batch = SamplingBatch.build(message.rows, out.device)
            if message.mask is not None:
                batch.token_bitmask = message.mask.to(out.device)
            tokens, logprobs = sample_with_top(out, batch)
            link.send_tokens(tokens, logprobs)
