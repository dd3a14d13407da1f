"""How far a download has got: files, bytes, rate; shared by the download threads and whoever reports it.

The downloader counts every chunk it writes and every file it finishes into one :class:`TransferProgress`.
A :class:`ProgressLogger` thread turns it into a log line at intervals (what the operators show in the task
log); the ``airflow-smart export`` command draws a progress bar from the same counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("airflow_provider_smart.bulk")

DEFAULT_LOG_INTERVAL = 30.0  # seconds between progress lines in a task log


@dataclass(frozen=True)
class ProgressSnapshot:
    """The counters at one moment. ``bytes`` counts what this run wrote (files found already landed are in
    ``skipped_bytes``), so ``rate`` is the speed of this run's downloads."""

    files_total: int
    files_done: int
    files_skipped: int
    bytes: int
    skipped_bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second written by this run."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        skipped = f" ({self.files_skipped} already here)" if self.files_skipped else ""
        return (
            f"{self.files_done}/{self.files_total} files{skipped}, {format_bytes(self.bytes)} downloaded "
            f"in {self.seconds:.0f} s ({format_bytes(self.rate)}/s)"
        )


class TransferProgress:
    """Thread-safe counters of one download run (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None
        self.files_total = 0
        self.files_done = 0
        self.files_skipped = 0
        self.bytes = 0
        self.skipped_bytes = 0

    def start(self, files_total: int) -> None:
        """A pass over ``files_total`` files begins. A second pass (the manifest read again for fresh links)
        counts its files afresh, those already landed as skipped; bytes and the clock run on."""
        with self._lock:
            self.files_total, self.files_done, self.files_skipped, self.skipped_bytes = files_total, 0, 0, 0
            if self._started is None:
                self._started = self._clock()

    def add_bytes(self, count: int) -> None:
        """``count`` more bytes written (negative: an attempt that failed gives its bytes back)."""
        with self._lock:
            self.bytes += count

    def file_done(self, *, skipped: bool = False, size: int | None = None) -> None:
        with self._lock:
            self.files_done += 1
            if skipped:
                self.files_skipped += 1
                self.skipped_bytes += size or 0

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            seconds = self._clock() - self._started if self._started is not None else 0.0
            return ProgressSnapshot(
                self.files_total, self.files_done, self.files_skipped, self.bytes, self.skipped_bytes, seconds
            )


class ProgressLogger:
    """Log ``progress`` every ``interval`` seconds while the ``with`` block runs (0 or less: never)."""

    def __init__(self, progress: TransferProgress, interval: float = DEFAULT_LOG_INTERVAL) -> None:
        self.progress = progress
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressLogger:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, daemon=True, name="smart-bulk-progress")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info("Download progress: %s.", self.progress.snapshot().describe())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (decimal units, as the task log's MB figures)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns
