"""TrtLlmService against the STAND-IN tensorrt_llm package (tests/stand_in_tensorrt_llm: not
TensorRT-LLM): which LLM(...) calls it makes, the engine cache (build once, reuse), the
prebuilt-engine (ahead-of-time) path, and the one-line errors. The stand-in records each call."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from container.config.loader import load_config
from container.engines.trtllm import TrtLlmService
from container.engines.trtllm_cache import MARKER, find_engine_dir
from container.engines.trtllm_runtime import load_runtime
from container.errors import StartupError
from container.workers.dist_env import DistEnv
from stand_in_tensorrt_llm.stand_in_helpers import (forget_stand_in, make_checkpoint, records,
                                                     use_stand_in)

RANK0 = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


@pytest.fixture(scope="module")
def tokenizer_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("stand_in_tokenizer"))


@pytest.fixture
def checkpoint(tmp_path, tokenizer_checkpoint):
    return make_checkpoint(tmp_path / "checkpoint", tokenizer_source=tokenizer_checkpoint)


@pytest.fixture
def record(monkeypatch, tmp_path):
    path = tmp_path / "calls.jsonl"
    use_stand_in(monkeypatch, path)
    yield path
    forget_stand_in()


def config_for(tmp_path: Path, model: Path, extra: str = "", env: dict | None = None):
    directory = tmp_path / f"model-{time.monotonic_ns()}"
    directory.mkdir()
    (directory / "serving.properties").write_text(
        "engine=MPI\noption.rolling_batch=trtllm\n"
        f"option.model_id={model}\noption.engine_cache_dir={tmp_path / 'engine-cache'}\n"
        "option.max_input_len=64\noption.max_output_len=32\noption.max_rolling_batch_size=8\n"
        + extra)
    return load_config(directory, env or {})


def start(config, dist=RANK0) -> TrtLlmService:
    service = TrtLlmService(config, dist)
    if dist.is_driver:
        service.engine.shutdown()
    return service


def test_stand_in_jit_build_passes_every_config_object(tmp_path, checkpoint, record):
    service = start(config_for(tmp_path, checkpoint))
    (call,) = records(record, "LLM")
    assert call["model"] == str(checkpoint)
    assert (call["tensor_parallel_size"], call["dtype"], call["skip_tokenizer_init"]) == (
        1, "auto", True)
    kwargs = call["kwargs"]
    assert kwargs["build_config"]["type"] == "BuildConfig"
    assert {k: kwargs["build_config"][k] for k in
            ("max_input_len", "max_seq_len", "max_batch_size", "max_num_tokens")} == {
        "max_input_len": 64, "max_seq_len": 96, "max_batch_size": 8, "max_num_tokens": 768}
    assert kwargs["kv_cache_config"] == {
        "type": "KvCacheConfig", "enable_block_reuse": False, "max_tokens": None,
        "max_attention_window": None, "sink_token_length": None,
        "free_gpu_memory_fraction": 0.95, "host_cache_size": None, "onboard_blocks": True}
    assert kwargs["scheduler_config"]["capacity_scheduler_policy"] == "MAX_UTILIZATION"
    assert "quant_config" not in kwargs and call["mpi_session"] is None
    assert len(records(record, "build")) == 1 and len(records(record, "save")) == 1
    info = service.model_info()
    assert (info["engine"], info["engine_source"], info["max_model_len"]) == (
        "trtllm", "compiled", 96)
    assert info["tokenizer_dir"] == str(checkpoint) and info["tensorrt_llm"] == "0.0.0+stand-in"
    assert (Path(info["engine_dir"]) / MARKER).is_file()
    assert find_engine_dir(Path(info["engine_dir"])) is not None


def test_stand_in_restart_reuses_the_cached_engine(tmp_path, checkpoint, record):
    first = start(config_for(tmp_path, checkpoint)).model_info()
    second = start(config_for(tmp_path, checkpoint)).model_info()
    assert second["engine_source"] == "cached" and second["engine_dir"] == first["engine_dir"]
    calls = records(record, "LLM")
    assert [c["model"] for c in calls] == [str(checkpoint), first["engine_dir"]]
    assert "build_config" not in calls[1]["kwargs"]       # a compiled engine keeps its own
    assert len(records(record, "build")) == 1 and len(records(record, "load_engines")) == 1
    assert second["max_model_len"] == 96


def test_stand_in_cache_key_follows_model_and_compiled_options(tmp_path, checkpoint, record):
    base = start(config_for(tmp_path, checkpoint)).model_info()["engine_dir"]
    runtime_only = start(config_for(tmp_path, checkpoint, "option.enable_kv_cache_reuse=true\n"
                                    "option.batch_scheduler_policy=guaranteed_no_evict\n"))
    assert runtime_only.model_info()["engine_dir"] == base
    bigger = start(config_for(tmp_path, checkpoint, "option.max_input_len=80\n"))
    assert bigger.model_info()["engine_source"] == "compiled"
    assert bigger.model_info()["engine_dir"] != base
    weights = checkpoint / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    changed = start(config_for(tmp_path, checkpoint)).model_info()
    assert changed["engine_source"] == "compiled" and changed["engine_dir"] != base
    assert len(records(record, "build")) == 3


def test_stand_in_quantized_build(tmp_path, checkpoint, record):
    start(config_for(tmp_path, checkpoint, "option.quantize=smoothquant\n"
                                           "option.smoothquant_per_channel=true\n"
                                           "option.calib_dataset=/data/calib\n"))
    (build,) = records(record, "build")
    assert build["quant_config"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN"
    assert build["quant_config"]["smoothquant_val"] == 0.8
    assert build["calib_config"]["calib_dataset"] == "/data/calib"
    assert build["calib_config"]["calib_batches"] == 16


def test_stand_in_tensor_parallel_leader_passes_the_mpirun_world(tmp_path, checkpoint, record,
                                                                 monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    config = config_for(tmp_path, checkpoint, "option.tensor_parallel_degree=2\n")
    start(config, DistEnv(0, 2, 0, 2))
    (call,) = records(record, "LLM")
    assert call["tensor_parallel_size"] == 2 and call["mpi_session"] == 2
    assert records(record, "MpiCommSession")[0]["n_workers"] == 2


def test_stand_in_other_ranks_build_nothing(tmp_path, checkpoint, record):
    config = config_for(tmp_path, checkpoint, "option.tensor_parallel_degree=2\n")
    service = start(config, DistEnv(1, 2, 1, 2))
    assert records(record) == [] and not hasattr(service, "engine")


def prebuilt(tmp_path, checkpoint, record) -> Path:
    """An engine directory as LLM.save() writes it, with the tokenizer copied next to it."""
    compiled = Path(start(config_for(tmp_path, checkpoint)).model_info()["engine_dir"])
    engines = tmp_path / "prebuilt"
    shutil.copytree(compiled, engines)
    (engines / MARKER).unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, engines / name)
    record.unlink()
    return engines


def test_stand_in_prebuilt_engine_dir_is_loaded_not_compiled(tmp_path, checkpoint, record):
    engines = prebuilt(tmp_path, checkpoint, record)
    service = start(config_for(tmp_path, engines, "option.max_input_len=1000\n"))
    info = service.model_info()
    assert info["engine_source"] == "prebuilt" and info["engine_dir"] == str(engines)
    assert info["max_model_len"] == 96 and info["max_input_len"] == 64   # the engine's own
    assert info["tokenizer_dir"] == str(engines)
    (call,) = records(record, "LLM")
    assert call["model"] == str(engines) and "build_config" not in call["kwargs"]
    assert records(record, "build") == [] and len(records(record, "load_engines")) == 1


def test_stand_in_prebuilt_for_another_tp_is_refused(tmp_path, checkpoint, record):
    engines = prebuilt(tmp_path, checkpoint, record)
    with pytest.raises(StartupError, match=r"built for 1 rank.*option.tensor_parallel_degree=1"):
        start(config_for(tmp_path, engines, "option.tensor_parallel_degree=2\n"))
    assert records(record, "LLM") == []


def test_stand_in_prebuilt_missing_rank_file_is_refused(tmp_path, checkpoint, record):
    engines = prebuilt(tmp_path, checkpoint, record)
    (engines / "rank0.engine").unlink()
    with pytest.raises(StartupError, match="lacks rank0.engine"):
        start(config_for(tmp_path, engines))


def test_stand_in_prebuilt_without_tokenizer_is_refused(tmp_path, checkpoint, record):
    engines = prebuilt(tmp_path, checkpoint, record)
    (engines / "tokenizer.json").unlink()
    with pytest.raises(StartupError, match="copy the original checkpoint's tokenizer"):
        start(config_for(tmp_path, engines))


def test_stand_in_checkpoint_without_config_is_refused(tmp_path, checkpoint, record):
    (checkpoint / "config.json").unlink()
    with pytest.raises(StartupError, match="config.json not found"):
        start(config_for(tmp_path, checkpoint))


# The library's absence, in-process (the serve end-to-end test is in test_trtllm_serve.py) -------
def _importer(error: BaseException):
    def importer(name):
        raise error
    return importer


def test_missing_library_is_one_line_naming_package_and_alternative():
    error = ModuleNotFoundError("No module named 'tensorrt_llm'", name="tensorrt_llm")
    with pytest.raises(StartupError) as caught:
        load_runtime(_importer(error))
    message = str(caught.value)
    assert "tensorrt_llm is not installed" in message
    assert "option.rolling_batch=auto" in message and "docker/Dockerfile.trtllm" in message
    assert "\n" not in message


def test_broken_library_names_the_import_error():
    with pytest.raises(StartupError, match=r"cannot be imported \(OSError: libnvinfer.so.10"):
        load_runtime(_importer(OSError("libnvinfer.so.10: cannot open shared object file")))
    dependency = ModuleNotFoundError("No module named 'mpi4py'", name="mpi4py")
    with pytest.raises(StartupError, match="installed but cannot be imported.*mpi4py"):
        load_runtime(_importer(dependency))


def test_library_without_the_llm_api_is_refused():
    import types

    old = types.SimpleNamespace(__version__="0.7.1")
    api = types.SimpleNamespace(LLM=object)
    modules = {"tensorrt_llm": old, "tensorrt_llm.llmapi": api}

    def importer(name):
        if name in modules:
            return modules[name]
        raise ModuleNotFoundError(name=name)
    with pytest.raises(StartupError, match="tensorrt_llm 0.7.1 lacks SamplingParams"):
        load_runtime(importer)
