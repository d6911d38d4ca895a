"""STAND-IN for tensorrt_llm.llmapi.mgmn_worker_node, which in TensorRT-LLM serves rank 0's
MPI session on ranks 1..N-1 until it ends. Here: record that this rank got here, then wait
until the worker group is stopped."""

import time

from .._record import record

if __name__ == "__main__":
    record("worker_node")
    while True:
        time.sleep(3600)
