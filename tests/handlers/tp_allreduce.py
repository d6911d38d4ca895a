"""A DJL DeepSpeed-style handler for tensor parallelism: every rank runs handle(); ranks talk
through torch.distributed; only rank 0's output reaches the client."""
import os

import torch
import torch.distributed as dist

from djl_python import Input, Output

STATE = {}


def handle(inputs: Input):
    if inputs.is_empty():
        STATE["rank"] = int(os.environ["LOCAL_RANK"])
        STATE["tp"] = int(os.environ["TENSOR_PARALLEL_DEGREE"])
        STATE["prop_tp"] = inputs.get_property("tensor_parallel_degree")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return None
    value = torch.tensor([float(inputs.get_as_json()["x"]) * (STATE["rank"] + 1)])
    dist.all_reduce(value)                     # needs every rank in handle() at the same time
    return Output().add_as_json({"rank": STATE["rank"], "tp": STATE["tp"],
                                 "prop_tp": STATE["prop_tp"], "sum": value.item()})
