"""What the S3 and Hub serve tests share: a tiny checkpoint, and the greedy tokens `serve` gives
for it from its local directory (the reference every remote source must match)."""

from __future__ import annotations

import pytest
import requests

from conftest import ServeProcess
from tiny_models import build_model

PROMPTS = ["def resolve_model_dir(config):", "Grüße aus Köln! 🙂"]
# small KV cache and batch: these servers run side by side on a small machine
PROPERTIES = "option.num_kv_blocks=64\noption.max_rolling_batch_size=4\n"


def generate(server) -> list[list[int]]:
    """Greedy token ids (LMI schema, details on) for each prompt."""
    tokens = []
    for prompt in PROMPTS:
        reply = requests.post(server.url("/invocations"), timeout=60, json={
            "inputs": prompt, "parameters": {"details": True, "max_new_tokens": 8}})
        assert reply.status_code == 200, reply.text
        tokens.append([t["id"] for t in reply.json()["details"]["tokens"]])
    return tokens


def model_dir_with(tmp_path, properties: str):
    """A model directory holding only a serving.properties."""
    directory = tmp_path / "model"
    directory.mkdir(parents=True)
    (directory / "serving.properties").write_text(PROPERTIES + properties)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="module")
def local_tokens(tiny):
    """Greedy token ids of the checkpoint served from its local directory."""
    (tiny / "serving.properties").write_text(PROPERTIES)
    server = ServeProcess(tiny).start()
    try:
        return generate(server)
    finally:
        server.stop()
        (tiny / "serving.properties").unlink()
