"""What an operator relies on, through the real `serve`: /metrics, overload bursts, faults
during load, URL entry points only when allowed."""

from __future__ import annotations

import concurrent.futures as futures
import http.server
import os
import signal
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import HANDLERS, error_line, handler_dir, run_serve_to_exit, wait_for
from container.bench.soak import tree_rss_mib
from tiny_models import build_model, reference_greedy


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = requests.get(server.url("/metrics"), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


# --- metrics --------------------------------------------------------------------------------
def test_metrics_count_handler_requests_queue_time_and_printed_metrics(tmp_path, serve_factory):
    server = serve_factory(handler_dir(tmp_path, "echo", "batch_size=1\n")).start()
    before = scrape(server)
    assert value(before, "serve_worker_ready") == 1.0
    assert value(before, "serve_model_load_seconds") > 0
    for i in range(5):
        assert requests.post(server.url("/invocations"), json={"i": i}, timeout=10).ok
    assert requests.post(server.url("/invocations"), data=b'{"a":',
                         headers={"Content-Type": "application/json"},
                         timeout=10).status_code == 400
    requests.get(server.url("/no/such/route"), timeout=10)

    after = wait_for(lambda: (lambda s: s if value(
        s, "serve_requests_total", route="/invocations", method="POST", status="200") >= 5
        else None)(scrape(server)), timeout=10)
    assert value(after, "serve_requests_total", route="/invocations", method="POST",
                 status="400") == 1
    assert value(after, "serve_requests_total", route="unmatched", method="GET",
                 status="404") == 1
    assert value(after, "serve_request_duration_seconds_count", route="/invocations") >= 6
    # the worker saw 5 requests (the malformed one never left the front end)
    assert value(after, "serve_request_queue_seconds_count", kind="handler") == 5
    # the handler printed "[METRICS]EchoBatchSize.Count:1|#Model:echo" once per request
    assert value(after, "serve_handler_metric", name="EchoBatchSize", unit="Count",
                 dimensions="Model=echo") == 1.0
    assert value(after, "serve_handler_metric_lines_total", name="EchoBatchSize") == 5
    assert value(after, "serve_worker_restarts_total") == 0
    # the handler's line still reaches the log
    assert "[METRICS]EchoBatchSize.Count:1|#Model:echo" in server.log

    os.kill(server.worker_pid(), signal.SIGKILL)
    wait_for(lambda: requests.get(server.url("/ping"), timeout=2).status_code == 200 and
             value(scrape(server), "serve_worker_restarts_total") == 1, timeout=60)
    # counters survive the worker's restart: they are the server's, not one process's
    assert value(scrape(server), "serve_handler_metric_lines_total", name="EchoBatchSize") == 5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("ops") / "tiny-llama", "llama")


def test_metrics_for_generation_ttft_itl_tokens_and_kv_blocks(tiny_dir, tmp_path, serve_factory):
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving.properties").write_text(
        f"option.model_id={tiny_dir}\noption.num_kv_blocks=32\noption.kv_block_size=8\n")
    server = serve_factory(model).start()
    # a scrape leaves the worker's gauges out when the answering front-end process does not
    # hear from the worker within a second (just after a start, on a loaded machine): ask again
    idle = wait_for(lambda: (lambda s: s if ("serve_kv_cache_blocks_total", ()) in s
                             else None)(scrape(server)), timeout=30)
    assert value(idle, "serve_kv_cache_blocks_total") == 32
    assert value(idle, "serve_running_requests") == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    prompts = ["the model serves", "tokens quickly while requests", "join and leave the batch"]
    new_tokens = 6
    for prompt in prompts:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens,
                                                 "ignore_eos": True}, "stream": True}
        with requests.post(server.url("/invocations"), json=body, stream=True,
                           timeout=60) as response:
            assert response.status_code == 200, response.text
            assert len([line for line in response.iter_lines() if line]) == new_tokens
    # the client can hold its last token before the engine loop publishes its idle figures
    samples = wait_for(lambda: (lambda s: s if value(
        s, "serve_e2e_request_latency_seconds_count") == 3 and value(
        s, "serve_running_requests") == 0 else None)(scrape(server)), timeout=10)
    assert value(samples, "serve_time_to_first_token_seconds_count") == 3
    assert value(samples, "serve_inter_token_latency_seconds_count") == 3 * (new_tokens - 1)
    assert value(samples, "serve_generation_tokens_total") == 3 * new_tokens
    assert value(samples, "serve_prompt_tokens_total") == sum(
        len(tokenizer(p)["input_ids"]) for p in prompts)
    assert value(samples, "serve_generation_requests_total", finish_reason="length") == 3
    assert value(samples, "serve_request_queue_seconds_count", kind="llm") == 3
    assert value(samples, "serve_engine_steps_total") >= new_tokens
    assert value(samples, "serve_running_requests") == 0
    assert value(samples, "serve_waiting_requests") == 0


