"""Fuzzing over HTTP against real `serve` processes: an LLM (a tiny random Llama) and a handler.

Two generators:
- schemathesis, from the server's own GET /openapi.json, valid (positive) and invalid (negative)
  requests for every operation, checked against the document (status, content type, schemas);
- hypothesis strategies aimed where parsers are: LMI / OpenAI fields with any JSON value (raw
  number tokens such as 1e309 included), raw bytes under any content type, odd headers and paths.

Every answer must be a status the document lists for that route, never 500, with the content
type and body schema documented; an error must be the JSON error body with no traceback; a
streamed answer must not end in a 5xx error line. After each server's fuzzing: /ping is healthy,
the worker pid is the one before, a good request works, and the log holds no error of the front
end (nor of the LLM worker).
Deterministic (derandomize=True, no example database) so CI sees the same requests every run.

Run alone: `python -m pytest -q tests/test_fuzz_http.py tests/test_fuzz_parsers.py`.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from conftest import ServeProcess, handler_dir
from tiny_models import build_model

# Not negative_data_rejection: the server reads fields leniently (pydantic's lax mode: "5" or
# false where a number is expected is converted), which the document says but its types do not.
SCHEMA_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                 response_headers_conformance, response_schema_conformance]
# SERVE_FUZZ_SCALE=0.1 for a quick local run (fewer examples everywhere, smaller minimums).
SCALE = float(os.environ.get("SERVE_FUZZ_SCALE", "1"))
MIN_REQUESTS = int(5000 * SCALE)    # across both servers; test_enough_requests_were_sent checks it
SLOW_ANSWER_S = 10.0
# No discovery of a schemathesis.toml; failures show bodies whole (no "[Filtered]" tokens).
CONFIG = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
SENT: dict[str, int] = {}     # requests answered, by server kind
FINISHED: set[str] = set()    # fuzz tests that ran to the end
ALL_FUZZ_TESTS = {"schemathesis llm", "schemathesis handler", "llm fields", "raw llm",
                  "raw handler"}


def fuzz_settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True,
                    database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink], print_blob=False,
                    suppress_health_check=list(HealthCheck))


class Target:
    """One fuzzed server: its process, a session that counts answers, its OpenAPI document."""

    def __init__(self, kind: str, server: ServeProcess):
        self.kind, self.server = kind, server
        self.session = requests.Session()
        self.session.hooks["response"].append(self._count)
        SENT.setdefault(kind, 0)
        self.schema = schemathesis.openapi.from_url(server.url("/openapi.json"), config=CONFIG)
        self.document = requests.get(server.url("/openapi.json"), timeout=10).json()
        self.pid = server.worker_pid()
        self.model = server.model_name()

    def _count(self, response, *args, **kwargs):
        SENT[self.kind] += 1

    def post(self, path: str, data: bytes, headers: dict | None = None) -> requests.Response:
        return self.session.post(self.server.url(path), data=data, headers=headers, timeout=30)

    def documented(self, path_template: str, method: str = "post") -> set[int]:
        responses = self.document["paths"][path_template][method]["responses"]
        return {int(code) for code in responses}


# what every answer must look like ----------------------------------------------------------------
GLOBAL_STATUSES = {400, 404, 405, 414, 431}     # any path (info.description of the document)


def check_answer(response, allowed: set[int], what: str = "") -> None:
    """`response`: a requests or a schemathesis response."""
    response = schemathesis.Response.from_any(response)
    status = response.status_code
    text = response.content.decode("utf-8", errors="replace")
    headers = {name: values[-1] for name, values in response.headers.items()}
    where = f"{what} -> {status}: {text[:300]!r}"
    assert status != 500, where
    assert status in allowed | GLOBAL_STATUSES, where
    assert "Traceback" not in text, where
    assert response.elapsed < SLOW_ANSWER_S, where
    content_type = headers.get("content-type", "")
    if status >= 400:
        assert content_type.startswith("application/json"), where
        body = json.loads(text)
        assert isinstance(body, dict) and isinstance(body.get("message"), str), where
        if "x-amzn-errortype" in headers:                   # SageMaker's error shape
            assert body.get("OriginalStatusCode", 0) != 500, where
        else:
            assert body.get("code") == status and isinstance(body.get("type"), str), where
    elif "jsonlines" in content_type or "event-stream" in content_type:
        for line in text.splitlines():
            line = line[len("data: "):] if line.startswith("data: ") else line
            if line.startswith("{") and '"code"' in line:
                error = json.loads(line)
                assert not (isinstance(error.get("code"), int) and error["code"] >= 500), where


def run_schemathesis(target: Target, label: str, mode: GenerationMode, examples: int) -> None:
    method, path = label.split(" ", 1)
    operation = target.schema[path][method]
    allowed = target.documented(path, method.lower())

    @fuzz_settings(examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        response = case.call(base_url=target.server.base, session=target.session, timeout=30)
        try:
            check_answer(response, allowed, f"{mode.value} {case.method} {case.formatted_path}")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nreproduce: {case.as_curl_command()}\n"
                                 f"server log:\n{target.server.log[-3000:]}") from None
        case.validate_response(response, checks=SCHEMA_CHECKS)

    fuzz()


def assert_unharmed(target: Target, good_path: str, good_body: dict) -> None:
    server = target.server
    assert requests.get(server.url("/ping"), timeout=10).json() == {"status": "Healthy"}
    assert server.worker_pid() == target.pid, "the worker was restarted during the fuzzing"
    response = requests.post(server.url(good_path), json=good_body, timeout=30)
    assert response.status_code == 200, response.text
    # The front end logs ERROR only for its own failures (the answer may have been sent by then,
    # e.g. a stream); the LLM worker only for engine failures. Handlers' errors are 424s.
    components = ("[frontend]", "[worker") if target.kind == "llm" else ("[frontend]",)
    errors = [line for line in server.log.splitlines()
              if " ERROR " in line and any(c in line for c in components)]
    assert not errors, "\n".join(errors[:5])


# servers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    directory = build_model(tmp_path_factory.mktemp("fuzz") / "fuzz-llama", "llama",
                            max_positions=128)
    # 32 tokens of prompt + generation: every accepted request is a few quick steps.
    (directory / "serving.properties").write_text(
        "option.max_model_len=32\noption.num_kv_blocks=64\noption.kv_block_size=8\n"
        "job_queue_size=64\nmax_request_size=2000000\n")
    server = ServeProcess(directory).start()
    yield Target("llm", server)
    server.stop()


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    directory = handler_dir(tmp_path_factory.mktemp("fuzz"), "echo",
                            "max_request_size=2000000\n")
    server = ServeProcess(directory).start()
    yield Target("handler", server)
    server.stop()


def metrics_served(target: Target) -> bool:
    """/metrics is documented; a build without it yet answers 404 there (skip, not fail)."""
    return requests.get(target.server.url("/metrics"), timeout=10).status_code != 404


INFERENCE_OPERATIONS = ["POST /invocations", "POST /predictions/{model_name}",
                        "POST /predictions/{model_name}/{model_version}",
                        "POST /endpoints/{endpoint_name}/invocations",
                        "POST /endpoints/{endpoint_name}/invocations-response-stream"]
OPENAI_OPERATIONS = ["POST /v1/completions", "POST /v1/chat/completions"]
READ_OPERATIONS = ["GET /ping", "GET /models", "GET /models/{model_name}", "GET /v1/models",
                   "GET /openapi.json", "GET /metrics"]


def schemathesis_plan(kind: str) -> list[tuple[str, GenerationMode, int]]:
    """(operation, mode, examples): most examples where the parsers are."""
    positive, negative = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    llm_server = kind == "llm"
    plan = []
    for label in INFERENCE_OPERATIONS:      # one body schema, five routes: most on the first
        main = label == "POST /invocations"
        plan += [(label, positive, 200 if main else 60), (label, negative, 200 if main else 50)]
    for label in OPENAI_OPERATIONS:          # on a handler server these only answer 404
        chat = label.endswith("chat/completions")
        plan += [(label, positive, (100 if chat else 200) if llm_server else 20),
                 (label, negative, 150 if llm_server else 20)]
    for label in READ_OPERATIONS:
        plan.append((label, positive, 5))
    plan.append(("GET /models/{model_name}", negative, 40))
    return plan


# hypothesis strategies for the raw fuzzers -------------------------------------------------------
NUMBER_TOKENS = ["0", "-0", "1", "-1", "2", "0.5", "-0.5", "1e309", "-1e309", "1e-400", "1e308",
                 "9223372036854775807", "9223372036854775808", "18446744073709551616",
                 "-9223372036854775809", "1" * 400, "0.000001", "100", "101", "1000001", "3.0",
                 "NaN", "Infinity", "-Infinity"]

json_scalar = st.one_of(
    st.sampled_from(NUMBER_TOKENS + ["true", "false", "null"]),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=12).map(lambda s: json.dumps(s)),
)
json_text = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}")),
    max_leaves=8)


def json_object(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A JSON object text holding any subset of these fields, each a JSON text."""
    return st.fixed_dictionaries({}, optional=fields).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}")


