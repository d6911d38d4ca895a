"""SageMaker stateful sessions for the built-in LLM handler (DJL's stateful_sessions.md).

A request with `{"requestType": "NEW_SESSION"}` (boto3: `SessionId="NEW_SESSION"`) opens a
session and answers `X-Amzn-SageMaker-Session-Id: <id>; Expires=<UTC time>`; one with
`{"requestType": "CLOSE"}` and the session's id closes it and answers
`X-Amzn-SageMaker-Closed-Session-Id: <id>`. Any other request naming a session must name a
live one. Sessions are files under `option.sessions_path` (djl_python.SessionManager), so
every front-end process sees the same ones. A session's turns reuse the KV blocks of the
conversation so far through the prefix cache (each turn's prompt starts with the last one's).
"""

from __future__ import annotations

import datetime
import json

from flask import request

from ..errors import ServingError, bad_request
from .http_utils import json_response

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION = "NEW_SESSION"


class LlmSessions:
    def __init__(self, config):
        from ..config.values import boolean

        self.enabled = boolean(config.option("enable_stateful_sessions") or "true")
        self._options = {k: v for k, v in config.options.items()
                         if k in ("sessions_path", "sessions_expiration")}
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            from djl_python import SessionManager

            self._manager = SessionManager(self._options)
        return self._manager

    def intercept(self):
        """A response for session requests (open, close, unknown session), else None: the
        request goes on to the LLM."""
        session_id = (request.headers.get(SESSION_HEADER) or "").strip()
        request_type = _request_type()
        if not session_id and request_type is None:
            return None
        if not self.enabled:
            raise bad_request(f"stateful sessions are off (option.enable_stateful_sessions="
                              f"false): send no {SESSION_HEADER} header and no requestType")
        if request_type == NEW_SESSION or (session_id == NEW_SESSION and request_type is None):
            return self._open()
        if request_type == "CLOSE":
            return self._close(session_id)
        if request_type is not None:
            raise bad_request(f"requestType={request_type!r}: allowed: NEW_SESSION, CLOSE")
        self._live(session_id)
        return None

    def _open(self):
        session = self.manager.create_session()
        expires = datetime.datetime.fromtimestamp(session.get(".expiration_time"),
                                                  tz=datetime.timezone.utc)
        response = json_response({"result": f"Session {session.session_id} created"})
        response.headers[SESSION_HEADER] = (f"{session.session_id}; "
                                            f"Expires={expires:%Y-%m-%dT%H:%M:%SZ}")
        return response

    def _close(self, session_id: str):
        self._live(session_id)
        self.manager.close_session(session_id)
        response = json_response({"result": f"Session {session_id} closed"})
        response.headers[CLOSED_HEADER] = session_id
        return response

    def _live(self, session_id: str) -> None:
        if not session_id or session_id == NEW_SESSION:
            raise bad_request(f"requestType=CLOSE needs the session's id in {SESSION_HEADER}")
        try:
            session = self.manager.get_session(session_id)
        except ValueError:
            session = None
        if session is None:
            raise ServingError(400, "SessionNotFound",
                               f"session {session_id!r} does not exist or has expired; open "
                               f"one with SessionId={NEW_SESSION}")


def _request_type() -> str | None:
    if request.mimetype != "application/json":
        return None
    data = request.get_data(cache=True)
    if b"requestType" not in data:           # most requests: no second parse
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if isinstance(body, dict) and "requestType" in body:
        return str(body["requestType"])
    return None
