"""Property tests of every parser that reads what users send or write.

The property throughout: a parser returns a valid result or raises its documented error —
ServingError (HTTP 400, the field named) for request bodies, StartupError (one line naming the
key) for configuration, ValueError naming what is allowed for a key's value,
PropertiesSyntaxError for a malformed serving.properties — and never any other exception.
Deterministic (derandomize=True, no example database).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from container.config import keys
from container.config.loader import ServingConfig, load_config
from container.config.properties import PropertiesSyntaxError, parse_properties
from container.errors import ServingError, StartupError
from container.frontend.http_utils import parse_custom_attributes
from container.frontend.llm_routes import _lmi_sampling, _openai_sampling
from container.frontend.schemas import (MAX_SEED, ChatCompletionRequest, CompletionRequest,
                                        LmiRequest, parse_json_body, validate)
from container.workers import protocol


def examples(count: int):
    return settings(max_examples=count, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# JSON values as json.loads gives them, and some it never gives (NaN, huge floats) ----------------
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.floats(), st.sampled_from([0, -1, 1, 1e309, -1e309, 2**63, 2**64, MAX_SEED, 1e-320]),
    st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=8)


def fields(names: list[str]) -> st.SearchStrategy[dict]:
    """Objects with any subset of these fields (and sometimes others), any values."""
    return st.fixed_dictionaries({}, optional={name: json_value for name in names}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=8), json_value, max_size=2).map(
            lambda extra: {**extra, **d}))


LMI_PARAMETERS = ["max_new_tokens", "max_tokens", "do_sample", "temperature", "top_k", "top_p",
                  "repetition_penalty", "seed", "stop_sequences", "stop", "return_full_text",
                  "details", "ignore_eos", "truncate"]
OPENAI_FIELDS = ["model", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop",
                 "seed", "frequency_penalty", "presence_penalty", "repetition_penalty",
                 "ignore_eos", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs",
                 "echo"]

lmi_payload = st.one_of(
    json_value,
    st.fixed_dictionaries({"inputs": st.one_of(st.text(max_size=20), json_value)}, optional={
        "parameters": st.one_of(fields(LMI_PARAMETERS), json_value),
        "stream": json_value}))
chat_payload = st.one_of(json_value, fields(OPENAI_FIELDS).flatmap(lambda d: st.fixed_dictionaries({
    "messages": st.one_of(json_value, st.lists(st.one_of(json_value, fields(["role", "content"]),
                                                         st.fixed_dictionaries({
                                                             "role": st.sampled_from(
                                                                 ["user", "system", "assistant",
                                                                  "tool", "developer"]),
                                                             "content": json_value})),
                                               max_size=3))}).map(lambda m: {**d, **m})))
completion_payload = st.one_of(json_value, fields(OPENAI_FIELDS).flatmap(
    lambda d: st.fixed_dictionaries({"prompt": st.one_of(
        st.text(max_size=20), st.lists(st.integers(-5, 2**64), max_size=4),
        st.lists(st.lists(st.integers(-5, 900), max_size=3), max_size=3), json_value)}).map(
        lambda p: {**d, **p})))


def assert_bad_request(error: ServingError) -> None:
    assert error.code == 400 and error.type == "BadRequest"
    field, colon, what = error.message.partition(": ")
    assert colon and field and what, error.message          # "field: what is wrong"
    assert "Traceback" not in error.message


class VocabContext:
    """The one thing the sampling builders read from the served model: its vocabulary size."""
    info = {"vocab_size": 50_000}


def encodable(sampling: protocol.SamplingParams) -> None:
    """What the front end would send the engine: finite, in range, msgpack-encodable."""
    protocol.encode(protocol.GenerateRequest("id", 0, [1, 2], sampling, 0.0))
    assert 1 <= sampling.max_new_tokens <= 1_000_000
    assert math.isfinite(sampling.temperature) and sampling.temperature >= 0
    assert math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1
    assert math.isfinite(sampling.repetition_penalty) and sampling.repetition_penalty > 0
    assert 0 <= sampling.top_k <= 1_000_000
    assert sampling.seed is None or 0 <= sampling.seed <= MAX_SEED


# request bodies -----------------------------------------------------------------------------------
@examples(700)
@given(lmi_payload)
def test_lmi_payloads_validate_or_name_the_field(payload):
    try:
        request = validate(LmiRequest, payload)
    except ServingError as error:
        assert_bad_request(error)
        return
    params = request.parameters
    assert isinstance(request.inputs, str) or (request.inputs and all(
        isinstance(i, str) for i in request.inputs))
    assert all(s and isinstance(s, str) for s in params.stop_sequences)
    assert len(params.stop_sequences) <= 16
    encodable(_lmi_sampling(VocabContext(), params))


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """The front end's tokenizer over tiny_models' trained BPE and chat template."""
    import tempfile

    from container.text.tokenizer import TextTokenizer
    from tiny_models import build_tokenizer

    directory = Path(tempfile.mkdtemp(prefix="fuzz-tokenizer-"))
    build_tokenizer(directory)
    return TextTokenizer(directory)


@examples(500)
@given(chat_payload)
def test_chat_payloads_validate_render_and_encode_or_name_the_field(payload):
    """As the chat route does: validate, template dicts, chat template, tokens."""
    try:
        request = validate(ChatCompletionRequest, payload)
        try:
            messages = [m.template_dict() for m in request.messages]
        except ValueError as exc:           # the route answers 400 "messages: ..."
            assert "content" in str(exc)
            return
        text = tiny_tokenizer().apply_chat_template(messages)
        ids = tiny_tokenizer().encode(text, add_special_tokens=False)
    except ServingError as error:
        assert_bad_request(error)
        return
    assert isinstance(text, str) and all(isinstance(i, int) for i in ids)
    assert request.n >= 1 and request.top_logprobs >= 0
    max_tokens = request.max_completion_tokens or request.max_tokens or 1
    encodable(_openai_sampling(VocabContext(), request, max_tokens, request.logprobs))


@examples(500)
@given(completion_payload)
def test_completion_payloads_validate_or_name_the_field(payload):
    try:
        request = validate(CompletionRequest, payload)
    except ServingError as error:
        assert_bad_request(error)
        return
    prompt = request.prompt
    assert isinstance(prompt, str) or isinstance(prompt, list) and prompt
    assert isinstance(request.max_tokens, int)          # null means the default, 16
    encodable(_openai_sampling(VocabContext(), request, request.max_tokens,
                                request.logprobs is not None))


nested = st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * (depth % 3))


@examples(800)
@given(st.one_of(st.binary(max_size=300), nested,
                 json_value.map(lambda v: json.dumps(v).encode("utf-8")),
                 json_value.map(lambda v: json.dumps(v).encode("utf-16"))))
def test_json_bodies_parse_or_are_400(raw):
    try:
        value = parse_json_body(raw)
    except ServingError as error:
        assert error.code == 400 and error.message
        return
    assert json.loads(json.dumps(value)) == value or value != value      # plain JSON data


# the custom-attributes header ---------------------------------------------------------------------
latin1 = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=200)
attribute_key = st.text(st.characters(max_codepoint=255, exclude_characters=";=\r\n"),
                        min_size=1, max_size=12).map(str.strip).filter(bool)
attribute_value = st.text(st.characters(max_codepoint=255, exclude_characters=";\r\n"),
                          max_size=12).map(str.strip)


@examples(800)
@given(st.one_of(st.none(), latin1))
def test_custom_attributes_parse_any_header(header):
    attributes = parse_custom_attributes(header)
    for key, value in attributes.items():
        assert key and key == key.strip() and ";" not in key and "=" not in key
        assert isinstance(value, str) and ";" not in value and value == value.strip()


@examples(500)
@given(st.dictionaries(attribute_key, attribute_value, max_size=6), st.sampled_from(["; ", ";"]))
def test_custom_attributes_round_trip(attributes, separator):
    header = separator.join(f"{key}={value}" for key, value in attributes.items())
    assert parse_custom_attributes(header) == attributes


# serving.properties -------------------------------------------------------------------------------
def java_escape(text: str, is_key: bool) -> str:
    """How a .properties writer escapes text, so that a reader gets it back."""
    out = []
    for index, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char in "\t\n\r\f":
            out.append("\\" + {"\t": "t", "\n": "n", "\r": "r", "\f": "f"}[char])
        elif char in "=:#!" or (char == " " and (is_key or index == 0)):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


property_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@examples(1000)
@given(st.text(max_size=300))
def test_properties_parse_any_text(text):
    try:
        parsed = parse_properties(text)
    except PropertiesSyntaxError as error:
        assert str(error).startswith("line ")
        return
    for key, value in parsed.items():
        assert key and key == key.strip() and value == value.strip()


@examples(800)
@given(st.lists(st.tuples(property_text, property_text), max_size=6),
       st.sampled_from(["=", ":", " = ", "\t", " : "]), st.sampled_from(["\n", "\r\n", "\r"]))
@example([("k", "a\x1eb\u2028c\x85d\x0be")], "=", "\n")     # Java breaks lines at \r, \n only
def test_properties_round_trip(pairs, separator, newline):
    """Keys and values written with Java's escapes read back as written (values trimmed)."""
    expected = {}
    for key, value in pairs:
        if key.strip():
            expected[key.strip()] = value.strip()
    text = newline.join(f"{java_escape(key.strip(), True)}{separator}"
                        f"{java_escape(value.strip(), False)}" for key, value in expected.items())
    assert parse_properties(text) == expected


