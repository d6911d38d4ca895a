"""A streaming handler: tokens go out as the generator yields them."""
import json
import time

from djl_python import Input, Output


def _tokens(count, delay):
    for i in range(count):
        time.sleep(delay)
        yield {"token": f"t{i}", "index": i}


def _as_line(item):
    return json.dumps(item) + "\n"


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    request = inputs.get_as_json()
    out = Output()
    out.add_property("content-type", "application/jsonlines")
    out.add_stream_content(_tokens(int(request.get("count", 5)), float(request.get("delay", 0.2))),
                           output_formatter=_as_line)
    return out