LMI_PARAMETERS = ["max_new_tokens", "max_tokens", "do_sample", "temperature", "top_k", "top_p",
                  "repetition_penalty", "seed", "stop_sequences", "stop", "return_full_text",
                  "details", "ignore_eos", "truncate", "top_n_tokens", "decoder_input_details",
                  "typical_p", "min_p", "presence_penalty", "frequency_penalty",
                  "stop_token_ids", "min_tokens", "guided_regex", "guided_choice", "guided_json",
                  "n", "num_beams", "unknown"]
OPENAI_FIELDS = ["model", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop",
                 "seed", "frequency_penalty", "presence_penalty", "repetition_penalty",
                 "ignore_eos", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs",
                 "echo", "best_of", "logit_bias", "min_tokens", "min_p", "stop_token_ids", "user",
                 "response_format", "guided_json", "guided_regex", "guided_choice",
                 "guided_grammar", "structured_outputs", "tools", "tool_choice",
                 "parallel_tool_calls", "return_tokens_as_token_ids", "suffix", "unknown"]
short_prompt = st.text(max_size=20).map(json.dumps)


def small_value(name: str) -> st.SearchStrategy:
    """Mostly values near the valid range of a field, sometimes anything."""
    near = {"max_new_tokens": ["1", "2", "4"], "max_tokens": ["1", "3"],
            "max_completion_tokens": ["2"], "temperature": ["0", "0.7", "1e-30"],
            "top_p": ["0.9", "1e-9"], "top_k": ["-1", "0", "5"], "seed": ["0", "7"],
            "stream": ["true", "false"], "details": ["true"], "logprobs": ["true", "0"],
            "stop_sequences": ['["a"]', '"x"'], "stop": ['["\\n"]'], "truncate": ["3"],
            "top_n_tokens": ["0", "2", "21"], "top_logprobs": ["0", "3", "21"],
            "n": ["1", "2", "17"], "best_of": ["1", "3"], "typical_p": ["0.5", "0"],
            "min_p": ["0.1", "1"], "presence_penalty": ["0.5", "-2", "3"],
            "frequency_penalty": ["1"], "stop_token_ids": ["[1]", "[-1]", "[99999999]"],
            "min_tokens": ["1", "3"], "logit_bias": ['{"3": 5}', '{"x": 1}', '{"1": 101}'],
            "guided_regex": ['"[ab]{2}"', '"(a"'], "guided_choice": ['["a", "b"]', "[]"],
            "guided_json": ['{"type": "integer"}', '{"type": "nonsense"}'],
            "guided_grammar": ['"root ::= \\"a\\""', '"root ::="'],
            "response_format": ['{"type": "json_object"}', '{"type": "text"}',
                                '{"type": "json_schema", "json_schema": {"schema": '
                                '{"type": "boolean"}}}', '{"type": "yaml"}'],
            "structured_outputs": ['{"choice": ["x"]}', '{"json_object": true}'],
            "tools": ['[{"type": "function", "function": {"name": "f", "parameters": '
                      '{"type": "object"}}}]', '[{"type": "function"}]'],
            "tool_choice": ['"none"', '"auto"', '"required"',
                            '{"type": "function", "function": {"name": "f"}}'],
            "echo": ["true"], "suffix": ['"s"'], "decoder_input_details": ["true"]}
    return st.one_of(st.sampled_from(near.get(name, ["true", "1"])), json_text)


