"""Rank 0's end of the front-end socket.

An IO thread owns the zmq ROUTER socket. It admits requests (job_queue_size) or rejects them
at once, even while a handler or an engine step is busy, and forwards what other threads send.
Other threads never touch the ROUTER: they push (identity, payload) over an inproc socket.
"""

from __future__ import annotations

import logging
import queue
import threading

import zmq

from . import protocol

log = logging.getLogger(__name__)

_OUTBOX = "inproc://serve-outbox"


class IpcServer:
    def __init__(self, address: str, generation: int, job_queue_size: int):
        self.address = address
        self.generation = generation
        self.job_queue_size = job_queue_size
        self.inbox: "queue.Queue[tuple[bytes, object]]" = queue.Queue()
        self._context = zmq.Context.instance()
        self._inflight = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipc-io", daemon=True)
        # Latest engine figures, replaced (never mutated) by the serving loop; answered here so a
        # stats request never waits behind a long step or a busy handler.
        self.stats: dict[str, float] = {}

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    # called from any thread ----------------------------------------------------------------
    def send(self, identity: bytes, message, finished: int = 0) -> None:
        """Send a message to one front-end process; `finished` requests leave the queue."""
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._context.socket(zmq.PUSH)
            push.connect(_OUTBOX)
            self._local.push = push
        if finished:
            with self._lock:
                self._inflight -= finished
        push.send_multipart([identity, protocol.encode(message)], copy=False)

    def finish(self, count: int = 1) -> None:
        """Requests that end without a message (aborted by their client)."""
        with self._lock:
            self._inflight -= count

    @property
    def inflight(self) -> int:
        return self._inflight

    # IO thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        router.bind(self.address)
        pull = self._context.socket(zmq.PULL)
        pull.bind(_OUTBOX)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        self._started.set()
        while True:
            events = dict(poller.poll())
            if pull in events:
                for _ in range(1024):
                    try:
                        frames = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    router.send_multipart(frames, copy=False)
            if router in events:
                for _ in range(1024):
                    try:
                        identity, payload = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except ValueError:
                        continue
                    self._admit(router, identity, payload)

    def _admit(self, router, identity: bytes, payload: bytes) -> None:
        try:
            message = protocol.decode_to_worker(payload)
        except Exception as exc:  # a malformed frame must not stop the IO thread
            log.warning("dropping an undecodable message: %s", exc)
            return
        if isinstance(message, protocol.Abort):
            self.inbox.put((identity, message))
            return
        if isinstance(message, protocol.StatsRequest):
            values = dict(self.stats, requests_in_flight=float(self._inflight))
            router.send_multipart([identity, protocol.encode(
                protocol.Stats(message.request_id, values))])
            return
        reason = None
        if message.generation != self.generation:
            reason = ("WorkerRestarted", "the worker restarted while the request was in flight")
        else:
            with self._lock:
                if self._inflight >= self.job_queue_size:
                    reason = ("QueueFull", f"job queue is full ({self.job_queue_size} requests; "
                                           "job_queue_size); retry later")
                else:
                    self._inflight += 1
        if reason:
            reply = protocol.Rejected(message.request_id, 503, *reason)
            router.send_multipart([identity, protocol.encode(reply)])
            return
        self.inbox.put((identity, message))
