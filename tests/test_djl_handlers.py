"""DJL handlers unchanged: DJL's request model, async mode and rolling-batch handlers, through
`serve` and HTTP (and boto3's SageMaker runtime client where DJL users call it that way)."""

from __future__ import annotations

import concurrent.futures as futures
import json
import time

import pytest
import requests

from conftest import ServeProcess, handler_dir, wait_for


def djl_handler_dir(tmp_path, name: str, properties: str = ""):
    from conftest import HANDLERS, write_model

    return write_model(tmp_path / name, (HANDLERS / "djl" / f"{name}.py").read_text(),
                       properties)


@pytest.fixture(scope="module")
def request_server(tmp_path_factory):
    server = ServeProcess(djl_handler_dir(tmp_path_factory.mktemp("rm"), "request_model")).start()
    yield server
    server.stop()


def entries(response):
    assert response.status_code == 200, response.text
    return response.json()["entries"]


# 1. request model ---------------------------------------------------------------------------
def test_query_parameters_are_content_entries_in_order_then_the_body(request_server):
    response = requests.post(request_server.url("/invocations?stream=true&tag=a&tag=b"),
                             json={"inputs": "x"}, timeout=30)
    assert entries(response) == [["stream", "true"], ["tag", "a"], ["tag", "b"],
                                 ["data", '{"inputs": "x"}']]