lmi_body = json_object({
    "inputs": st.one_of(short_prompt, st.lists(short_prompt, min_size=1, max_size=3).map(
        lambda items: "[" + ",".join(items) + "]"), json_text),
    "parameters": st.one_of(json_object({n: small_value(n) for n in LMI_PARAMETERS}), json_text),
    "stream": st.sampled_from(["true", "false", "1", '"yes"']),
})
chat_message = json_object({
    "role": st.sampled_from(['"user"', '"system"', '"assistant"', '"tool"', '"robot"', "1"]),
    "content": st.one_of(short_prompt, st.just('[{"type": "text", "text": "hi"}]'),
                         st.just('[{"type": "image_url"}]'), json_text),
})
chat_body = json_object({
    "messages": st.one_of(st.lists(chat_message, max_size=3).map(
        lambda items: "[" + ",".join(items) + "]"), json_text),
    **{n: small_value(n) for n in OPENAI_FIELDS}})
completion_body = json_object({
    "prompt": st.one_of(short_prompt, st.just("[1, 2, 3]"), st.just("[[1, 2], [3]]"),
                        st.just("[-1]"), st.just("[999999999]"), json_text),
    **{n: small_value(n) for n in OPENAI_FIELDS}})

CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "text/plain",
                 "application/octet-stream", "multipart/form-data",
                 "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded",
                 "application/jsonlines", "text/csv", "image/png", "", "*/*", "a/b; c=\"d",
                 "application/json;;;", "\u00e9/\u00e9"]
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300).map(
    str.strip)


