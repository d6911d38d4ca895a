"""engine=DeepSpeed options: what each becomes in deepspeed.init_inference, what is refused and
why, and the step plan rank 0 broadcasts. No model and no ranks here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from container.config.engine_options import OptionError
from container.config.options_deepspeed import DeepSpeedOptions
from container.engines.deepspeed_config import build_setup, choose_kernel_injection
from container.engines.deepspeed_plan import BatchPlan
from container.errors import StartupError


def setup_for(options: dict, tmp_path, device="cpu", model_type="llama", tp=2,
              dtype=torch.float32, transformers_version=4):
    return build_setup(DeepSpeedOptions.from_options(options), tp, tmp_path, device, model_type,
                       dtype, transformers_version)


def test_every_djl_option_reaches_init_inference(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"type": "ds_model", "checkpoints": ["a.pt"]}))
    setup = setup_for({"max_tokens": "2048", "triangular_masking": "false",
                       "return_tuple": "false", "training_mp_size": "4",
                       "checkpoint": "ds.json", "save_mp_checkpoint_path": "shards"},
                      tmp_path, device="cuda", model_type="gpt_neox", tp=4, dtype=torch.float16)
    assert setup.kernel_injection
    assert setup.init_args == {
        "tensor_parallel": {"tp_size": 4}, "enable_cuda_graph": False,
        "triangular_masking": False, "return_tuple": False, "training_mp_size": 4,
        "max_tokens": 2048, "save_mp_checkpoint_path": str(tmp_path / "shards"),
        "checkpoint": str(tmp_path / "ds.json"), "base_dir": str(tmp_path),
        "dtype": torch.float16, "replace_with_kernel_inject": True}
    assert setup.checkpoint_json == tmp_path / "ds.json"


def test_defaults_are_djls(tmp_path):
    setup = setup_for({}, tmp_path)
    assert setup.init_args == {
        "tensor_parallel": {"tp_size": 2}, "enable_cuda_graph": False,
        "triangular_masking": True, "return_tuple": True, "training_mp_size": 1,
        "max_tokens": 1024, "dtype": torch.float32, "replace_with_kernel_inject": False}
    assert setup.mode == "AutoTP" and setup.load_dtype == torch.float32


@pytest.mark.parametrize("device,model_type,injected", [
    ("cpu", "gpt2", False), ("cpu", "llama", False), ("cuda", "llama", False),
    ("cuda", "gpt2", True), ("cuda", "bloom", True), ("cuda", "opt", True)])
def test_kernel_injection_is_decided_by_device_and_architecture(device, model_type, injected):
    chosen, why = choose_kernel_injection(device, model_type, transformers_version=4)
    assert chosen is injected
    assert why.startswith("kernel injection" if injected else "AutoTP")


def test_transformers_5_gets_autotp_or_one_line_when_injection_is_asked_for(tmp_path):
    """DeepSpeed's injected layers return transformers 4's tuples; under transformers 5 the next
    layer gets a tuple (seen on an H200). Chosen automatically: AutoTP, saying why; asked for
    in a DeepSpeed config: refused at start with the fix."""
    chosen, why = choose_kernel_injection("cuda", "opt", transformers_version=5)
    assert not chosen and why.startswith("AutoTP") and "transformers 5.x" in why
    setup = setup_for({}, tmp_path, device="cuda", model_type="opt", dtype=torch.float16,
                      transformers_version=5)
    assert setup.mode == "AutoTP" and setup.init_args["replace_with_kernel_inject"] is False
    (tmp_path / "inject.json").write_text(json.dumps({"replace_with_kernel_inject": True}))
    with pytest.raises(StartupError, match="set it to false .AutoTP., or build the image with "
                                           "transformers<5"):
        setup_for({"deepspeed_config_path": "inject.json"}, tmp_path, device="cuda",
                  model_type="opt", dtype=torch.float16, transformers_version=5)
    with pytest.raises(StartupError, match="dynamic_int8 runs on DeepSpeed's int8 CUDA kernels"):
        setup_for({"quantize": "dynamic_int8"}, tmp_path, device="cuda", model_type="opt",
                  dtype=torch.float16, transformers_version=5)


def test_deepspeed_config_path_replaces_the_options(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"max_tokens": 77, "dtype": "bf16"}))
    setup = setup_for({"deepspeed_config_path": "ds.json", "max_tokens": "4096"}, tmp_path)
    assert setup.init_args == {"max_tokens": 77, "dtype": "bf16",
                               "tensor_parallel": {"tp_size": 2},
                               "replace_with_kernel_inject": False}
    assert setup.load_dtype == torch.bfloat16


def test_deepspeed_config_path_must_agree_on_the_degree(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"tensor_parallel": {"tp_size": 4}}))
    with pytest.raises(StartupError, match="tp_size=4 but the server starts 2 rank"):
        setup_for({"deepspeed_config_path": "ds.json"}, tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StartupError, match="is not valid JSON"):
        setup_for({"deepspeed_config_path": "bad.json"}, tmp_path)
    with pytest.raises(StartupError, match="cannot read it"):
        setup_for({"deepspeed_config_path": "missing.json"}, tmp_path)


def test_dynamic_int8_needs_kernel_injection(tmp_path):
    with pytest.raises(StartupError, match="dynamic_int8 runs on DeepSpeed's int8 CUDA kernels.*"
                                           "CUDA kernels and this is a CPU"):
        setup_for({"quantize": "dynamic_int8"}, tmp_path)
    with pytest.raises(StartupError, match="not llama"):
        setup_for({"quantize": "dynamic_int8"}, tmp_path, device="cuda", dtype=torch.float16)
    setup = setup_for({"quantize": "dynamic_int8"}, tmp_path, device="cuda", model_type="gptj",
                      dtype=torch.float16)
    assert setup.init_args["dtype"] == torch.int8 and setup.load_dtype == torch.float16


def test_what_autotp_cannot_do_is_refused(tmp_path):
    with pytest.raises(StartupError, match="only kernel injection can load again"):
        setup_for({"save_mp_checkpoint_path": "out"}, tmp_path)
    (tmp_path / "tp.json").write_text(json.dumps({
        "type": "ds_model", "parallelization": "tp", "checkpoints": {"tp": ["x.pt"]}}))
    with pytest.raises(StartupError, match="parallelization=tp"):
        setup_for({"checkpoint": "tp.json"}, tmp_path)
    (tmp_path / "inject.json").write_text(json.dumps({"replace_with_kernel_inject": True}))
    with pytest.raises(StartupError, match="kernel injection needs a CUDA GPU"):
        setup_for({"deepspeed_config_path": "inject.json"}, tmp_path)
    (tmp_path / "graph.json").write_text(json.dumps({"enable_cuda_graph": True}))
    with pytest.raises(StartupError, match="enable_cuda_graph"):
        setup_for({"deepspeed_config_path": "graph.json"}, tmp_path)
    (tmp_path / "int8.json").write_text(json.dumps({"dtype": "int8"}))
    with pytest.raises(StartupError, match="int8"):
        setup_for({"deepspeed_config_path": "int8.json"}, tmp_path)


@pytest.mark.parametrize("options,message", [
    ({"quantize": "smoothquant"}, "released deepspeed has no SmoothQuant"),
    ({"quantize": "awq"}, "allowed with engine=DeepSpeed: dynamic_int8, smoothquant"),
    ({"quantize": "dynamic_int8", "dtype": "fp32"}, "needs option.dtype=fp16 or bf16"),
    ({"enable_cuda_graph": "true"}, "changes shapes every step"),
    ({"max_tokens": "8"}, "an integer >= 16"),
])
def test_options_refused_whatever_the_hardware(options, message):
    with pytest.raises(OptionError, match=message):
        DeepSpeedOptions.from_options(options)


def test_batch_plan_round_trip():
    plan = BatchPlan([2, 0], [11, 12], [[5, 6, 7], [8]])
    again = BatchPlan.from_data(np.asarray(plan.data))
    assert again == plan
    assert BatchPlan.from_data(BatchPlan([], [], []).data).is_empty
    with pytest.raises(ValueError):
        BatchPlan.from_data(np.concatenate([plan.data, [1]]))