KEY_NAMES = sorted(key.name for key in keys.REGISTRY.values()) + [
    "option.unknown_thing", "OPTION.DTYPE", "option.entrypoint", "bogus", "option."]
SAMPLE_VALUES = ["1", "0", "-1", "2", "max", "true", "false", "auto", "native", "trtllm",
                 "deepspeed", "fp16", "sse", "Python", "MPI", "DeepSpeed", "PyTorch", "1e309",
                 "nan", "²", "٣", "1_000", " 4 ", "", "s3://bucket/x", "org/name", "99999999999"]
property_value = st.one_of(st.sampled_from(SAMPLE_VALUES),
                           st.text(st.characters(exclude_categories=["Cs"],
                                                 exclude_characters="\r\n"), max_size=12))


def check_config(model_dir: Path, env: dict) -> None:
    try:
        config = load_config(model_dir, env=env)
    except StartupError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert isinstance(config, ServingConfig)
    assert config.tensor_parallel_degree >= 1
    assert ServingConfig.from_json(config.to_json()) == config


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    handler = tmp_path_factory.mktemp("handler-model")
    (handler / "model.py").write_text("def handle(inputs):\n    return None\n")
    checkpoint = tmp_path_factory.mktemp("llm-model")
    (checkpoint / "config.json").write_text("{}")
    return {"handler": handler, "llm": checkpoint}


