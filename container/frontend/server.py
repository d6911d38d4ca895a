"""Runs the flask app under gunicorn with gevent workers, on a socket serve already bound.

serve binds the port itself (so "port in use" is one clear line) and passes the descriptor;
gunicorn's workers each take any request. gevent lets one worker hold thousands of streaming
connections and answer "queue full" at once instead of parking them behind busy threads.
"""

from __future__ import annotations

import argparse
import json

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import NoMoreData, ParseException

from ..config.loader import ServingConfig
from ..errors import bad_request
from ..logging_setup import setup_logging
from ..workers.rundir import RunDir


LIMIT_REQUEST_LINE = 8190           # bytes of "METHOD /path?query HTTP/1.1"
LIMIT_REQUEST_FIELDS = 100          # headers
LIMIT_REQUEST_FIELD_SIZE = 8190     # bytes of one header line

_GUNICORN_ERRORS = {
    414: ("URITooLong", f"the request line is over {LIMIT_REQUEST_LINE} bytes"),
    431: ("RequestHeaderFieldsTooLarge",
          f"the request's headers are too large: at most {LIMIT_REQUEST_FIELDS} headers of at "
          f"most {LIMIT_REQUEST_FIELD_SIZE} bytes each"),
}


def _json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn answers a request it cannot parse (bad request line, headers too large...)
    itself, with an HTML page; this writes the JSON error body every other error has."""
    if status_int == 400 and "Request Line is too large" in (mesg or ""):
        status_int, reason = 414, "URI Too Long"     # gunicorn before 27 said 400
    type_, message = _GUNICORN_ERRORS.get(status_int, ("".join(reason.split()), mesg or reason))
    body = json.dumps({"code": status_int, "type": type_, "message": message}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _malformed_body(error: Exception):
    """gunicorn raises these while the app reads the body (a bad chunk, a body cut short): the
    client's fault, a 400, not an internal error."""
    from .http_utils import error_response

    if isinstance(error, NoMoreData):
        return error_response(bad_request("the body ended before its announced length"))
    return error_response(bad_request(f"the body is malformed: {error}"))


def _worker_exit(server, worker) -> None:
    from .engine_client import close_client

    close_client()


def _child_exit(server, worker) -> None:
    """A gunicorn worker is gone: drop its live gauges from the merged metrics."""
    from ..metrics import multiprocess_enabled

    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class FrontendApplication(BaseApplication):
    def __init__(self, run_dir: str, fd: int, config: ServingConfig):
        self.run_dir = run_dir
        self.fd = fd
        self.serving_config = config
        super().__init__()

    def load_config(self):
        settings = {
            "bind": [f"fd://{self.fd}"],
            "workers": int(self.serving_config.setting("frontend_workers")),
            "worker_class": "gevent",
            "worker_connections": 20000,
            "timeout": 120,
            "graceful_timeout": int(round(float(self.serving_config.setting("graceful_timeout")))),
            "keepalive": 5,          # idle keep-alive connections hold up SIGTERM drain
            "accesslog": None,
            "loglevel": self.serving_config.setting("log_level"),
            "proc_name": "serve-frontend",
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS,
            "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            "control_socket_disable": True,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        gunicorn_util.write_error = _json_error
        app = create_app(self.run_dir)
        app.register_error_handler(ParseException, _malformed_body)
        app.register_error_handler(NoMoreData, _malformed_body)
        return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    run_dir = RunDir(args.run_dir)
    config = ServingConfig.from_json(run_dir.config_path.read_text(encoding="utf-8"))
    setup_logging(config.setting("log_level"), "frontend")
    FrontendApplication(args.run_dir, args.fd, config).run()


if __name__ == "__main__":
    main()
