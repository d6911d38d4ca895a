"""engine=MPI with option.rolling_batch=trtllm through the real `serve` entry point.

Without TensorRT-LLM (these machines): one `serve: error:` line naming the package and the
alternative. With the STAND-IN package on PYTHONPATH (tests/stand_in_tensorrt_llm: not
TensorRT-LLM, it echoes the prompt's tokens): the adapter streams through mpirun, the shared
serving loop and the HTTP front end, and a restart reuses the cached engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

import pytest
import requests

from conftest import error_line, repo_env, run_serve_to_exit
from container.text.tokenizer import TextTokenizer
from stand_in_tensorrt_llm.stand_in_helpers import make_checkpoint, records, stand_in_pythonpath

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None,
                                reason="engine=MPI needs mpirun (make system-deps)")

PROMPT = "def translate(options, tensor_parallel_degree):"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("stand_in_checkpoint"))


def trtllm_model_dir(tmp_path, model_id, extra: str = ""):
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    (directory / "serving.properties").write_text(
        "engine=MPI\noption.rolling_batch=trtllm\noption.use_custom_all_reduce=true\n"
        f"option.model_id={model_id}\noption.max_input_len=256\noption.max_output_len=64\n"
        f"option.max_rolling_batch_size=8\noption.engine_cache_dir={tmp_path / 'engines'}\n"
        + extra)
    return directory


# Without the library -----------------------------------------------------------------------------
@pytest.fixture
def no_tensorrt_llm():
    """Skip where serve's own environment can import a tensorrt_llm (real or stand-in)."""
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('tensorrt_llm') is not None)"],
                           env=repo_env(), cwd=tempfile.gettempdir())
    if probe.returncode != 0:
        pytest.skip("tensorrt_llm is importable here: the missing-runtime path cannot be shown")


def test_serve_without_tensorrt_llm_stops_with_one_line(tmp_path, no_tensorrt_llm, checkpoint):
    code, _, stderr = run_serve_to_exit(trtllm_model_dir(tmp_path, checkpoint))
    assert code != 0
    line = error_line(stderr)
    assert "tensorrt_llm is not installed" in line
    assert "option.rolling_batch=auto" in line and "docker/Dockerfile.trtllm" in line


def test_serve_without_tensorrt_llm_from_sagemaker_environment(tmp_path, no_tensorrt_llm,
                                                                checkpoint):
    empty = tmp_path / "opt-ml-model"
    empty.mkdir()
    code, _, stderr = run_serve_to_exit(empty, env={
        "HF_MODEL_ID": str(checkpoint), "OPTION_ENGINE": "MPI",
        "OPTION_ROLLING_BATCH": "trtllm", "TENSOR_PARALLEL_DEGREE": "1"})
    assert code != 0
    assert "tensorrt_llm is not installed" in error_line(stderr)


def test_serve_refuses_bad_trtllm_options_before_starting_workers(tmp_path, checkpoint):
    code, _, stderr = run_serve_to_exit(trtllm_model_dir(tmp_path, checkpoint,
                                                         "option.quantize=gptq\n"))
    assert code != 0
    line = error_line(stderr)
    assert "option.quantize" in line and "awq, smoothquant, fp8" in line


# With the stand-in -------------------------------------------------------------------------------
def stand_in_env(record):
    return {"PYTHONPATH": stand_in_pythonpath(), "STAND_IN_TRTLLM_RECORD": str(record)}


def echoed(tokenizer: TextTokenizer, prompt: str, n: int) -> tuple[list[int], str]:
    """What the stand-in generates: the prompt's tokens again, in order."""
    ids = tokenizer.encode(prompt)
    out = [ids[i % len(ids)] for i in range(n)]
    return out, tokenizer.decode(out)


