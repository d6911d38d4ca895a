"""Structured output on the real SmolLM2 (SERVE_DEFAULT_MODEL, or `make default-model`):
many json_schema requests of varied schemas, concurrently, each answer validated by
jsonschema (numbers are bounded integers: an unbounded "number" lets a small model write
digits until max_tokens); and a grammar-free request in the same batch unchanged (transformers' greedy)."""

from __future__ import annotations

import concurrent.futures as futures
import json

import pytest
import requests

from tiny_models import default_model_dir, reference_greedy

SCHEMAS = [
    ("a person", {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0,
                                                             "maximum": 130}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("the weather in Paris", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]},
        "temperature_c": {"type": "integer", "minimum": -60, "maximum": 60}},
        "required": ["city", "condition", "temperature_c"], "additionalProperties": False}),
    ("three prime numbers", {"type": "array", "items": {"type": "integer"}, "minItems": 3,
                             "maxItems": 3}),
    ("a book", {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 40},
        "authors": {"type": "array", "items": {"type": "string", "maxLength": 30},
                    "minItems": 1, "maxItems": 2},
        "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
        "in_print": {"type": "boolean"}},
        "required": ["title", "authors", "year", "in_print"], "additionalProperties": False}),
    ("a colour as RGB", {"type": "object", "properties": {
        "r": {"type": "integer", "minimum": 0, "maximum": 255},
        "g": {"type": "integer", "minimum": 0, "maximum": 255},
        "b": {"type": "integer", "minimum": 0, "maximum": 255}},
        "required": ["r", "g", "b"], "additionalProperties": False}),
    ("a yes or no answer: is the sky blue?", {"type": "object", "properties": {
        "answer": {"enum": ["yes", "no"]}, "confidence": {"enum": ["low", "medium",
                                                                    "high"]}},
        "required": ["answer"], "additionalProperties": False}),
    ("a date", {"type": "object", "properties": {
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
        "required": ["date"], "additionalProperties": False}),
    ("a shopping list", {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"item": {"type": "string", "maxLength": 20},
                                         "qty": {"type": "integer", "minimum": 1}},
        "required": ["item", "qty"], "additionalProperties": False}, "maxItems": 3}},
        "required": ["items"], "additionalProperties": False}),
]


@pytest.mark.slow
def test_smollm2_json_schema_answers_validate(serve_factory):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("xgrammar")
    model_dir = default_model_dir()
    assert model_dir is not None, "run `make default-model` first"
    server = serve_factory(model_dir).start(timeout=180)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def ask(index):
        what, schema = SCHEMAS[index % len(SCHEMAS)]
        body = {"messages": [{"role": "user", "content": f"Reply in JSON: {what}."}],
                "max_tokens": 120, "temperature": 0.7 if index >= len(SCHEMAS) else 0,
                "seed": index, "response_format": {"type": "json_schema", "json_schema": {
                    "name": "answer", "schema": schema, "strict": True}}}
        response = requests.post(server.url("/v1/chat/completions"), json=body, timeout=600)
        assert response.status_code == 200, response.text
        return schema, response.json()["choices"][0]

    def free():
        response = requests.post(server.url("/invocations"), json={
            "inputs": "The capital of France is", "parameters": {
                "max_new_tokens": 10, "details": True, "ignore_eos": True}}, timeout=600)
        return [t["id"] for t in response.json()["details"]["tokens"]]

    with futures.ThreadPoolExecutor(8) as pool:
        plain = pool.submit(free)
        answers = list(pool.map(ask, range(2 * len(SCHEMAS))))
        plain_ids = plain.result()
    for schema, choice in answers:
        assert choice["finish_reason"] == "stop", choice
        try:
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        except jsonschema.ValidationError:
            print([line for line in server.output if "grammar" in line or "step" in line][:20])
            raise
    expected = reference_greedy(model_dir, [tokenizer("The capital of France is")["input_ids"]],
                                10)
    assert plain_ids == expected[0]
