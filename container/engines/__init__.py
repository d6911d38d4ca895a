"""Engines from other libraries behind the shared GenerationEngine contract.

Each adapter turns serving.properties options into its library's arguments and drives the
library through container/engine/interface.py, so the front end, formatters and errors stay
shared. trtllm.py: TensorRT-LLM (engine=MPI, option.rolling_batch=trtllm).
"""
