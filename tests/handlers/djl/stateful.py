"""A stateful handler in DJL's style: it opens, uses and closes sessions with SessionManager."""

from djl_python import Input, Output, SessionManager

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
_manager: SessionManager | None = None


def handle(inputs: Input):
    global _manager
    if inputs.is_empty():
        _manager = SessionManager(inputs.get_properties())
        return None
    request = inputs.get_as_json()
    outputs = Output().add_property("Content-Type", "application/json")
    if request.get("requestType") == "NEW_SESSION":
        session = _manager.create_session()
        session.put("turns", 0)
        return outputs.add_property(SESSION_HEADER, session.session_id).add_as_json(
            {"result": "created"})
    session_id = inputs.get_property(SESSION_HEADER)
    session = _manager.get_session(session_id) if session_id else None
    if session is None:
        return outputs.error(f"no session {session_id!r}", code=400)
    if request.get("requestType") == "CLOSE":
        _manager.close_session(session_id)
        return outputs.add_property("X-Amzn-SageMaker-Session-Closed", "true").add_as_json(
            {"result": "closed"})
    turns = session.get("turns") + 1
    session.put("turns", turns)
    return outputs.add_as_json({"turns": turns, "said": request.get("text")})