@examples(600)
@given(kind=st.sampled_from(["handler", "llm"]),
       lines=st.lists(st.tuples(st.sampled_from(KEY_NAMES), property_value), max_size=6),
       garbage=st.lists(st.text(max_size=30), max_size=2))
def test_serving_properties_load_or_name_the_key(model_dirs, kind, lines, garbage):
    directory = model_dirs[kind]
    text = "\n".join([f"{key}={value}" for key, value in lines] + garbage)
    (directory / "serving.properties").write_text(text, encoding="utf-8", errors="replace")
    check_config(directory, env={})


ENV_NAMES = ["OPTION_DTYPE", "OPTION_TENSOR_PARALLEL_DEGREE", "OPTION_ROLLING_BATCH",
             "OPTION_ENGINE", "OPTION_ENTRYPOINT", "OPTION_MODEL_ID", "OPTION_MAX_MODEL_LEN",
             "SERVING_JOB_QUEUE_SIZE", "SERVING_BATCH_SIZE", "SERVING_LOG_LEVEL",
             "HF_MODEL_ID", "TENSOR_PARALLEL_DEGREE", "SAGEMAKER_MAX_PAYLOAD_IN_MB",
             "SAGEMAKER_STARTUP_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
             "MAX_BATCH_SIZE", "CUDA_MEMORY_FRACTION", "SM_NUM_GPUS", "CUDA_VISIBLE_DEVICES",
             "OPTION_", "SERVING_", "OPTION_X"]


@examples(600)
@given(kind=st.sampled_from(["handler", "llm"]),
       env=st.dictionaries(st.sampled_from(ENV_NAMES), property_value, max_size=5))
@example(kind="llm", env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1e309"})   # float * MiB overflows int()
def test_environment_loads_or_names_the_variable(model_dirs, kind, env):
    directory = model_dirs[kind]
    (directory / "serving.properties").unlink(missing_ok=True)
    check_config(directory, env=env)


@examples(300)
@given(key=st.sampled_from(sorted(keys.REGISTRY.values(), key=lambda k: k.name)),
       raw=property_value)
def test_every_key_parser_returns_a_value_or_says_what_is_allowed(key, raw):
    try:
        key.parse(raw)
    except ValueError as error:
        assert "allowed" in str(error), (key.name, raw, error)


unicode_number = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=3)


@examples(200)
@given(unicode_number, st.sampled_from(["option.tensor_parallel_degree", "SM_NUM_GPUS",
                                        "TENSOR_PARALLEL_DEGREE", "job_queue_size",
                                        "option.max_model_len"]))
@example("²", "option.tensor_parallel_degree")        # str.isdigit() is true, int() refuses
@example("²", "SM_NUM_GPUS")
def test_digits_other_than_ascii_in_numeric_settings(model_dirs, number, name):
    directory = model_dirs["llm"]
    properties = directory / "serving.properties"
    properties.unlink(missing_ok=True)
    if name.islower():
        properties.write_text(f"{name}={number}\n", encoding="utf-8")
        check_config(directory, env={})
    else:
        check_config(directory, env={name: number})


@examples(100)
@given(st.one_of(unicode_number, st.text(st.characters(exclude_characters="\x00",
                                                      exclude_categories=["Cs"]), max_size=8)))
@example("²")
def test_bind_port_variable_is_a_port_or_one_line_error(raw):
    import argparse
    import os
    from unittest import mock

    from container.cli import resolve_port

    with mock.patch.dict(os.environ, {"SAGEMAKER_BIND_TO_PORT": raw}):
        try:
            port = resolve_port(argparse.Namespace(port=None))
        except StartupError as error:
            assert "SAGEMAKER_BIND_TO_PORT" in str(error)
            return
    assert 0 < port < 65536
