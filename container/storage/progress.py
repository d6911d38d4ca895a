"""Download progress: a tqdm bar with MB/s on a terminal, a log line every few seconds otherwise
(container logs and CloudWatch get no carriage-return soup)."""

from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class TransferProgress:
    """Thread-safe byte counter shown as a bar or logged; update() may get negative amounts
    (a retried range rewinds)."""

    def __init__(self, description: str, total_bytes: int, interactive: bool | None = None):
        self.description = description
        self.total = total_bytes
        self.done = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_log = self._started
        if interactive is None:
            interactive = sys.stderr.isatty()
        self._bar = tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True,
                         unit_divisor=1024, dynamic_ncols=True) if interactive else None

    def update(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            if self._bar is not None:
                self._bar.update(amount)
                return
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.info("%s: %s", self.description, self._figures(now))

    def _figures(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.done / 1e6:.0f} / {self.total / 1e6:.0f} MB ({percent:.0f}%), "
                f"{self.done / 1e6 / elapsed:.1f} MB/s")

    def close(self) -> float:
        """Stop showing progress; returns the mean rate in MB/s."""
        now = time.monotonic()
        if self._bar is not None:
            self._bar.close()
        log.info("%s: done, %s in %.1f s", self.description, self._figures(now),
                 now - self._started)
        return self.done / 1e6 / max(now - self._started, 1e-6)


class _Discard:
    def write(self, _text):
        pass

    def flush(self):
        pass


class LoggedTqdm(tqdm):
    """A tqdm for libraries that take a tqdm_class (huggingface_hub): drawn on a terminal;
    elsewhere silent, with a log line every LOG_EVERY_S for byte counters."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        self._interactive = sys.stderr.isatty()
        if not self._interactive:
            kwargs["file"] = _Discard()
        super().__init__(*args, **kwargs)
        self._last_log = time.monotonic()

    def update(self, n=1):
        shown = super().update(n)
        now = time.monotonic()
        if (not self._interactive and self.unit == "B" and self.total
                and now - self._last_log >= LOG_EVERY_S):
            self._last_log = now
            elapsed = max(now - self.start_t, 1e-6)
            log.info("%s: %.0f / %.0f MB, %.1f MB/s", self.desc or "downloading",
                     self.n / 1e6, self.total / 1e6, self.n / 1e6 / elapsed)
        return shown
