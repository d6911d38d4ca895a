"""Stateful sessions (SageMaker's NEW_SESSION / CLOSE), kept as files on disk.

Each session is a folder named by its UUID under `sessions_path`; a value is one pickle file
per key, so a session survives a worker restart. Options (handler properties, prefix
stripped): `sessions_path` (default /dev/shm/djl_sessions, else <tmp>/djl_sessions) and
`sessions_expiration` in seconds (default 1200).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
import time
import uuid

log = logging.getLogger(__name__)

UUID_PATTERN = re.compile(r"^[0-9a-f-]{36}$")
DEFAULT_EXPIRATION_S = 20 * 60
CREATION_KEY = ".creation_time"
EXPIRATION_KEY = ".expiration_time"


def default_sessions_path() -> str:
    # /dev/shm keeps session files in memory where the platform has it.
    root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(root, "djl_sessions")


class Session:
    def __init__(self, session_id: str, session_root: str):
        self.session_id = session_id
        self.files_path = os.path.join(session_root, session_id)

    def put(self, key: str, value) -> None:
        with open(self._path(key), "wb") as f:
            pickle.dump(value, f)

    def get(self, key: str, d=None):
        """The value stored under key, or d when there is none."""
        path = self._path(key)
        if not os.path.isfile(path):
            return d
        with open(path, "rb") as f:
            return pickle.load(f)

    def get_as_numpy(self, key: str, shape, dtype=None, create: bool = False):
        """A numpy memmap of the key's file (created empty first when create is set)."""
        import numpy as np

        if create:
            open(self._path(key), "wb").close()
        return np.memmap(self._path(key), dtype=dtype or np.float32, mode="r+", shape=shape)

    def remove(self) -> bool:
        if not os.path.exists(self.files_path):
            log.warning("session not found: %s", self.session_id)
            return False
        log.info("closing session: %s", self.session_id)
        shutil.rmtree(self.files_path)
        return True

    def _path(self, key: str) -> str:
        # A key never leaves the session's folder.
        return os.path.join(self.files_path, key.replace("/", "-"))


class SessionManager:
    def __init__(self, properties: dict):
        self.expiration = int(properties.get("sessions_expiration", DEFAULT_EXPIRATION_S))
        self.sessions_path = properties.get("sessions_path") or default_sessions_path()
        os.makedirs(self.sessions_path, exist_ok=True)

    def create_session(self) -> Session:
        self._clean_expired_sessions()
        session = Session(str(uuid.uuid4()), self.sessions_path)
        os.makedirs(session.files_path)
        now = time.time()
        session.put(CREATION_KEY, now)
        session.put(EXPIRATION_KEY, now + self.expiration)
        return session

    def get_session(self, session_id: str) -> Session | None:
        """The live session, or None when it does not exist or has expired."""
        _check_id(session_id)
        session = Session(session_id, self.sessions_path)
        if not os.path.isdir(session.files_path):
            return None
        if self._expired(session):
            session.remove()
            return None
        return session

    def close_session(self, session_id: str) -> bool:
        _check_id(session_id)
        return Session(session_id, self.sessions_path).remove()

    def _expired(self, session: Session) -> bool:
        expires = session.get(EXPIRATION_KEY)
        if expires is None:             # written by an older manager: creation + expiration
            created = session.get(CREATION_KEY, 0)
            expires = created + self.expiration
        return time.time() > expires

    def _clean_expired_sessions(self) -> None:
        for name in os.listdir(self.sessions_path):
            if UUID_PATTERN.match(name):
                session = Session(name, self.sessions_path)
                if self._expired(session):
                    session.remove()


def _check_id(session_id: str) -> None:
    if not session_id or not UUID_PATTERN.match(session_id):
        raise ValueError(f"invalid session_id: {session_id}")
