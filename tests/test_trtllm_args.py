"""serving.properties -> TensorRT-LLM arguments: options, LMI's defaults, refused combinations.

Pure functions: no TensorRT-LLM (real or stand-in) is imported here.
"""

from __future__ import annotations

import pytest

from container.config.engine_options import OptionError
from container.config.loader import load_config
from container.config.options_trtllm import TrtLlmOptions
from container.engines.trtllm_args import (LMI_DEFAULT_MAX_NUM_TOKENS, default_max_num_tokens,
                                           translate)
from container.errors import StartupError

SEED_001 = {  # the benchmark serving.properties of seed article 001, plus rolling_batch=trtllm
    "rolling_batch": "trtllm", "use_custom_all_reduce": "true", "model_id": "s3://bucket/llama",
    "tensor_parallel_degree": "8", "output_formatter": "json", "max_rolling_batch_size": "64",
    "model_loading_timeout": "3600"}


def args_for(tp: int = 1, **options):
    return translate(TrtLlmOptions.from_options({"rolling_batch": "trtllm", **options}), tp)


def test_lmi_defaults():
    args = args_for()
    assert args.build == {"max_input_len": 1024, "max_seq_len": 1024 + 512,
                          "max_batch_size": 256, "max_num_tokens": LMI_DEFAULT_MAX_NUM_TOKENS,
                          "max_beam_width": 1}
    assert args.kv_cache == {"free_gpu_memory_fraction": 0.95, "enable_block_reuse": False}
    assert args.scheduler == {"capacity_scheduler_policy": "MAX_UTILIZATION"}
    assert args.llm == {"tensor_parallel_size": 1, "dtype": "auto", "trust_remote_code": False,
                        "skip_tokenizer_init": True}
    assert args.quant is None and args.calib is None and args.notes == []


def test_seed_001_benchmark_properties():
    args = args_for(tp=8, **SEED_001)
    assert args.llm["tensor_parallel_size"] == 8
    assert args.build["max_batch_size"] == 64
    assert args.build["max_num_tokens"] == LMI_DEFAULT_MAX_NUM_TOKENS   # 64 x 1536 is larger
    assert len(args.notes) == 1 and "custom all-reduce" in args.notes[0]


def test_every_size_option_reaches_the_build_config():
    args = args_for(max_input_len="2048", max_output_len="256", max_num_tokens="4096",
                    max_rolling_batch_size="16", dtype="bf16", revision="v2",
                    trust_remote_code="true")
    assert args.build == {"max_input_len": 2048, "max_seq_len": 2304, "max_batch_size": 16,
                          "max_num_tokens": 4096, "max_beam_width": 1}
    assert args.llm["dtype"] == "bfloat16"
    assert args.llm["revision"] == "v2" and args.llm["trust_remote_code"] is True


