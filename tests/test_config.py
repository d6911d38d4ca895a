"""Configuration: environment mapping, precedence, validation and engine selection."""
from pathlib import Path

import pytest

from container.config import keys
from container.config.loader import load_config
from container.errors import StartupError

REPO = Path(__file__).resolve().parent.parent


def model_dir(tmp_path, properties="", model_py=False, config_json=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if properties:
        (tmp_path / "serving.properties").write_text(properties)
    if model_py:
        (tmp_path / "model.py").write_text("def handle(inputs):\n    return None\n")
    if config_json:
        (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_option_environment_variables_map_to_options(tmp_path):
    cfg = load_config(model_dir(tmp_path, model_py=True), {
        "OPTION_CUSTOM_OPTION": "x", "OPTION_ENTRYPOINT": "model.py", "SERVING_JOB_QUEUE_SIZE": "7",
        "SERVING_BATCH_SIZE": "3"})
    assert cfg.options["custom_option"] == "x"
    assert cfg.options["entryPoint"] == "model.py"
    assert cfg.setting("job_queue_size") == 7
    assert cfg.setting("batch_size") == 3


def test_file_wins_over_environment(tmp_path):
    d = model_dir(tmp_path, "job_queue_size=5\noption.custom=file\n", model_py=True)
    cfg = load_config(d, {"SERVING_JOB_QUEUE_SIZE": "9", "OPTION_CUSTOM": "env"})
    assert cfg.setting("job_queue_size") == 5
    assert cfg.options["custom"] == "file"
    assert "serving.properties" in cfg.sources["job_queue_size"]


def test_sagemaker_and_tgi_names(tmp_path):
    cfg = load_config(model_dir(tmp_path, model_py=True), {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "33",
        "SAGEMAKER_STARTUP_TIMEOUT": "44", "MAX_CONCURRENT_REQUESTS": "12",
        "MAX_BATCH_SIZE": "8", "HF_MODEL_TRUST_REMOTE_CODE": "true"})
    assert cfg.setting("max_request_size") == 2 * 1024 * 1024
    assert cfg.setting("predict_timeout") == 33
    assert cfg.setting("model_loading_timeout") == 44
    assert cfg.setting("job_queue_size") == 12
    assert cfg.options["max_rolling_batch_size"] == "8"
    assert cfg.options["trust_remote_code"] == "true"


def test_direct_names_beat_aliases(tmp_path):
    cfg = load_config(model_dir(tmp_path, model_py=True), {
        "MAX_CONCURRENT_REQUESTS": "12", "SERVING_JOB_QUEUE_SIZE": "3"})
    assert cfg.setting("job_queue_size") == 3


def test_hf_model_id_stands_in_for_a_missing_model_dir(tmp_path):
    cfg = load_config(tmp_path / "absent", {"HF_MODEL_ID": "/some/where", "HF_REVISION": "r1"})
    assert cfg.engine_kind == "native"
    assert cfg.options["model_id"] == "/some/where"
    assert cfg.options["revision"] == "r1"


@pytest.mark.parametrize("properties, fragment", [
    ("job_queue_size=zero", "job_queue_size"),
    ("batch_size=0", "allowed: an integer from 1"),
    ("option.dtype=int3", "allowed: auto, fp32, fp16, bf16"),
    ("option.rolling_batch=magic", "option.rolling_batch"),
    ("option.tensor_parallel_degree=two", "positive integer or max"),
    ("predict_timeout=-5", "predict_timeout"),
])
def test_invalid_values_name_key_value_and_allowed(tmp_path, properties, fragment):
    with pytest.raises(StartupError) as info:
        load_config(model_dir(tmp_path, properties, model_py=True), {})
    message = str(info.value)
    assert fragment in message
    assert "serving.properties" in message       # where the bad value came from
    assert "\n" not in message


def test_invalid_environment_value_names_the_variable(tmp_path):
    with pytest.raises(StartupError, match="SERVING_JOB_QUEUE_SIZE"):
        load_config(model_dir(tmp_path, model_py=True), {"SERVING_JOB_QUEUE_SIZE": "-1"})


def test_native_engine_options_are_validated(tmp_path):
    d = model_dir(tmp_path, "option.model_id=/x\noption.max_rolling_batch_size=0\n")
    with pytest.raises(StartupError, match="option.max_rolling_batch_size"):
        load_config(d, {})


def test_engine_selection(tmp_path):
    assert load_config(model_dir(tmp_path / "a", model_py=True), {}).engine_kind == "handler"
    assert load_config(model_dir(tmp_path / "b", config_json=True), {}).engine_kind == "native"
    native = load_config(model_dir(tmp_path / "c", "option.model_id=/m\n"), {})
    assert (native.engine_kind, native.engine, native.launcher) == ("native", "Python", "python")
    with_handler = load_config(model_dir(tmp_path / "d", "option.model_id=/m\n", model_py=True), {})
    assert with_handler.engine_kind == "handler"
    aliased = load_config(model_dir(tmp_path / "e", "option.model_id=/m\noption.rolling_batch=vllm\n"), {})
    assert aliased.engine_kind == "native"


def test_nothing_to_serve_is_one_clear_line(tmp_path):
    with pytest.raises(StartupError, match="nothing to serve"):
        load_config(model_dir(tmp_path), {})


def test_unavailable_engine_is_refused(tmp_path):
    with pytest.raises(StartupError, match="engine=OnnxRuntime .* not available"):
        load_config(model_dir(tmp_path, "engine=OnnxRuntime\n", model_py=True), {})


def test_tensor_parallel_max_uses_visible_gpus(tmp_path):
    d = model_dir(tmp_path, "option.model_id=/m\noption.tensor_parallel_degree=max\n")
    assert load_config(d, {"SM_NUM_GPUS": "0"}).tensor_parallel_degree == 1
    with pytest.raises(StartupError, match="only 2 GPU"):
        load_config(model_dir(tmp_path / "x", "option.model_id=/m\noption.tensor_parallel_degree=4\n"),
                    {"SM_NUM_GPUS": "2"})


def test_example_file_documents_every_key():
    from container.config.example import render

    example = (REPO / "serving.properties.example").read_text()
    assert example == render(), ("serving.properties.example is out of date: run "
                                 "python -m container.config.example > serving.properties.example")
    for key in keys.REGISTRY.values():
        assert f"# {key.name}=" in example