# --- overload ------------------------------------------------------------------------------
def test_burst_of_ten_times_the_queue_handler(tmp_path, serve_factory):
    queue_size = 4
    server = serve_factory(handler_dir(tmp_path, "echo", f"job_queue_size={queue_size}\n"
                                                         "batch_size=1\n")).start()
    requests.post(server.url("/invocations"), json={"warm": 1}, timeout=10)
    rss_before = tree_rss_mib(server.process.pid)

    def send(i):
        started = time.monotonic()
        response = requests.post(server.url("/invocations"), json={"i": i, "sleep": 0.2},
                                 timeout=60)
        return i, response, time.monotonic() - started

    burst = 10 * queue_size
    for _round in range(3):          # memory must not creep from one burst to the next
        with futures.ThreadPoolExecutor(burst) as pool:
            results = list(pool.map(send, range(burst)))
        accepted = [(i, r) for i, r, _ in results if r.status_code == 200]
        rejected = [(r, t) for _, r, t in results if r.status_code != 200]
        assert len(accepted) >= queue_size
        for i, response in accepted:            # every accepted request got its own answer
            assert response.json()["echo"] == {"i": i, "sleep": 0.2}
        assert rejected, "a burst of 10x job_queue_size must overflow the queue"
        for response, elapsed in rejected:
            assert response.status_code == 503, response.text
            assert response.json()["type"] == "QueueFull"
            assert int(response.headers["Retry-After"]) >= 1
            assert elapsed < 3.0, "rejections must not wait behind the accepted requests"
    growth = tree_rss_mib(server.process.pid) - rss_before
    assert growth < 150, f"serve grew by {growth:.0f} MiB over three bursts"
    assert requests.post(server.url("/invocations"), json={"after": 1}, timeout=10).ok


def test_burst_of_ten_times_the_queue_llm_accepted_answers_are_right(tiny_dir, tmp_path,
                                                                      serve_factory):
    queue_size = 3
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving.properties").write_text(
        f"option.model_id={tiny_dir}\njob_queue_size={queue_size}\noption.num_kv_blocks=32\n"
        "option.kv_block_size=8\n")
    server = serve_factory(model).start()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    words = "the model serves tokens quickly while requests join and leave".split()
    prompts = [f"{words[i % 10]} {words[(3 * i) % 10]} {words[(7 * i + 1) % 10]}"
               for i in range(10 * queue_size)]
    expected = reference_greedy(tiny_dir, [tokenizer(p)["input_ids"] for p in prompts], 8)

    def send(i):
        body = {"inputs": prompts[i], "parameters": {"max_new_tokens": 8, "ignore_eos": True,
                                                     "details": True}}
        return i, requests.post(server.url("/invocations"), json=body, timeout=120)

    with futures.ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(send, range(len(prompts))))
    accepted = [(i, r) for i, r in results if r.status_code == 200]
    rejected = [r for _, r in results if r.status_code != 200]
    assert len(accepted) >= queue_size and rejected
    for i, response in accepted:
        tokens = [t["id"] for t in response.json()["details"]["tokens"]]
        assert tokens == expected[i]
    for response in rejected:
        assert response.status_code == 503 and response.json()["type"] == "QueueFull"
        assert response.headers["Retry-After"]
    stats = scrape(server)
    assert value(stats, "serve_worker_requests_in_flight") == 0
    assert value(stats, "serve_kv_cache_blocks_used") <= value(stats, "serve_kv_cache_blocks_total")


