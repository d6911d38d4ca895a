"""Hugging Face Hub stand-ins for tests: a cache built on disk in huggingface_hub's own layout,
and a small HTTP server answering the few Hub API routes huggingface_hub's snapshot_download
calls (repo info, file tree, resolve), with the Hub's error headers."""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(hub_cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT,
                   refs=("main",)) -> Path:
    """models--org--name/{blobs,snapshots/<commit>,refs/<ref>} as huggingface_hub writes it:
    content-addressed blobs, snapshot files as relative symlinks into them."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(model_dir.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.name
        link.unlink(missing_ok=True)
        link.symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class StandInHub:
    """repos: {repo_id: {"files": {name: bytes}, "gated": bool}}; tokens: the valid ones."""

    def __init__(self, repos: dict, tokens=("hf_good",)):
        self.repos, self.tokens = repos, set(tokens)
        self.requests: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.answer(self, body=True)

            def do_HEAD(self):
                hub.answer(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, fragment: str, method: str = "GET") -> int:
        return sum(n for (m, p), n in self.requests.items() if m == method and fragment in p)

    # -- routes -----------------------------------------------------------------------------------
    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self.lock:
            self.requests[(request.command, path)] += 1
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token is not None and token not in self.tokens:
            return self.reply(request, 401, {"error": "Invalid credentials in Authorization header"},
                              error_message="Invalid credentials in Authorization header")
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            for repo_id in self.repos:
                if rest.startswith(repo_id + "/"):
                    return self.api(request, repo_id, rest[len(repo_id) + 1:], token)
            return self.reply(request, 401, {"error": "Repository not found"},
                              error_code="RepoNotFound")
        for repo_id in self.repos:
            prefix = f"/{repo_id}/resolve/"
            if path.startswith(prefix):
                revision, _, name = path[len(prefix):].partition("/")
                return self.resolve(request, repo_id, revision, name, token, body)
        return self.reply(request, 401, {"error": "Repository not found"},
                          error_code="RepoNotFound")

    def known_revision(self, revision: str) -> bool:
        return revision in ("main", COMMIT)

    def api(self, request, repo_id: str, rest: str, token) -> None:
        kind, _, revision = rest.partition("/")
        revision = revision.split("/")[0]
        if not self.known_revision(revision):
            return self.reply(request, 404, {"error": f"Invalid rev id: {revision}"},
                              error_code="RevisionNotFound")
        files = self.repos[repo_id]["files"]
        if kind == "revision":
            return self.reply(request, 200, {
                "id": repo_id, "sha": COMMIT, "private": False,
                "gated": "auto" if self.repos[repo_id].get("gated") else False,
                "siblings": [{"rfilename": name} for name in files]})
        if kind == "tree":
            return self.reply(request, 200, [
                {"type": "file", "path": name, "size": len(data),
                 "oid": hashlib.sha1(data).hexdigest()} for name, data in files.items()])
        return self.reply(request, 404, {"error": "not here"})

    def resolve(self, request, repo_id, revision, name, token, body: bool) -> None:
        repo = self.repos[repo_id]
        if repo.get("gated") and token not in self.tokens:
            return self.reply(request, 403, {"error": "Access to this model is restricted"},
                              error_code="GatedRepo",
                              error_message="Access to model is restricted")
        if not self.known_revision(revision):
            return self.reply(request, 404, {"error": "Invalid rev id"},
                              error_code="RevisionNotFound")
        data = repo["files"].get(name)
        if data is None:
            return self.reply(request, 404, {"error": "Entry not found"},
                              error_code="EntryNotFound")
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        request.send_response(200)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    @staticmethod
    def reply(request, status: int, payload, error_code: str | None = None,
              error_message: str | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.send_header("X-Repo-Commit", COMMIT) if status == 200 else None
        if error_code:
            request.send_header("X-Error-Code", error_code)
        if error_message:
            request.send_header("X-Error-Message", error_message)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
