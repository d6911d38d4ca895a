"""Starts the worker group, watches it, restarts it, and keeps status.json truthful.

State machine (status.json): loading -> ready -> restarting -> loading -> ready ...
A group that fails its first load ends start-up with the one-line reason the worker wrote; a
group that dies after it was ready is torn down (every rank) and started again, up to
restart_limit times in ten minutes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections import deque

from ..config.loader import ServingConfig
from ..errors import StartupError
from .launcher import build_command
from .rundir import RunDir, WorkerStatus

log = logging.getLogger("container.supervisor")

RESTART_WINDOW_S = 600.0


class Supervisor:
    def __init__(self, config: ServingConfig, run_dir: RunDir):
        self.config = config
        self.run_dir = run_dir
        self.status = WorkerStatus(state="starting", message="starting the worker group")
        self.process: subprocess.Popen | None = None
        self.generation = 0
        self.started_at = 0.0
        self.ever_ready = False
        self.restart_times: deque[float] = deque()
        self.loading_timeout = float(config.setting("model_loading_timeout"))
        self._restart_at: float | None = None

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.generation += 1
        argv, env = build_command(self.config, str(self.run_dir.path), self.generation)
        log.info("starting worker group %d: %s", self.generation, " ".join(argv))
        self.process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.started_at = time.monotonic()
        self.set_state("loading", f"loading the model (worker group {self.generation})")

    def set_state(self, state: str, message: str, model: dict | None = None) -> None:
        self.status.state = state
        self.status.message = message
        self.status.generation = self.generation
        if model is not None:
            self.status.model = model
        self.run_dir.write_status(self.status)

    def poll(self) -> None:
        """Advance the state machine; raise StartupError when serving cannot go on."""
        if self._restart_at is not None:
            if time.monotonic() >= self._restart_at:
                self._restart_at = None
                self.start()
            return
        code = self.process.poll()
        if self.status.state == "loading":
            ready = self.run_dir.ready_path(self.generation)
            if code is None and ready.exists():
                info = json.loads(ready.read_text(encoding="utf-8"))
                self.ever_ready = True
                self.status.load_seconds = round(time.monotonic() - self.started_at, 3)
                self.set_state("ready", "ready", model=info)
                log.info("worker group %d is ready (%.1f s)", self.generation,
                         self.status.load_seconds)
                return
            if code is None and time.monotonic() - self.started_at > self.loading_timeout:
                self.kill()
                if self.ever_ready:     # a reload that hangs (e.g. storage stalled): try again
                    self._schedule_restart(f"the model did not load within "
                                           f"model_loading_timeout={self.loading_timeout:g}s")
                    return
                raise StartupError(
                    f"the model did not load within model_loading_timeout="
                    f"{self.loading_timeout:g}s: raise option.model_loading_timeout or check "
                    "the log above for what it was doing", exit_code=4)
        if code is None:
            return
        reason = self._exit_reason(code)
        self.kill()
        if not self.ever_ready:
            self.set_state("failed", reason)
            raise StartupError(reason, exit_code=3)
        self._schedule_restart(reason)

    def _exit_reason(self, code: int) -> str:
        error_file = self.run_dir.error_path(self.generation)
        if error_file.exists():
            return error_file.read_text(encoding="utf-8").strip()
        if code < 0:
            return f"the worker group was killed by signal {signal.Signals(-code).name}"
        return f"the worker group exited with code {code} (see the log above)"

    def _schedule_restart(self, reason: str) -> None:
        now = time.monotonic()
        self.restart_times.append(now)
        while self.restart_times and now - self.restart_times[0] > RESTART_WINDOW_S:
            self.restart_times.popleft()
        limit = int(self.config.setting("restart_limit"))
        if len(self.restart_times) > limit:
            self.set_state("failed", reason)
            raise StartupError(f"the worker group died {len(self.restart_times)} times in "
                               f"{RESTART_WINDOW_S / 60:.0f} minutes (last: {reason}); giving up",
                               exit_code=5)
        self.status.restarts += 1
        delay = min(0.5 * 2 ** (len(self.restart_times) - 1), 10.0)
        log.error("worker group %d died: %s; restarting in %.1f s", self.generation, reason, delay)
        self.set_state("restarting", f"worker restarting: {reason}")
        self._restart_at = now + delay

    def kill(self, grace: float = 5.0) -> None:
        """Stop every process of the group (it is its own session)."""
        process = self.process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Ranks can outlive the launcher that started them; clear the whole session.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self.set_state("stopping", "server is shutting down")
        self.kill()
