"""option.model_id as a Hugging Face Hub id, resolved by the real huggingface_hub client: from a
cache on disk in its own layout, or from a stand-in Hub served over HTTP on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import error_line, free_port, repo_env, run_serve_to_exit
from hub_helpers import COMMIT, StandInHub, build_hf_cache
from serve_helpers import PROPERTIES, generate, local_tokens, model_dir_with, tiny  # noqa: F401

pytestmark = pytest.mark.slow


def repo_files(model_dir: Path) -> dict[str, bytes]:
    """The tiny checkpoint as a Hub repo, plus files the engine must never fetch."""
    files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())
             if p.is_file() and p.name != "serving.properties"}
    files["pytorch_model.bin"] = b"pickled duplicate of the weights"
    files["onnx/model.onnx"] = b"another format"
    files["original/consolidated.00.pth"] = b"yet another"
    return files


@pytest.fixture
def stand_in_hub(tiny):
    hub = StandInHub({"org/tiny": {"files": repo_files(tiny)},
                      "org/gated": {"files": repo_files(tiny), "gated": True}})
    yield hub
    hub.stop()


def test_offline_cached_id_serves_the_same_tokens_with_no_network_call(
        tiny, local_tokens, tmp_path, stand_in_hub, serve_factory):
    build_hf_cache(tmp_path / "hf_home" / "hub", "org/tiny", tiny)
    server = serve_factory(model_dir_with(tmp_path, ""), env={
        "HF_MODEL_ID": "org/tiny", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": stand_in_hub.endpoint}).start()
    assert generate(server) == local_tokens
    assert sum(stand_in_hub.requests.values()) == 0
    assert "models--org--tiny/snapshots/" + COMMIT in server.log


FETCH = ("import logging, sys; logging.basicConfig(level=logging.INFO)\n"
         "from container.storage.hub import fetch_hub_model\n"
         "class Config:\n"
         "    def option(self, name):\n"
         "        return sys.argv[2] if name == 'revision' and len(sys.argv) > 2 else None\n"
         "print('DIR', fetch_hub_model(sys.argv[1], Config()), flush=True)\n")


def test_unreachable_hub_uses_the_cached_revision(tiny, tmp_path):
    """No HF_HUB_OFFLINE, but nothing listens at HF_ENDPOINT: the cached tag resolves."""
    snapshot = build_hf_cache(tmp_path / "hf_home" / "hub", "org/tiny", tiny, refs=("main", "v1"))
    env = repo_env({"HF_HOME": str(tmp_path / "hf_home"),
                    "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    result = subprocess.run([sys.executable, "-c", FETCH, "org/tiny", "v1"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"DIR {snapshot}" in result.stdout


def test_offline_id_not_in_cache_stops_with_one_line(tmp_path, stand_in_hub):
    home = tmp_path / "hf_home"
    code, _, stderr = run_serve_to_exit(model_dir_with(tmp_path, ""), env={
        "HF_MODEL_ID": "org/absent", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
        "HF_ENDPOINT": stand_in_hub.endpoint})
    line = error_line(stderr)
    assert code != 0
    assert "option.model_id=org/absent" in line
    assert f"not in the Hugging Face cache {home / 'hub'}" in line
    assert "HF_HUB_OFFLINE=1" in line and "hf download org/absent" in line
    assert "local directory or an s3:// URL" in line
    assert sum(stand_in_hub.requests.values()) == 0


@pytest.mark.parametrize("model_id, extra, cause", [
    ("org/missing", {}, "no such repository on http://127.0.0.1:{port}, or it is private and "
                        "no HF_TOKEN is set"),
    ("org/gated", {}, "the repository is gated"),
    ("org/tiny", {"HF_TOKEN": "hf_bad"}, "refused HF_TOKEN (401 invalid credentials)"),
    ("org/tiny", {"HF_REVISION": "v9"}, "revision v9 does not exist"),
])
def test_stand_in_hub_errors_stop_start_up_with_one_line(tmp_path, stand_in_hub, model_id, extra,
                                                         cause):
    port = stand_in_hub.server.server_address[1]
    code, _, stderr = run_serve_to_exit(model_dir_with(tmp_path, ""), env={
        "HF_MODEL_ID": model_id, "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": stand_in_hub.endpoint, **extra})
    line = error_line(stderr)
    assert code != 0
    assert f"option.model_id={model_id}" in line and cause.format(port=port) in line, line


def test_stand_in_hub_download_once_per_host_only_what_the_engine_reads(
        tiny, local_tokens, tmp_path, stand_in_hub, serve_factory):
    downloads = tmp_path / "downloads"
    env = repo_env({"HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": stand_in_hub.endpoint,
                    "SERVING_DOWNLOAD_DIR": str(downloads)})
    ranks = [subprocess.Popen([sys.executable, "-c", FETCH, "org/tiny"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    snapshot = downloads / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    assert all(f"DIR {snapshot}" in out for out in outputs), outputs
    wanted = {n for n in repo_files(tiny) if n.endswith((".json", ".safetensors"))
              and "/" not in n}
    assert {p.name for p in snapshot.iterdir()} == wanted
    for name in repo_files(tiny):
        assert stand_in_hub.count(f"/org/tiny/resolve/{COMMIT}/{name}") == (name in wanted), name
    assert not (tmp_path / "hf_home" / "hub").exists()      # SERVING_DOWNLOAD_DIR wins

    stand_in_hub.requests.clear()
    server = serve_factory(model_dir_with(tmp_path, "option.model_id=org/tiny\n"), env={
        "HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": stand_in_hub.endpoint,
        "SERVING_DOWNLOAD_DIR": str(downloads)}).start()
    assert generate(server) == local_tokens
    assert stand_in_hub.count("/resolve/") == 0            # all cached: nothing fetched again


def test_hf_model_id_with_a_path_still_serves_the_directory(tiny, local_tokens, tmp_path,
                                                           serve_factory):
    server = serve_factory(model_dir_with(tmp_path, ""), env={"HF_MODEL_ID": str(tiny)}).start()
    assert generate(server) == local_tokens