def test_predictions_route_and_sagemaker_runtime_see_the_same_input(request_server):
    import boto3

    name = request_server.model_name()
    direct = entries(requests.post(request_server.url(f"/predictions/{name}?k=v"),
                                   data=b"raw", headers={"Content-Type": "text/plain"},
                                   timeout=30))
    assert direct == [["k", "v"], ["data", "raw"]]
    runtime = boto3.client("sagemaker-runtime", endpoint_url=request_server.base,
                           region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    answer = runtime.invoke_endpoint(EndpointName="local", Body=b"raw", ContentType="text/plain")
    described = json.loads(answer["Body"].read())
    assert described["entries"] == [["data", "raw"]]
    assert described["properties"]["Content-Type"] == "text/plain"


def test_urlencoded_form_fields_are_entries(request_server):
    response = requests.post(request_server.url("/invocations?q=1"),
                             data=[("a", "1"), ("b", "two"), ("a", "3")], timeout=30)
    assert entries(response) == [["q", "1"], ["a", "1"], ["b", "two"], ["a", "3"]]


def test_multipart_fields_and_files_are_entries_with_their_content_type(request_server):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    response = requests.post(request_server.url("/invocations"),
                             data={"caption": "a cat"},
                             files={"image": ("cat.png", png, "image/png")}, timeout=30)
    body = response.json()
    assert body["entries"] == [["caption", "a cat"],
                               ["image", {"bytes": len(png), "first": png[:4].hex()}]]
    assert body["properties"]["image.content-type"] == "image/png"


def test_headers_are_properties(request_server):
    response = requests.post(request_server.url("/invocations"), data=b"x",
                             headers={"X-Custom-Thing": "42", "Content-Type": "text/plain",
                                      "X-Amzn-SageMaker-Custom-Attributes": "attr=7"},
                             timeout=30)
    properties = response.json()["properties"]
    assert properties["X-Custom-Thing"] == "42"
    assert properties["attr"] == "7"


def test_a_request_choosing_the_handler_is_refused_by_default(request_server):
    for response in (
            requests.post(request_server.url("/invocations?handler=shout"), data=b"x",
                          timeout=30),
            requests.post(request_server.url("/invocations"), data=b"x",
                          headers={"handler": "shout"}, timeout=30)):
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["type"] == "HandlerOverrideRefused"
        assert "SERVING_ALLOW_HANDLER_OVERRIDE" in body["message"]
    assert entries(requests.post(request_server.url("/invocations"), data=b"ok",
                                 timeout=30)) == [["data", "ok"]]


def test_operator_may_allow_requests_to_choose_the_handler(tmp_path, serve_factory):
    server = serve_factory(djl_handler_dir(tmp_path, "request_model"),
                           env={"SERVING_ALLOW_HANDLER_OVERRIDE": "true"}).start()
    shouted = requests.post(server.url("/invocations?handler=shout"), data=b"quiet please",
                            headers={"Content-Type": "text/plain"}, timeout=30)
    assert shouted.status_code == 200, shouted.text
    assert shouted.text == "QUIET PLEASE"
    missing = requests.post(server.url("/invocations?handler=nope"), data=b"x", timeout=30)
    assert missing.status_code == 424 and "nope" in missing.json()["message"]
    assert entries(requests.post(server.url("/invocations"), data=b"ok", timeout=30)) == [
        ["data", "ok"]]


# 3. async mode ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def async_server(tmp_path_factory):
    directory = djl_handler_dir(tmp_path_factory.mktemp("am"), "async_mode",
                                "option.async_mode=true\nbatch_size=1\n")
    server = ServeProcess(directory).start()
    yield server
    server.stop()


def test_async_mode_runs_many_requests_at_once(async_server):
    def call(_):
        return requests.post(async_server.url("/invocations"),
                             json={"action": "sleep", "seconds": 1.0}, timeout=60)

    started = time.monotonic()
    with futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    elapsed = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    spans = [(a.json()["started"], a.json()["ended"]) for a in answers]
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    assert latest_start < earliest_end, "the requests ran one after another"
    assert elapsed < 6, elapsed


def test_async_generator_of_outputs_streams_each_piece(async_server):
    with requests.post(async_server.url("/invocations"),
                       json={"action": "stream", "count": 5, "delay": 0.2}, stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        arrivals = []
        for chunk in response.iter_content(chunk_size=None):
            arrivals.append((time.monotonic(), chunk))
    text = b"".join(c for _, c in arrivals).decode()
    assert text == "".join(f"piece-{i};" for i in range(5))
    assert len(arrivals) >= 3, "the pieces arrived as one block: nothing was streamed"
    assert arrivals[-1][0] - arrivals[0][0] > 0.4


def test_async_none_error_and_exception(async_server):
    empty = requests.post(async_server.url("/invocations"), json={"action": "none"}, timeout=30)
    assert empty.status_code == 204 and empty.content == b""
    refused = requests.post(async_server.url("/invocations"), json={"action": "?"}, timeout=30)
    assert refused.status_code == 400 and "unknown action" in refused.text
    failed = requests.post(async_server.url("/invocations"), json={"action": "fail"}, timeout=30)
    assert failed.status_code == 424 and "asked to fail" in failed.json()["message"]
    ok = requests.post(async_server.url("/invocations"), json={"action": "sleep", "seconds": 0},
                       timeout=30)
    assert ok.status_code == 200


def test_binary_encoded_pieces_are_decoded_and_last_ends_the_stream(async_server):
    whole = requests.post(async_server.url("/invocations"),
                          json={"action": "binary", "text": "héllo"}, timeout=30)
    assert whole.status_code == 200, whole.text
    assert whole.json() == {"echo": "héllo"}
    streamed = requests.post(async_server.url("/invocations"),
                             json={"action": "binary_stream", "count": 4}, timeout=30)
    assert streamed.status_code == 200
    assert streamed.text == "<0><1><2><3>"


def test_client_disconnect_cancels_the_async_task(async_server, tmp_path):
    marker = tmp_path / "cancelled"
    response = requests.post(async_server.url("/invocations"),
                             json={"action": "stream", "count": 200, "delay": 0.05,
                                   "marker": str(marker)}, stream=True, timeout=30)
    iterator = response.iter_content(chunk_size=None)
    next(iterator)
    response.close()
    wait_for(marker.exists, timeout=20)
    assert marker.read_text() == "cancelled"


# 4. rolling-batch handlers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rolling_server(tmp_path_factory):
    directory = djl_handler_dir(tmp_path_factory.mktemp("rb"), "rolling",
                                "option.rolling_batch=true\noption.max_rolling_batch_size=3\n")
    server = ServeProcess(directory).start()
    yield server
    server.stop()


def _generate(server, prompt: str, steps: int):
    return requests.post(server.url("/invocations"),
                         json={"inputs": prompt, "parameters": {"steps": steps}}, timeout=60)


def test_rolling_batch_handler_answers_each_request_in_full(rolling_server):
    answer = _generate(rolling_server, "solo", 4)
    assert answer.status_code == 200, answer.text
    text, _, stats = answer.text.rpartition("|")
    assert text == "solo:1 solo:2 solo:3 solo:4 "


def test_requests_join_and_leave_the_rolling_batch(rolling_server):
    steps = {f"r{i}": 3 + 2 * i for i in range(6)}
    with futures.ThreadPoolExecutor(6) as pool:
        answers = dict(zip(steps, pool.map(lambda p: _generate(rolling_server, p, steps[p]),
                                            steps)))
    seen = 0
    for prompt, answer in answers.items():
        assert answer.status_code == 200, answer.text
        text, _, stats = answer.text.rpartition("|")
        assert text == "".join(f"{prompt}:{i} " for i in range(1, steps[prompt] + 1))
        seen = max(seen, json.loads(stats)["max_batch_seen"])
    assert seen == 3, "max_rolling_batch_size=3 should cap the batch and be reached"


def test_rolling_batch_streams_pieces_as_they_are_made(rolling_server):
    with requests.post(rolling_server.url("/invocations"),
                       json={"inputs": "s", "parameters": {"steps": 6}}, stream=True,
                       timeout=60) as response:
        chunks = [c for c in response.iter_content(chunk_size=None)]
    assert len(chunks) >= 3
    assert b"".join(chunks).decode().startswith("s:1 s:2 s:3 s:4 s:5 s:6")


def test_rolling_batch_handler_error_fails_the_batch_and_the_server_goes_on(rolling_server):
    failed = requests.post(rolling_server.url("/invocations"),
                           json={"inputs": "bad", "fail": True, "parameters": {"steps": 1}},
                           timeout=60)
    assert failed.status_code == 424, failed.text
    assert "asked to fail" in failed.text
    answer = _generate(rolling_server, "after", 2)
    assert answer.status_code == 200 and answer.text.startswith("after:1 after:2")


# 6. adapters API ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory):
    directory = djl_handler_dir(tmp_path_factory.mktemp("ad"), "adapters", "batch_size=4\n")
    (directory / "adapters" / "builtin").mkdir(parents=True)
    server = ServeProcess(directory).start()
    yield server
    server.stop()


def test_adapters_in_the_model_dir_are_registered_at_start(adapter_server):
    listed = requests.get(adapter_server.url("/adapters"), timeout=30).json()
    assert [a["name"] for a in listed["adapters"]] == ["builtin"]
    answer = requests.post(adapter_server.url("/invocations?adapter=builtin"), data=b"hi",
                           timeout=30).json()
    assert answer["adapter"] == "builtin" and answer["src"].endswith("adapters/builtin")


def test_adapter_lifecycle_through_http_and_the_handler_hooks(adapter_server, tmp_path):
    name = adapter_server.model_name()
    base = f"/models/{name}/adapters"
    src = str(tmp_path / "a1")
    created = requests.post(adapter_server.url(f"{base}?name=a1&src={src}&rank=8"), timeout=30)
    assert created.status_code == 200, created.text
    assert created.json() == {"status": "Adapter a1 registered"}
    duplicate = requests.post(adapter_server.url(f"{base}?name=a1&src={src}"), timeout=30)
    assert duplicate.status_code == 409 and duplicate.json()["type"] == "AdapterExists"

    described = requests.get(adapter_server.url(f"{base}/a1"), timeout=30).json()
    assert described == [{"name": "a1", "src": src, "preload": True, "pin": False,
                          "options": {"rank": "8"}}]
    # every way of naming the adapter reaches the handler as its `adapter` entry
    by_query = requests.post(adapter_server.url("/invocations?adapter=a1"), data=b"x",
                             timeout=30).json()
    by_header = requests.post(adapter_server.url("/invocations"), data=b"x", timeout=30,
                              headers={"X-Amzn-SageMaker-Adapter-Identifier": "a1"}).json()
    for answer in (by_query, by_header):
        assert answer == {"text": "x", "adapter": "a1", "src": src, "pin": "false",
                          "rank": "8"}

    updated = requests.post(adapter_server.url(f"/adapters/a1/update?pin=true"), timeout=30)
    assert updated.status_code == 200 and updated.json() == {"status": "Adapter a1 updated"}
    assert requests.get(adapter_server.url("/adapters/a1"), timeout=30).json()[0]["pin"] is True
    assert requests.post(adapter_server.url("/invocations?adapter=a1"), data=b"x",
                         timeout=30).json()["pin"] == "true"

    removed = requests.delete(adapter_server.url(f"{base}/a1"), timeout=30)
    assert removed.status_code == 200 and removed.json() == {"status": "Adapter a1 unregistered"}
    for response in (requests.get(adapter_server.url(f"{base}/a1"), timeout=30),
                     requests.delete(adapter_server.url(f"{base}/a1"), timeout=30),
                     requests.post(adapter_server.url(f"{base}/a1/update?pin=true"), timeout=30)):
        assert response.status_code == 404 and response.json()["type"] == "AdapterNotFound"
    assert requests.post(adapter_server.url("/invocations?adapter=a1"), data=b"x",
                         timeout=30).json()["src"] is None


def test_adapter_errors_leave_nothing_registered(adapter_server):
    cases = [("name=bad1&src=/x/fail", 424, "HandlerError"),
             ("name=bad2&src=/x/oom", 507, "OutOfMemory"),
             ("name=bad3&src=/x/refuse", 424, "HandlerError"),
             ("src=/x/ok", 400, "InvalidAdapter"),
             ("name=bad4", 400, "InvalidAdapter"),
             ("name=bad5&src=/x&pin=maybe", 400, "InvalidAdapterOption")]
    for query, status, type_ in cases:
        response = requests.post(adapter_server.url(f"/adapters?{query}"), timeout=30)
        assert response.status_code == status, (query, response.text)
        assert response.json()["type"] == type_, response.text
    unknown_model = requests.get(adapter_server.url("/models/other/adapters"), timeout=30)
    assert unknown_model.status_code == 404 and unknown_model.json()["type"] == "ModelNotFound"
    names = [a["name"] for a in requests.get(adapter_server.url("/adapters"),
                                             timeout=30).json()["adapters"]]
    assert not any(n.startswith("bad") for n in names)


def test_adapter_list_pages(adapter_server, tmp_path):
    for index in range(5):
        assert requests.post(adapter_server.url(f"/adapters?name=p{index}&src={tmp_path}"),
                             timeout=30).status_code == 200
    seen, token = [], "0"
    while token is not None:
        page = requests.get(adapter_server.url(f"/adapters?limit=2&next_page_token={token}"),
                            timeout=30).json()
        assert len(page["adapters"]) <= 2
        seen += [a["name"] for a in page["adapters"]]
        token = page.get("nextPageToken")
    assert seen == sorted(seen) and {f"p{i}" for i in range(5)} <= set(seen)
    for index in range(5):
        requests.delete(adapter_server.url(f"/adapters/p{index}"), timeout=30)


# 5. stateful sessions ---------------------------------------------------------------------------
def _runtime(server):
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=server.base, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def _invoke(runtime, body: dict, session: str | None = None):
    kwargs = {"SessionId": session} if session else {}
    return runtime.invoke_endpoint(EndpointName="local", Body=json.dumps(body),
                                   ContentType="application/json", **kwargs)


def test_handler_sessions_through_boto3(tmp_path, serve_factory):
    directory = djl_handler_dir(tmp_path, "stateful",
                                f"option.sessions_path={tmp_path / 'sessions'}\n")
    server = serve_factory(directory).start()
    runtime = _runtime(server)
    opened = _invoke(runtime, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
    session_id = opened["NewSessionId"].split(";")[0]
    assert (tmp_path / "sessions" / session_id).is_dir()
    for turn in (1, 2, 3):
        answer = json.loads(_invoke(runtime, {"text": f"t{turn}"}, session_id)["Body"].read())
        assert answer == {"turns": turn, "said": f"t{turn}"}
    closed = _invoke(runtime, {"requestType": "CLOSE"}, session_id)
    assert closed["ClosedSessionId"] == session_id
    assert not (tmp_path / "sessions" / session_id).exists()
    with pytest.raises(runtime.exceptions.ModelError) as error:
        _invoke(runtime, {"text": "again"}, session_id)
    assert error.value.response["OriginalStatusCode"] == 400


def test_llm_sessions_open_use_close_and_reuse_the_prefix_cache(tmp_path, serve_factory):
    from tiny_models import build_model

    model = build_model(tmp_path / "llama", "llama")
    (model / "serving.properties").write_text(
        f"option.sessions_path={tmp_path / 'sessions'}\noption.sessions_expiration=600\n"
        "option.num_kv_blocks=64\noption.kv_block_size=8\n")
    server = serve_factory(model).start()
    runtime = _runtime(server)
    opened = _invoke(runtime, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
    session_id, _, expires = opened["NewSessionId"].partition(";")
    assert expires.strip().startswith("Expires=20")
    assert json.loads(opened["Body"].read()) == {"result": f"Session {session_id} created"}

    history = "def resolve_model_dir(config): return config.model_dir if config else None"
    first = json.loads(_invoke(runtime, {"inputs": history, "parameters": {
        "max_new_tokens": 4, "details": True}}, session_id)["Body"].read())
    second = json.loads(_invoke(runtime, {"inputs": history + first["generated_text"],
                                          "parameters": {"max_new_tokens": 4, "details": True}},
                                session_id)["Body"].read())
    assert second["details"]["cached_tokens"] >= 8, second["details"]

    with pytest.raises(runtime.exceptions.ModelError) as unknown:
        _invoke(runtime, {"inputs": "x"}, "00000000-0000-0000-0000-000000000000")
    assert unknown.value.response["OriginalStatusCode"] == 400
    assert "SessionNotFound" in unknown.value.response["OriginalMessage"]

    closed = _invoke(runtime, {"requestType": "CLOSE"}, session_id)
    assert closed["ClosedSessionId"] == session_id
    with pytest.raises(runtime.exceptions.ModelError):
        _invoke(runtime, {"inputs": "x"}, session_id)
    plain = requests.post(server.url("/invocations"), json={"inputs": "x"}, timeout=30)
    assert plain.status_code == 200


# 8. LMI custom formatters -------------------------------------------------------------------------
def test_lmi_custom_formatters_reshape_the_built_in_llm(tmp_path, serve_factory):
    from conftest import HANDLERS
    from tiny_models import build_model

    model = build_model(tmp_path / "llama", "llama")
    (model / "model.py").write_text((HANDLERS / "djl" / "formatters.py").read_text())
    (model / "serving.properties").write_text("option.num_kv_blocks=64\n")
    server = serve_factory(model).start()
    assert "native" in requests.get(server.url(f"/models/{server.model_name()}"),
                                    timeout=30).json()[0]["engineKind"]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    reference = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = tokenizer("def resolve_model_dir(config):", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = reference.generate(ids, max_new_tokens=5, do_sample=False,
                                       min_new_tokens=5)
    expected = generated[0, ids.shape[1]:].tolist()
    lines = [json.loads(line) for line in requests.post(
        server.url("/invocations"), timeout=60,
        json={"question": "def resolve_model_dir(config):", "length": 5}).text.splitlines()]
    assert len(lines) == 5 and lines[0]["first"] and not any(x["first"] for x in lines[1:])
    assert lines[-1]["finish"] == "length" and all("finish" not in x for x in lines[:-1])
    assert [x["id"] for x in lines] == expected
    with requests.post(server.url("/invocations"), timeout=60, stream=True,
                       json={"question": "x", "length": 3, "stream": True}) as streamed:
        assert len(list(streamed.iter_lines())) == 3
    refused = requests.post(server.url("/invocations"), json={"inputs": "x"}, timeout=30)
    assert refused.status_code == 400 and "custom_input" in refused.json()["message"]


# 2. test_model from the command line -----------------------------------------------------------
def test_djl_test_model_runs_a_suite_handler_without_a_server(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    directory = djl_handler_dir(tmp_path, "request_model")
    done = subprocess.run(
        [sys.executable, "-m", "djl_python.test_model", "--model-dir", str(directory),
         "--input", "tag=first", "hello", "--parameters", "Content-Type=text/plain"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]             # "<key>: <content>"
    described = json.loads(printed.partition(": ")[2])
    assert described["entries"] == [["tag", "first"], [None, "hello"]]   # DJL's unkeyed input
    assert described["properties"]["Content-Type"] == "text/plain"
