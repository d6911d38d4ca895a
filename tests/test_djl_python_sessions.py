"""SessionManager: sessions are folders of pickle files under sessions_path, and expire."""
import os
import pickle
import time
import uuid

import numpy as np
import pytest

from djl_python import SessionManager


def manager(tmp_path, **options):
    return SessionManager({"sessions_path": str(tmp_path / "sessions"), **options})


def test_create_put_get_survives_a_new_manager(tmp_path):
    first = manager(tmp_path)
    session = first.create_session()
    assert uuid.UUID(session.session_id).version == 4
    session.put("history", ["hi", {"n": 1}])
    # the value is a plain pickle file in the session's folder
    with open(tmp_path / "sessions" / session.session_id / "history", "rb") as f:
        assert pickle.load(f) == ["hi", {"n": 1}]
    again = manager(tmp_path).get_session(session.session_id)
    assert again.get("history") == ["hi", {"n": 1}]
    assert again.get("missing", "default") == "default"


def test_keys_stay_inside_the_session_folder(tmp_path):
    session = manager(tmp_path).create_session()
    session.put("../escape", 1)
    assert os.listdir(tmp_path / "sessions") == [session.session_id]
    assert session.get("../escape") == 1


def test_close_removes_files(tmp_path):
    sessions = manager(tmp_path)
    session = sessions.create_session()
    assert sessions.close_session(session.session_id) is True
    assert not (tmp_path / "sessions" / session.session_id).exists()
    assert sessions.get_session(session.session_id) is None
    assert sessions.close_session(session.session_id) is False


def test_invalid_ids_are_refused(tmp_path):
    sessions = manager(tmp_path)
    for bad in ("", None, "../../etc", "x" * 36):
        with pytest.raises(ValueError):
            sessions.get_session(bad)
    with pytest.raises(ValueError):
        sessions.close_session("not-a-session")


def test_expired_sessions_are_gone(tmp_path, monkeypatch):
    sessions = manager(tmp_path, sessions_expiration="60")
    old = sessions.create_session()
    expires = old.get(".expiration_time")
    assert expires == pytest.approx(time.time() + 60, abs=5)
    later = expires + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert sessions.get_session(old.session_id) is None
    assert not (tmp_path / "sessions" / old.session_id).exists()


def test_creating_a_session_sweeps_expired_ones(tmp_path, monkeypatch):
    sessions = manager(tmp_path, sessions_expiration="10")
    old = sessions.create_session()
    start = time.time()
    monkeypatch.setattr(time, "time", lambda: start + 11)
    new = sessions.create_session()
    assert os.listdir(tmp_path / "sessions") == [new.session_id]
    assert old.session_id != new.session_id


def test_numpy_memmap_is_backed_by_the_file(tmp_path):
    session = manager(tmp_path).create_session()
    cache = session.get_as_numpy("kv", shape=(2, 3), dtype=np.float32, create=True)
    cache[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.flush()
    on_disk = np.fromfile(tmp_path / "sessions" / session.session_id / "kv", dtype=np.float32)
    assert on_disk.tolist() == [0, 1, 2, 3, 4, 5]


def test_default_expiration_and_path(monkeypatch, tmp_path):
    monkeypatch.setattr("djl_python.session_manager.default_sessions_path",
                        lambda: str(tmp_path / "default"))
    sessions = SessionManager({})
    assert sessions.expiration == 1200
    assert os.path.isdir(tmp_path / "default")