# --- faults during load ------------------------------------------------------------------------
@pytest.mark.slow
def test_s3_stalling_during_load_stops_at_model_loading_timeout(tiny_dir, tmp_path):
    from s3_helpers import MotoServer, S3Proxy, client, s3_env, upload_dir

    moto = MotoServer()
    proxy = S3Proxy(moto.port)
    try:
        s3 = client(moto.endpoint)
        s3.create_bucket(Bucket="stall")
        upload_dir(s3, tiny_dir, "stall", "tiny/")
        proxy.add_fault("stall", count=100,
                        match=lambda method, key: method == "GET" and key.endswith(".safetensors"))
        model = tmp_path / "model"
        model.mkdir()
        (model / "serving.properties").write_text(
            "option.model_id=s3://stall/tiny/\noption.model_loading_timeout=8\n")
        started = time.monotonic()
        code, _, stderr = run_serve_to_exit(model, env=s3_env(
            proxy.endpoint, SERVING_DOWNLOAD_DIR=str(tmp_path / "dl")), timeout=90)
        elapsed = time.monotonic() - started
    finally:
        proxy.stop()
        moto.stop()
    assert code != 0
    assert "model_loading_timeout=8" in error_line(stderr)
    assert elapsed < 40, f"serve took {elapsed:.0f}s to give up on a stalled download"
    assert proxy.injected["stall"] >= 1
    partials = list((tmp_path / "dl").rglob("*.safetensors"))
    assert not partials, f"a stalled download left a file that looks complete: {partials}"


# --- safety ------------------------------------------------------------------------------------
@pytest.fixture
def handler_over_http():
    """A local HTTP server that serves tests/handlers/ (an entry point 'from a URL')."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(HANDLERS), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_entry_point_url_is_refused_unless_the_operator_allows_it(tmp_path, handler_over_http):
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving.properties").write_text(f"option.entryPoint={handler_over_http}/echo.py\n")
    code, _, stderr = run_serve_to_exit(model, timeout=60)
    assert code != 0
    line = error_line(stderr)
    assert "SERVING_ALLOW_ENTRYPOINT_URL=true" in line and "echo.py" in line


def test_entry_point_url_loads_when_allowed(tmp_path, handler_over_http, serve_factory):
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving.properties").write_text(f"option.entryPoint={handler_over_http}/echo.py\n")
    server = serve_factory(model, env={"SERVING_ALLOW_ENTRYPOINT_URL": "true"}).start()
    response = requests.post(server.url("/invocations"), json={"from": "url"}, timeout=10)
    assert response.status_code == 200 and response.json()["echo"] == {"from": "url"}


# --- shutdown ----------------------------------------------------------------------------------
def test_sigterm_finishes_streams_in_flight_refuses_new_work_and_exits_zero(tiny_dir, tmp_path,
                                                                          serve_factory):
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving.properties").write_text(f"option.model_id={tiny_dir}\n"
                                              "graceful_timeout=60\n")
    server = serve_factory(model).start()
    new_tokens = 300
    results: dict[int, list] = {}
    finished_at: dict[int, float] = {}

    def stream(i):
        body = {"inputs": f"request {i} the model", "stream": True,
                "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True}}
        with requests.post(server.url("/invocations"), json=body, stream=True,
                           timeout=120) as response:
            assert response.status_code == 200
            results[i] = [line for line in response.iter_lines() if line]
            finished_at[i] = time.monotonic()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: value(scrape(server), "serve_running_requests") >= 1, timeout=30,
             interval=0.05)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.5)
    try:
        late = requests.post(server.url("/invocations"), json={"inputs": "late"}, timeout=5)
        assert late.status_code == 503, late.text
    except requests.ConnectionError:
        pass                                  # the listening socket is already closed: fine
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    assert max(finished_at.values()) > signalled, "no stream was in flight at SIGTERM"
    assert all(len(lines) == new_tokens for lines in results.values()), \
        {i: len(lines) for i, lines in results.items()}
    assert server.wait_exit(60) == 0


def test_remote_code_in_a_checkpoint_never_runs_by_default(tiny_dir, tmp_path):
    import json
    import shutil

    model = tmp_path / "evil"
    shutil.copytree(tiny_dir, model)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["EvilForCausalLM"], model_type="evil",
                  auto_map={"AutoConfig": "evil.EvilConfig",
                            "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    code, _, stderr = run_serve_to_exit(model, timeout=90)
    assert code != 0
    line = error_line(stderr)
    assert "EvilForCausalLM" in line
    assert not marker.exists(), "the checkpoint's code ran without option.trust_remote_code"