# the fuzzing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llm", "handler"])
def test_schemathesis_against_the_openapi_document(kind, request):
    target: Target = request.getfixturevalue(kind)
    started, before = time.monotonic(), SENT[kind]
    with_metrics = metrics_served(target)
    for label, mode, examples in schemathesis_plan(kind):
        if label == "GET /metrics" and not with_metrics:
            continue
        run_schemathesis(target, label, mode, examples)
    sent = SENT[kind] - before
    print(f"\nschemathesis, {kind} server: {sent} requests in {time.monotonic() - started:.1f}s")
    assert sent >= 800 * SCALE
    good = ({"inputs": "hello", "parameters": {"max_new_tokens": 3}} if kind == "llm"
            else {"still": "fine"})
    assert_unharmed(target, "/invocations", good)
    FINISHED.add(f"schemathesis {kind}")


def test_llm_fields_with_any_json_value(llm):
    allowed = {200, 400}
    paths = {"/invocations": st.one_of(lmi_body, chat_body, completion_body),
             "/v1/chat/completions": chat_body, "/v1/completions": completion_body}

    @fuzz_settings(1500)
    @given(path=st.sampled_from(sorted(paths)), data=st.data())
    def fuzz(path, data):
        body = data.draw(paths[path]).encode("utf-8")
        check_answer(llm.post(path, body, {"Content-Type": "application/json"}), allowed,
                     f"{path} {body!r}")

    fuzz()
    assert_unharmed(llm, "/invocations", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    FINISHED.add("llm fields")


@pytest.mark.parametrize("kind", ["llm", "handler"])
def test_raw_bodies_headers_and_paths(kind, request):
    target: Target = request.getfixturevalue(kind)
    model = quote(target.model, safe="")
    documented = {
        "/invocations": target.documented("/invocations"),
        f"/predictions/{model}": target.documented("/predictions/{model_name}"),
        "/endpoints/fuzz/invocations": target.documented("/endpoints/{endpoint_name}/invocations"),
        "/endpoints/fuzz/invocations-response-stream": target.documented(
            "/endpoints/{endpoint_name}/invocations-response-stream"),
        "/v1/completions": target.documented("/v1/completions"),
    }
    some_path = st.one_of(
        st.sampled_from(sorted(documented)),
        st.text(max_size=30).map(lambda s: "/predictions/" + quote(s, safe="")),
        st.text(max_size=30).map(lambda s: "/models/" + quote(s, safe="")),
        st.text(max_size=30).map(lambda s: "/endpoints/" + quote(s, safe="") + "/invocations"),
    )

    @fuzz_settings(1200)
    @given(path=some_path, body=st.one_of(st.binary(max_size=200), lmi_body.map(str.encode)),
           content_type=st.sampled_from(CONTENT_TYPES), attributes=header_text,
           request_id=header_text)
    def fuzz(path, body, content_type, attributes, request_id):
        headers = {"Content-Type": content_type, "X-Amzn-SageMaker-Custom-Attributes": attributes,
                   "X-Request-Id": request_id}
        if path.startswith("/models/"):
            response = target.session.get(target.server.url(path), headers=headers, timeout=30)
            allowed = target.documented("/models/{model_name}", "get")
        else:
            response = target.post(path, body, headers)
            if path.startswith("/endpoints/"):
                allowed = documented["/endpoints/fuzz/invocations"]
            else:
                allowed = documented.get(path, target.documented("/predictions/{model_name}"))
        check_answer(response, allowed, f"{path} {content_type!r} {body[:80]!r}")

    fuzz()
    good = ({"inputs": "hello", "parameters": {"max_new_tokens": 3}} if kind == "llm"
            else {"still": "fine"})
    assert_unharmed(target, "/invocations", good)
    FINISHED.add(f"raw {kind}")


def test_enough_requests_were_sent():
    """The total over this module's fuzz tests, when all of them ran (not under -k)."""
    total = sum(SENT.values())
    if FINISHED != ALL_FUZZ_TESTS:
        pytest.skip(f"only {sorted(FINISHED)} of the fuzz tests ran")
    print(f"\nfuzzing sent {total} requests: {SENT}")
    assert total >= MIN_REQUESTS, SENT


# explicit cases -----------------------------------------------------------------------------------
def error_of(response, status: int, *words: str) -> dict:
    """The JSON error body of `response`, which must have this status and name these words."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["code"] == status and body["type"] and body["message"], body
    assert "Traceback" not in response.text
    for word in words:
        assert word in body["message"], body
    return body


def post_raw(target: Target, path: str, data: bytes, content_type="application/json", **headers):
    return requests.post(target.server.url(path), data=data, timeout=30,
                         headers={"Content-Type": content_type, **headers})


def test_every_route_of_the_app_is_in_the_document(tmp_path):
    from container.config.loader import load_config
    from container.frontend.app import create_app
    from container.workers.rundir import RunDir

    model_dir = handler_dir(tmp_path, "echo")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_path.write_text(load_config(model_dir, env={}).to_json())
    app = create_app(str(run.path))
    document = app.test_client().get("/openapi.json").get_json()
    routes = {(rule.rule, method) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint != "static"}
    shape = lambda path: __import__("re").sub(r"[<{][^>}]*[>}]", "{}", path)  # noqa: E731
    documented = {(shape(path), method.upper()) for path, item in document["paths"].items()
                  for method in item}
    missing = {(shape(path), method) for path, method in routes} - documented
    assert not missing, f"routes missing from /openapi.json: {missing}"
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


@pytest.mark.parametrize("kind", ["llm", "handler"])
def test_openapi_document_is_served_and_describes_the_model_kind(kind, request):
    target: Target = request.getfixturevalue(kind)
    document = target.document
    assert document["openapi"].startswith("3.1")
    body = document["paths"]["/invocations"]["post"]["requestBody"]["content"]
    if kind == "llm":
        assert list(body) == ["application/json"]
        assert {"LmiRequest", "ChatCompletionRequest", "CompletionRequest", "LmiParameters"} <= set(
            document["components"]["schemas"])
    else:
        assert "*/*" in body
    for path in ("/metrics", "/openapi.json", "/ping", "/models/{model_name}"):
        assert path in document["paths"]


def test_wrong_content_types(llm, handler):
    good = json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 2}}).encode()
    # The LLM reads JSON whatever the declared type (curl -d sends form-urlencoded).
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "image/png", ""):
        assert post_raw(llm, "/invocations", good, content_type).status_code == 200
    error_of(post_raw(llm, "/invocations", b"a=1&b=2", "application/x-www-form-urlencoded"), 400,
             "not valid JSON")
    error_of(post_raw(llm, "/v1/completions", b"<xml/>", "application/xml"), 400, "not valid JSON")
    # A handler gets any type as is; JSON must be JSON when declared so.
    echoed = post_raw(handler, "/invocations", b"<xml/>", "text/xml")
    assert echoed.status_code == 200 and echoed.json()["echo"] == "<xml/>"
    # (echo.py cannot put raw bytes into its JSON answer: its own failure, a 424)
    error_of(post_raw(handler, "/invocations", b"\x00\x01", "application/octet-stream"), 424,
             "JSON serializable")
    error_of(post_raw(handler, "/invocations", b"{not json", "application/json"), 400,
             "not valid JSON")


def test_empty_bodies(llm, handler):
    for path in ("/invocations", "/v1/completions", "/v1/chat/completions",
                 f"/predictions/{llm.model}"):
        error_of(post_raw(llm, path, b""), 400, "empty")
    sagemaker = post_raw(llm, "/endpoints/e/invocations", b"")
    assert sagemaker.status_code == 424 and sagemaker.json()["OriginalStatusCode"] == 400
    assert post_raw(handler, "/invocations", b"", "text/plain").status_code == 200


BAD_NUMBERS = [
    ("/invocations", '{"inputs": "hi", "parameters": {"max_new_tokens": 1e309}}',
     "parameters.max_new_tokens"),
    ("/invocations", '{"inputs": "hi", "parameters": {"max_new_tokens": -5}}',
     "parameters.max_new_tokens"),
    ("/invocations", '{"inputs": "hi", "parameters": {"max_new_tokens": 1e100}}',
     "parameters.max_new_tokens"),
    ("/invocations", '{"inputs": "hi", "parameters": {"temperature": NaN}}', "NaN"),
    ("/invocations", '{"inputs": "hi", "parameters": {"temperature": Infinity}}', "Infinity"),
    ("/invocations", '{"inputs": "hi", "parameters": {"temperature": -1e309}}',
     "parameters.temperature"),
    ("/invocations", '{"inputs": "hi", "parameters": {"top_p": -1}}', "parameters.top_p"),
    ("/invocations", '{"inputs": "hi", "parameters": {"top_k": 1e30}}', "parameters.top_k"),
    ("/invocations", '{"inputs": "hi", "parameters": {"seed": 18446744073709551616}}',
     "parameters.seed"),
    ("/invocations", '{"inputs": "hi", "parameters": {"repetition_penalty": 0}}',
     "parameters.repetition_penalty"),
    ("/invocations", '{"inputs": "hi", "parameters": {"truncate": -1}}', "parameters.truncate"),
    ("/invocations", '{"inputs": "hi", "parameters": {"max_new_tokens": ' + "9" * 5000 + "}}",
     "not valid JSON"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 1e309}', "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "temperature": 2.5}', "temperature"),
    ("/v1/completions", '{"prompt": [-1]}', "prompt"),
    ("/v1/completions", '{"prompt": [99999999999999999999]}', "prompt"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "n": 17}', "n"),
    ("/v1/completions", '{"prompt": "hi", "logprobs": 1e309}', "logprobs"),
    ("/v1/completions", '{"prompt": "hi", "logit_bias": {"1": NaN}}', "NaN"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], '
                             '"top_logprobs": -1, "logprobs": true}', "top_logprobs"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], '
                             '"top_p": -Infinity}', "Infinity"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], '
                             '"max_completion_tokens": 0}', "max_completion_tokens"),
]


@pytest.mark.parametrize("path,body,named", BAD_NUMBERS)
def test_huge_negative_nan_and_infinite_parameters(llm, path, body, named):
    error_of(post_raw(llm, path, body.encode()), 400, named)


@pytest.mark.parametrize("path,body", [
    ("/invocations", {"inputs": "word " * 200_000}),
    ("/invocations", {"inputs": ["short", "x" * 1_000_000], "parameters": {"max_new_tokens": 2}}),
    ("/v1/completions", {"prompt": "x" * 1_000_000, "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "y" * 1_000_000}]}),
])
def test_million_character_prompt_is_a_fast_400(llm, path, body):
    started = time.monotonic()
    error_of(requests.post(llm.server.url(path), json=body, timeout=30), 400, "max_input_len")
    assert time.monotonic() - started < 2.0
    assert llm.server.worker_pid() == llm.pid


def test_more_prompts_than_the_job_queue_holds_is_400(llm):
    """64 is the fuzz server's job_queue_size: a longer list could only ever be refused 503."""
    error_of(requests.post(llm.server.url("/invocations"), timeout=30, json={
        "inputs": ["hi"] * 65, "parameters": {"max_new_tokens": 1}}), 400, "job_queue_size=64")
    error_of(requests.post(llm.server.url("/v1/completions"), timeout=30, json={
        "prompt": ["hi"] * 1000, "max_tokens": 1}), 400, "job_queue_size=64")
    answer = requests.post(llm.server.url("/invocations"), timeout=30, json={
        "inputs": ["hi"] * 8, "parameters": {"max_new_tokens": 1}})
    assert answer.status_code == 200 and len(answer.json()) == 8


def test_body_over_max_request_size_is_413(llm, handler):
    for target in (llm, handler):
        error_of(post_raw(target, "/invocations", b"x" * 3_000_000, "text/plain"), 413,
                 "max_request_size")
        assert target.server.worker_pid() == target.pid


def test_invalid_utf8_in_a_json_body(llm, handler):
    body = b'{"inputs": "caf\xc3\x28 \xff\xfe"}'
    for target, path in ((llm, "/invocations"), (llm, "/v1/completions"),
                         (handler, "/invocations")):
        error_of(post_raw(target, path, body), 400, "not valid JSON")


def test_deeply_nested_json(llm, handler):
    for nested in (b"[" * 100_000, b'{"inputs": ' + b"[" * 100_000, b'{"a":' * 50_000):
        for target, path in ((llm, "/invocations"), (llm, "/v1/chat/completions"),
                             (handler, "/invocations")):
            error_of(post_raw(target, path, nested), 400)
    deep_but_parsable = b'{"inputs": ' + b"[" * 500 + b"]" * 500 + b"}"
    error_of(post_raw(llm, "/invocations", deep_but_parsable), 400, "inputs")


@pytest.mark.parametrize("body", [b"[]", b'["hi"]', b'"hi"', b"42", b"null", b"true", b"1e309"])
def test_json_that_is_not_an_object(llm, body):
    for path in ("/invocations", "/v1/completions", "/v1/chat/completions"):
        error_of(post_raw(llm, path, body), 400, "body")


def test_unknown_model_names(llm, handler):
    for target in (llm, handler):
        error_of(requests.post(target.server.url("/predictions/other"), json={"inputs": "x"},
                               timeout=10), 404, "other")
        error_of(requests.post(target.server.url("/predictions/other/1"), json={"inputs": "x"},
                               timeout=10), 404, "other")
        error_of(requests.get(target.server.url("/models/other"), timeout=10), 404, "other")


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                  "..%5C..%5Cetc%5Cpasswd", "%2Fetc%2Fpasswd", "..", "%00",
                                  "model%00.json"])