def test_runtime_options_reach_kv_cache_and_scheduler():
    args = args_for(kv_cache_free_gpu_mem_fraction="0.5", enable_kv_cache_reuse="true",
                    batch_scheduler_policy="guaranteed_no_evict")
    assert args.kv_cache == {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": True}
    assert args.scheduler == {"capacity_scheduler_policy": "GUARANTEED_NO_EVICT"}


@pytest.mark.parametrize("batch, max_input, max_output, expected", [
    (256, 1024, 512, 16384),     # LMI's default fits
    (4, 1024, 512, 6144),        # capped at what 4 sequences of 1536 tokens hold
    (1, 32768, 512, 32768),      # raised above 16384 to hold one whole prompt
    (1, 100, 20, 120),
])
def test_default_max_num_tokens(batch, max_input, max_output, expected):
    assert default_max_num_tokens(batch, max_input, max_input + max_output) == expected
    args = args_for(max_rolling_batch_size=str(batch), max_input_len=str(max_input),
                    max_output_len=str(max_output))
    assert args.build["max_num_tokens"] == expected
    # what the default yields is itself a valid explicit setting
    TrtLlmOptions.from_options({"rolling_batch": "trtllm", "max_num_tokens": str(expected),
                                "max_rolling_batch_size": str(batch),
                                "max_input_len": str(max_input),
                                "max_output_len": str(max_output)})


@pytest.mark.parametrize("options, algo", [
    ({"quantize": "awq"}, {"quant_algo": "W4A16_AWQ", "group_size": 128}),
    ({"quantize": "AWQ", "awq_block_size": "64"}, {"quant_algo": "W4A16_AWQ", "group_size": 64}),
    ({"quantize": "fp8"}, {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}),
    ({"quantize": "smoothquant"},
     {"quant_algo": "W8A8_SQ_PER_TENSOR_PLUGIN", "smoothquant_val": 0.8}),
    ({"quantize": "smoothquant", "smoothquant_per_token": "true", "smoothquant_alpha": "0.5"},
     {"quant_algo": "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN", "smoothquant_val": 0.5}),
    ({"quantize": "smoothquant", "smoothquant_per_channel": "true"},
     {"quant_algo": "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN", "smoothquant_val": 0.8}),
    ({"quantize": "smoothquant", "smoothquant_per_channel": "true",
      "smoothquant_per_token": "true"},
     {"quant_algo": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "smoothquant_val": 0.8}),
])
def test_quantization_recipes(options, algo):
    args = args_for(**options)
    assert args.quant == algo
    # LMI counts samples (512), TensorRT-LLM counts batches of calib_batch_size (32)
    assert args.calib == {"calib_batches": 16, "calib_batch_size": 32}
    assert any("calib_dataset" in note for note in args.notes)


def test_calibration_options():
    args = args_for(quantize="fp8", calib_size="100", calib_batch_size="8",
                    calib_dataset="/data/calib")
    assert args.calib == {"calib_batches": 13, "calib_batch_size": 8,
                          "calib_dataset": "/data/calib"}
    assert args.notes == []


def test_engine_identity_tracks_what_is_compiled_in():
    base = args_for().engine_identity()
    assert args_for(max_input_len="2048").engine_identity() != base
    assert args_for(quantize="fp8").engine_identity() != base
    assert args_for(tp=2).engine_identity() != base
    # runtime-only options leave the compiled engine alone
    assert args_for(kv_cache_free_gpu_mem_fraction="0.5", enable_kv_cache_reuse="true",
                    batch_scheduler_policy="guaranteed_no_evict",
                    use_custom_all_reduce="true").engine_identity() == base


@pytest.mark.parametrize("options, key, fragment", [
    ({"rolling_batch": "disable"}, "rolling_batch", "option.rolling_batch=trtllm"),
    ({"rolling_batch": "deepspeed"}, "rolling_batch", "no other mode"),
    ({"quantize": "gptq"}, "quantize", "awq, smoothquant, fp8"),
    ({"quantize": "dynamic_int8"}, "quantize", "awq, smoothquant, fp8"),
    ({"quantize": "awq", "dtype": "fp32"}, "quantize", "option.dtype=fp16, bf16 or auto"),
    ({"awq_block_size": "100"}, "awq_block_size", "64, 128"),
    ({"max_num_tokens": "512"}, "max_num_tokens", "option.max_input_len=1024"),
    ({"max_num_tokens": "2048", "max_rolling_batch_size": "4096"}, "max_num_tokens",
     "option.max_rolling_batch_size=4096"),
    ({"max_num_tokens": "100000", "max_rolling_batch_size": "8"}, "max_num_tokens", "= 12288"),
    ({"max_input_len": "0"}, "max_input_len", "allowed"),
    ({"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy",
     "max_utilization, guaranteed_no_evict"),
    ({"kv_cache_free_gpu_mem_fraction": "1.5"}, "kv_cache_free_gpu_mem_fraction", "at most 1"),
])
def test_invalid_combinations_are_refused(options, key, fragment):
    options = {"rolling_batch": "trtllm", **options}
    with pytest.raises(OptionError) as caught:
        TrtLlmOptions.from_options(options)
    assert caught.value.name == key
    assert fragment in str(caught.value)


def _model_dir(tmp_path, properties: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "serving.properties").write_text(properties)
    return tmp_path


def test_load_config_selects_trtllm_with_mpirun(tmp_path):
    config = load_config(_model_dir(tmp_path, "engine=MPI\noption.rolling_batch=trtllm\n"
                                              "option.model_id=/models/llama\n"
                                              "option.tensor_parallel_degree=2\n"), {})
    assert (config.engine, config.engine_kind, config.launcher) == ("MPI", "trtllm", "mpirun")
    assert config.tensor_parallel_degree == 2


def test_load_config_refuses_bad_trtllm_options_in_one_line(tmp_path):
    d = _model_dir(tmp_path, "engine=MPI\noption.rolling_batch=trtllm\noption.model_id=/m\n"
                             "option.quantize=gptq\n")
    with pytest.raises(StartupError) as caught:
        load_config(d, {})
    message = str(caught.value)
    assert "option.quantize" in message and "serving.properties" in message
    assert "awq, smoothquant, fp8" in message and "\n" not in message


def test_environment_values_are_validated_with_their_source(tmp_path):
    d = _model_dir(tmp_path, "engine=MPI\noption.rolling_batch=trtllm\noption.model_id=/m\n")
    with pytest.raises(StartupError, match="environment variable OPTION_MAX_NUM_TOKENS"):
        load_config(d, {"OPTION_MAX_INPUT_LEN": "4096", "OPTION_MAX_NUM_TOKENS": "1000"})
    config = load_config(d, {"OPTION_MAX_INPUT_LEN": "4096", "OPTION_MAX_OUTPUT_LEN": "64"})
    args = translate(TrtLlmOptions.from_options(config.options), config.tensor_parallel_degree)
    assert args.build["max_input_len"] == 4096 and args.build["max_seq_len"] == 4160
