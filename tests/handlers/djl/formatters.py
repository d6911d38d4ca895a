"""LMI custom formatters beside a built-in LLM: no handler, only the two decorated functions."""

import json

from djl_python.input_parser import input_formatter
from djl_python.output_formatter import output_formatter


@input_formatter
def custom_input(decoded_payload: dict, tokenizer=None, **kwargs) -> dict:
    if "question" not in decoded_payload:
        raise ValueError("send {'question': ..., 'length': n}")
    return {"inputs": decoded_payload["question"],
            "parameters": {"max_new_tokens": int(decoded_payload.get("length", 4)),
                           "details": True}}


@output_formatter
def custom_output(request_output) -> str:
    sequence = request_output.sequences[request_output.best_sequence_index]
    token, first, last = sequence.get_next_token()
    line = {"id": token.id, "first": first}
    if last:
        line["finish"] = sequence.finish_reason
    return json.dumps(line) + "\n"