def test_path_traversal_in_model_names_is_404(llm, handler, name):
    for target in (llm, handler):
        for method, path in (("POST", f"/predictions/{name}"), ("GET", f"/models/{name}"),
                             ("POST", f"/predictions/{target.model}/{name}")):
            response = requests.request(method, target.server.url(path), json={"inputs": "x"},
                                        timeout=10)
            if path.startswith(f"/predictions/{target.model}/"):
                # the version is not a path either: it is ignored, so this is a normal request
                assert response.status_code in (200, 404), response.text
                continue
            error_of(response, 404)
            assert "root:" not in response.text


def _answer_despite_reset(send, attempts=3):
    """gunicorn answers an over-long head and closes at once; on a loaded machine the client can
    see the reset before the answer. Retry the transport, never the verdict."""
    for attempt in range(attempts):
        try:
            return send()
        except requests.ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def test_large_and_odd_custom_attributes(handler):
    ten_kb = "; ".join(f"k{i}=v{i}" for i in range(1500))[:10_240]
    error_of(_answer_despite_reset(lambda: post_raw(handler, "/invocations", b"{}", **{
        "X-Amzn-SageMaker-Custom-Attributes": ten_kb})), 431, "8190 bytes")
    seven_kb = "tenant=blue; " + "; ".join(f"k{i}=v{i}" for i in range(900))[:7000]
    answer = post_raw(handler, "/invocations", b"{}", **{
        "X-Amzn-SageMaker-Custom-Attributes": seven_kb})
    assert answer.status_code == 200 and answer.json()["tenant"] == "blue"
    odd = post_raw(handler, "/invocations", b"{}", **{
        "X-Amzn-SageMaker-Custom-Attributes": "=;;tenant = a=b ; =x; flag"})
    assert odd.status_code == 200 and odd.json()["tenant"] == "a=b"
    many = {f"X-Extra-{i}": "x" for i in range(120)}
    error_of(_answer_despite_reset(lambda: post_raw(handler, "/invocations", b"{}", **many)),
             431, "100 headers")
    error_of(_answer_despite_reset(lambda: requests.get(
        handler.server.url("/ping?" + "a" * 9000), timeout=10)), 414)
    assert handler.server.worker_pid() == handler.pid


