"""Quantized serving: FP8 weights (quantized at load or read from an FP8 checkpoint) and the
FP8 KV cache. `fp8.py` is the numerics and the matmuls, `layer.py` turns a model's linear
layers into their FP8 variant, `checkpoint.py` reads a checkpoint's quantization_config,
`plan.py` decides from the options and the checkpoint what is quantized."""
