"""Answers with the Input exactly as the handler sees it: every content entry in order (text,
or its byte length for binary values), and the properties the test asks about."""

import json

from djl_python import Input, Output


def _describe(inputs: Input) -> dict:
    entries = []
    for key, value in inputs.get_content():
        value = bytes(value)
        try:
            entries.append([key, value.decode("utf-8")])
        except UnicodeDecodeError:
            entries.append([key, {"bytes": len(value), "first": value[:4].hex()}])
    return {"entries": entries, "properties": inputs.get_properties(),
            "function": inputs.get_function_name()}


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return Output().add_as_json(_describe(inputs)).add_property("content-type",
                                                                "application/json")


def shout(inputs: Input):
    """A second function, reachable only where the operator allows handler overrides."""
    text = inputs.get_as_string().upper()
    return Output().add(text).add_property("content-type", "text/plain")
