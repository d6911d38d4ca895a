"""Tensor parallelism on CPU with real ranks (gloo): torchrun and mpirun, sharded loading,
uneven head splits, faults, and DJL-style handlers that run on every rank."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest
import requests
import torch

from conftest import error_line, handler_dir, run_serve_to_exit
from container.engine.model_config import ModelConfig
from container.engine.models.llama import LlamaForCausalLM
from container.engine.parallel import TensorParallel
from container.engine.weights import LocalCheckpoint, load_weights
from tiny_models import build_model, default_model_dir

PROMPTS = ["the model serves tokens", "café 你好 join and leave", "a", "requests join the batch " * 6]


@pytest.fixture(scope="module")
def uneven_model(tmp_path_factory):
    # 6 query heads over 3 KV heads: at TP=2 the ranks hold 2 and 1 KV groups (like SmolLM2)
    return build_model(tmp_path_factory.mktemp("uneven") / "m", "llama", num_attention_heads=6,
                       num_key_value_heads=3, hidden_size=96, intermediate_size=160)


def model_copy(source, tmp_path, name, properties):
    target = tmp_path / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("serving.properties"))
    (target / "serving.properties").write_text(properties)
    return target


def greedy_ids(server, prompts=PROMPTS, tokens=10):
    out = []
    for prompt in prompts:
        response = requests.post(server.url("/invocations"), json={
            "inputs": prompt, "parameters": {"max_new_tokens": tokens, "details": True,
                                             "ignore_eos": True}}, timeout=120)
        assert response.status_code == 200, response.text
        out.append([t["id"] for t in response.json()["details"]["tokens"]])
    return out


@pytest.fixture(scope="module")
def tp1_reference(uneven_model, tmp_path_factory, request):
    from conftest import ServeProcess

    server = ServeProcess(model_copy(uneven_model, tmp_path_factory.mktemp("tp1"), "tp1",
                                     "option.tensor_parallel_degree=1\n")).start()
    try:
        return greedy_ids(server)
    finally:
        server.stop()


@pytest.mark.parametrize("launch", ["option.tensor_parallel_degree=2\n",
                                    "engine=MPI\noption.tensor_parallel_degree=2\n"],
                         ids=["torchrun", "mpirun"])
def test_tp2_matches_tp1(uneven_model, tmp_path, serve_factory, tp1_reference, launch):
    server = serve_factory(model_copy(uneven_model, tmp_path, "tp2", launch)).start(timeout=180)
    described = requests.get(server.url(f"/models/{server.model_name()}"), timeout=10).json()[0]
    assert described["tensorParallelDegree"] == 2
    assert len(described["workers"][0]["rankPids"]) == 2
    assert greedy_ids(server) == tp1_reference


@pytest.mark.slow
def test_smollm2_tp2_matches_tp1(tmp_path, serve_factory):
    model_dir = default_model_dir()
    assert model_dir is not None, "run `make default-model` first"
    prompts = ["The capital of France is", "def fibonacci(n):"]
    results = []
    for degree in (1, 2):
        target = tmp_path / f"smol-tp{degree}"
        target.mkdir()
        (target / "serving.properties").write_text(
            f"option.model_id={model_dir}\noption.tensor_parallel_degree={degree}\n")
        server = serve_factory(target).start(timeout=300)
        results.append(greedy_ids(server, prompts, tokens=8))
        server.stop()
    assert results[0] == results[1]


def test_each_rank_reads_only_its_own_slices(uneven_model):
    """Every tensor read from the checkpoint is exactly the shard the rank keeps."""
    reads = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __getitem__(self, index):
            tensor = self.inner[index]
            reads.append(tensor.numel())
            return tensor

    class RecordingSource(LocalCheckpoint):
        def open_files(self):
            for opened in super().open_files():
                yield _Wrap(opened, Recording)

    config = ModelConfig.from_dir(uneven_model)
    whole = sum(p.numel() for p in LlamaForCausalLM(config, 64).parameters())
    for rank in (0, 1):
        reads.clear()
        model = LlamaForCausalLM(config, 64, TensorParallel(rank, 2))
        load_weights(model, RecordingSource(uneven_model))
        kept = sum(p.numel() for p in model.parameters())
        assert sum(reads) == kept - _vocab_padding(model)     # nothing beyond the shard
        assert sum(reads) < 0.7 * whole


def _vocab_padding(model) -> int:
    embed = model.model.embed_tokens
    padding = (embed.per_rank - embed.local_rows) * embed.weight.shape[1]
    return padding * (1 if model.config.tie_word_embeddings else 2)


class _Wrap:
    def __init__(self, opened, wrapper):
        self.opened, self.wrapper = opened, wrapper

    def __enter__(self):
        handle = self.opened.__enter__()
        wrapper = self.wrapper

        class Handle:
            def keys(self):
                return handle.keys()

            def get_slice(self, name):
                return wrapper(handle.get_slice(name))
        return Handle()

    def __exit__(self, *exc):
        return self.opened.__exit__(*exc)


def test_split_that_cannot_work_is_refused_clearly(tmp_path):
    model = build_model(tmp_path / "odd", "llama", num_attention_heads=4, num_key_value_heads=1)
    target = model_copy(model, tmp_path, "tp3", "option.tensor_parallel_degree=3\n")
    code, _, stderr = run_serve_to_exit(target, timeout=180)
    assert code != 0
    line = error_line(stderr)
    assert "tensor_parallel_degree=3" in line and "4 attention heads" in line


def _rank_pids(server) -> list[int]:
    described = requests.get(server.url(f"/models/{server.model_name()}"), timeout=10).json()[0]
    return described["workers"][0]["rankPids"]


def _wait_healthy_again(server, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(server.url("/ping"), timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError("not healthy again")


def test_killing_a_rank_mid_stream_restarts_the_group(uneven_model, tmp_path, serve_factory):
    server = serve_factory(model_copy(uneven_model, tmp_path, "kill",
                                      "option.tensor_parallel_degree=2\n")).start(timeout=180)
    old = _rank_pids(server)
    body = {"inputs": "the model", "stream": True,
            "parameters": {"max_new_tokens": 400, "ignore_eos": True}}
    response = requests.post(server.url("/invocations"), json=body, stream=True, timeout=60)
    lines = response.iter_lines()
    next(lines)
    killed = time.monotonic()
    os.kill(old[1], signal.SIGKILL)                       # a passive rank dies
    received = list(lines)                                # the stream ends, it does not hang
    assert time.monotonic() - killed < 10
    assert b"WorkerDied" in received[-1] or b"error" in received[-1].lower()
    assert requests.get(server.url("/ping"), timeout=5).status_code in (200, 503)
    _wait_healthy_again(server)
    assert _rank_pids(server) != old
    assert len(greedy_ids(server, PROMPTS[:1], 3)[0]) == 3


def test_a_rank_stuck_in_a_collective_is_caught_by_the_timeout(uneven_model, tmp_path,
                                                               serve_factory):
    server = serve_factory(model_copy(uneven_model, tmp_path, "stuck",
                                      "option.tensor_parallel_degree=2\n"),
                           env={"SERVING_COLLECTIVE_TIMEOUT": "6"}).start(timeout=180)
    old = _rank_pids(server)
    os.kill(old[1], signal.SIGSTOP)                       # alive, but never answers again
    try:
        result = {}

        def ask():
            result["response"] = requests.post(server.url("/invocations"), json={
                "inputs": "x", "parameters": {"max_new_tokens": 5}}, timeout=60)

        thread = threading.Thread(target=ask)
        started = time.monotonic()
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        assert result["response"].status_code == 503, result["response"].text
        assert time.monotonic() - started < 40
    finally:
        try:
            os.kill(old[1], signal.SIGCONT)
        except ProcessLookupError:
            pass
    _wait_healthy_again(server)
    assert len(greedy_ids(server, PROMPTS[:1], 3)[0]) == 3


def test_handler_runs_on_every_rank_and_rank_zero_answers(tmp_path, serve_factory):
    directory = handler_dir(tmp_path, "tp_allreduce", "option.tensor_parallel_degree=2\n")
    server = serve_factory(directory).start(timeout=180)
    for x in (1, 5):
        body = requests.post(server.url("/invocations"), json={"x": x}, timeout=30).json()
        # rank 0 contributes x*1, rank 1 x*2: the sum proves both ranks ran handle()
        assert body == {"rank": 0, "tp": 2, "prop_tp": "2", "sum": 3.0 * x}


def test_placement_note_when_tp_is_smaller_than_the_gpu_count():
    from container.config.loader import ServingConfig
    from container.workers.launcher import placement_note

    config = ServingConfig("/m", "m", "Python", "native", "torchrun", 2, 4, {}, {})
    note = placement_note(config)
    assert "uses 2 of the 4 visible GPUs" in note and "ONE model copy" in note
    assert "CUDA_VISIBLE_DEVICES=2,3" in note
    config.gpu_count = 2
    assert placement_note(config) is None
    assert torch.distributed.is_available()