@pytest.mark.slow
def test_stand_in_serve_streams_through_http_and_reuses_engines(tmp_path, serve_factory,
                                                                checkpoint):
    record = tmp_path / "calls.jsonl"
    model_dir = trtllm_model_dir(tmp_path, checkpoint)
    tokenizer = TextTokenizer(checkpoint)
    ids, text = echoed(tokenizer, PROMPT, 12)
    server = serve_factory(model_dir, env=stand_in_env(record)).start(timeout=180)

    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True}}
    response = requests.post(server.url("/invocations"), json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["generated_text"] == text
    assert result["details"]["finish_reason"] == "length"
    assert [t["id"] for t in result["details"]["tokens"]] == ids
    assert result["details"]["prompt_tokens"] == len(tokenizer.encode(PROMPT))

    with requests.post(server.url("/invocations"), json=dict(body, stream=True), stream=True,
                       timeout=60) as streamed:
        assert streamed.status_code == 200
        lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert [line["token"]["id"] for line in lines] == ids
    assert "".join(line["token"]["text"] for line in lines) == text
    assert lines[-1]["generated_text"] == text

    completion = requests.post(server.url("/v1/completions"), timeout=60, json={
        "model": "m", "prompt": PROMPT, "max_tokens": 5}).json()
    assert completion["choices"][0]["text"] == echoed(tokenizer, PROMPT, 5)[1]

    calls = records(record)
    assert [c["event"] for c in calls if c["event"] in ("LLM", "build", "save")] == [
        "LLM", "build", "save"]
    assert all(c["has_loop"] and c["streaming"] for c in records(record, "generate_async"))
    assert server.stop() == 0

    # A restart (a new serve on the same cache) loads the engines instead of compiling.
    again = serve_factory(model_dir, env=stand_in_env(record)).start(timeout=180)
    response = requests.post(again.url("/invocations"), json=body, timeout=60)
    assert response.json()["generated_text"] == text
    assert len(records(record, "build")) == 1 and len(records(record, "load_engines")) == 1
    assert records(record, "LLM")[-1]["model"].startswith(str(tmp_path / "engines"))
    (described,) = requests.get(again.url(f"/models/{again.model_name()}"), timeout=5).json()
    assert (described["engine"], described["engineKind"]) == ("MPI", "trtllm")
    assert described["engineStats"]["requests_finished"] == 1


@pytest.mark.slow
def test_stand_in_serve_over_two_ranks(tmp_path, serve_factory, checkpoint):
    record = tmp_path / "calls.jsonl"
    model_dir = trtllm_model_dir(tmp_path, checkpoint, "option.tensor_parallel_degree=2\n")
    server = serve_factory(model_dir, env=stand_in_env(record)).start(timeout=180)
    _, text = echoed(TextTokenizer(checkpoint), PROMPT, 4)
    response = requests.post(server.url("/invocations"), timeout=60, json={
        "inputs": PROMPT, "parameters": {"max_new_tokens": 4}})
    assert response.json()["generated_text"] == text
    (llm,) = records(record, "LLM")
    assert (llm["mpi_rank"], llm["tensor_parallel_size"], llm["mpi_session"]) == ("0", 2, 2)
    workers = records(record, "worker_node")
    assert [w["mpi_rank"] for w in workers] == ["1"]      # rank 1 serves TensorRT-LLM's pool


def _token_output_carries_errors() -> bool:
    import dataclasses

    from container.engine.interface import TokenOutput
    return "error" in {f.name for f in dataclasses.fields(TokenOutput)}


@pytest.mark.slow
@pytest.mark.skipif(not _token_output_carries_errors(),
                    reason="needs TokenOutput.error passed on by ServingLoop (diff in the report)")
def test_stand_in_prompt_over_max_input_len_is_a_400(tmp_path, serve_factory, checkpoint):
    record = tmp_path / "calls.jsonl"
    server = serve_factory(trtllm_model_dir(tmp_path, checkpoint, "option.max_input_len=16\n"
                                                                  "option.max_output_len=600\n"),
                           env=stand_in_env(record)).start(timeout=180)
    long_prompt = PROMPT * 4          # over 16 tokens, under max_seq_len with 5 new tokens
    response = requests.post(server.url("/invocations"), timeout=60, json={
        "inputs": long_prompt, "parameters": {"max_new_tokens": 5}})
    assert response.status_code == 400, response.text
    assert "max_input_len=16" in response.json()["message"]
    fine = requests.post(server.url("/invocations"), timeout=60, json={
        "inputs": "def", "parameters": {"max_new_tokens": 3}})
    assert fine.status_code == 200
