"""The front-end process's connection to rank 0 (one per gunicorn worker, gevent-friendly).

A reader greenlet receives every message from the worker and puts it on the queue of the
request it belongs to; a watcher greenlet reads status.json and fails every request in flight
as soon as the worker group that accepted it is gone, so no client waits on a dead worker.
"""

from __future__ import annotations

import logging
import os
import uuid

import gevent
import zmq.green as zmq
from gevent.queue import Queue

from ..errors import ServingError
from ..workers import protocol
from ..workers.rundir import RunDir, StatusCache

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2
CONNECT_WAIT_MS = 3000


class WorkerGone:
    """Put on a request's queue when the worker group that held it died."""

    def __init__(self, message: str):
        self.message = message


def not_ready_error(status) -> ServingError:
    return ServingError(503, "ServiceUnavailable",
                        f"the model is not ready: {status.message or status.state}",
                        {"Retry-After": "5"})


class EngineClient:
    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.status = StatusCache(run_dir)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        self.socket.setsockopt(zmq.IDENTITY, f"fe-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode())
        self.socket.connect(run_dir.ipc_address)
        self.pending: dict[str, tuple[Queue, int]] = {}
        gevent.spawn(self._reader)
        gevent.spawn(self._watcher)

    # requests ---------------------------------------------------------------------------------
    def ready_generation(self) -> int:
        status = self.status.get()
        if not status.ready:
            raise not_ready_error(status)
        return status.generation

    def model_info(self) -> dict:
        return self.status.get().model

    def submit(self, message) -> Queue:
        """Send one request; its replies arrive on the returned queue."""
        box: Queue = Queue()
        self.pending[message.request_id] = (box, message.generation)
        try:
            # Just after a worker (re)start the connection may be a reconnect interval away.
            if not self.socket.poll(CONNECT_WAIT_MS, zmq.POLLOUT):
                raise zmq.Again()
            self.socket.send(protocol.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            self.pending.pop(message.request_id, None)
            raise ServingError(503, "ServiceUnavailable",
                               "the worker is not connected yet; retry shortly",
                               {"Retry-After": "1"}) from None
        return box

    def stats(self, timeout: float = 2.0) -> dict[str, float]:
        """The worker's live figures (queue, running sequences, KV blocks...); {} if silent."""
        request_id = f"stats-{uuid.uuid4().hex}"
        box: Queue = Queue()
        self.pending[request_id] = (box, self.status.get().generation)
        try:
            # as submit(): just after a worker (re)start the connection may not be up yet
            if not self.socket.poll(int(timeout * 1000), zmq.POLLOUT):
                return {}
            self.socket.send(protocol.encode(protocol.StatsRequest(request_id)), zmq.NOBLOCK)
            reply = box.get(timeout=timeout)
        except (zmq.ZMQError, gevent.queue.Empty):
            return {}
        finally:
            self.pending.pop(request_id, None)
        return reply.values if isinstance(reply, protocol.Stats) else {}

    def release(self, request_id: str) -> None:
        self.pending.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        """The client went away: tell the worker to drop the request and free its memory."""
        if self.pending.pop(request_id, None) is None:
            return
        try:
            self.socket.send(protocol.encode(protocol.Abort(request_id)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    # greenlets --------------------------------------------------------------------------------
    def _reader(self) -> None:
        while not self.socket.closed:
            try:
                frame = self.socket.recv()
            except zmq.ZMQError:
                if self.socket.closed:
                    return
                log.exception("receiving from the worker failed")
                gevent.sleep(0.1)
                continue
            try:
                message = protocol.decode_to_frontend(frame)
            except Exception:  # noqa: BLE001 - keep reading whatever one bad frame did
                log.exception("bad message from the worker")
                continue
            if isinstance(message, protocol.TokenBatch):
                for delta in message.deltas:
                    entry = self.pending.get(delta.request_id)
                    if entry:
                        entry[0].put(delta)
            else:
                entry = self.pending.get(message.request_id)
                if entry:
                    entry[0].put(message)

    def _watcher(self) -> None:
        while not self.socket.closed:
            gevent.sleep(WATCH_INTERVAL_S)
            status = self.status.get()
            if not self.pending:
                continue
            draining = status.state == "stopping"      # in-flight requests may finish
            for request_id, (box, generation) in list(self.pending.items()):
                if generation != status.generation or not (status.ready or draining):
                    self.pending.pop(request_id, None)
                    box.put(WorkerGone(f"the worker stopped while handling the request "
                                       f"({status.message or status.state})"))


_client: EngineClient | None = None
_client_pid: int | None = None


_others: dict[str, EngineClient] = {}       # registered models' clients, by run directory
_others_pid: int | None = None


def close_client() -> None:
    """Close this process's sockets so the worker processes can exit promptly."""
    global _client
    if _client is not None and _client_pid == os.getpid():
        _client.close()
        _client = None
    if _others_pid == os.getpid():
        for client in _others.values():
            client.close()
    _others.clear()


def get_model_client(run_dir: RunDir) -> EngineClient:
    """The client of a registered model's worker group (one per process, as get_client)."""
    global _others_pid
    if _others_pid != os.getpid():
        _others.clear()                      # forked: the parent's sockets are not ours
        _others_pid = os.getpid()
    client = _others.get(str(run_dir.path))
    if client is None:
        client = _others[str(run_dir.path)] = EngineClient(run_dir)
    return client


def drop_model_client(run_dir: RunDir) -> None:
    client = _others.pop(str(run_dir.path), None)
    if client is not None:
        client.close()


def get_client(run_dir: RunDir) -> EngineClient:
    """One client per process, created after gunicorn forked the worker."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = EngineClient(run_dir)
        _client_pid = os.getpid()
    return _client
