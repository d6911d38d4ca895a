"""Echo handler with dynamic batching, written only against the djl_python API."""
import os
import time

from djl_python import Input, Output

INIT = {}


def handle(inputs: Input):
    if inputs.is_empty():
        INIT.update(inputs.get_properties())       # the first call carries the options
        return None
    outputs = Output()
    batch = inputs.get_batches()
    for index, item in enumerate(batch):
        data = item.get_data()
        if isinstance(data, dict) and isinstance(data.get("sleep"), (int, float)):
            time.sleep(min(float(data["sleep"]), 5.0))   # a slow model, for load tests
        reply = {
            "echo": data,
            "batch_size": len(batch),
            "init_model_dir": INIT.get("model_dir"),
            "init_option": INIT.get("custom_option"),
            "init_tp": INIT.get("tensor_parallel_degree"),
            "tenant": item.get_property("tenant"),
            "content_type": item.get_property("CONTENT-TYPE"),
            "pid": os.getpid(),
        }
        if inputs.is_batch():
            outputs.add_as_json(reply, batch_index=index)
        else:
            outputs.add_as_json(reply)
    outputs.add_property("content-type", "application/json")
    # DJL's custom-metric line on stdout: the server turns it into a Prometheus sample
    print(f"[METRICS]EchoBatchSize.Count:{len(batch)}|#Model:echo", flush=True)
    return outputs