def raw_exchange(target: Target, request: bytes) -> tuple[int, dict]:
    """Send bytes as they are (no HTTP client would send these); the status and JSON body."""
    import socket

    with socket.create_connection(("127.0.0.1", target.server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /ping HTTP/9.9\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["request-line", "version", "header", "content-length", "chunk-size"])
def test_malformed_http_is_a_json_400(llm, handler, request_bytes):
    for target in (llm, handler):
        status, body = raw_exchange(target, request_bytes)
        assert status == 400 and body["code"] == 400 and body["message"], body
        assert target.server.worker_pid() == target.pid


def test_method_not_allowed_names_the_allowed_methods(llm):
    response = requests.delete(llm.server.url("/invocations"), timeout=10)
    error_of(response, 405, "DELETE")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("kind", ["llm", "handler"])
def test_requests_sharing_a_request_id_each_get_their_own_answer(kind, request):
    """The id a client sends is echoed, but is not what the worker keys requests by: two requests
    with the same X-Request-Id in flight at once used to cross answers or hang."""
    import concurrent.futures as futures

    target: Target = request.getfixturevalue(kind)

    def send(i: int):
        body = ({"inputs": f"request {i}", "parameters": {"max_new_tokens": 8,
                                                          "return_full_text": True}}
                if kind == "llm" else {"i": i})
        return requests.post(target.server.url("/invocations"), json=body, timeout=20,
                             headers={"X-Request-Id": "same-id"})

    with futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Request-Id"] == "same-id"
        if kind == "llm":
            assert answer.json()["generated_text"].startswith(f"request {i}")
        else:
            assert answer.json()["echo"] == {"i": i}


@pytest.mark.parametrize("kind", ["llm", "handler"])
def test_still_serving_after_the_explicit_cases(kind, request):
    target: Target = request.getfixturevalue(kind)
    good = ({"inputs": "hello", "parameters": {"max_new_tokens": 3}} if kind == "llm"
            else {"still": "fine"})
    assert_unharmed(target, "/invocations", good)
