"""Waiting politely: ``Retry-After`` parsing, exponential backoff, and which failures are worth a retry.

Stdlib only, shared by the client, the downloader and the Airflow trigger (which imports this module
on its own to pace its polls). :class:`RetryPolicy` is the one place retries are decided and counted.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

from airflow_provider_smart.exceptions import ExportThrottledError, ExportTimeoutError

log = logging.getLogger("airflow_provider_smart.bulk")
T = TypeVar("T")

# Statuses that say "not now" rather than "no": throttling, overload and gateway hiccups.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# On a status URL a 500 may be a real job failure (the reference server answers 500 + "processing"),
# so there only these count as transient without a transient OperationOutcome.
TRANSIENT_POLL_STATUSES = frozenset({408, 429, 502, 503, 504})

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# No sane delay is a billion seconds (31 years): such a value is an absolute epoch time. The SMART
# reference server sends one (in s or ms) on its 429s; a naive client would sleep for decades.
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e11


def parse_retry_after(
    value: str | None, *, max_delay: float | None = None, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None if absent or unreadable.

    Accepts delta-seconds (``120``, also ``1.5``), an HTTP-date (``Fri, 31 Dec 1999 23:59:59 GMT``) and,
    defensively, an absolute epoch time in seconds or milliseconds. Dates in the past give 0. The
    result is capped at ``max_delay``. ``now`` is wall-clock time (HTTP-dates are wall-clock).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if seconds >= _EPOCH_SECONDS:
            epoch = seconds / 1000 if seconds >= _EPOCH_MILLISECONDS else seconds
            seconds = max(0.0, epoch - now())
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, when.timestamp() - now())
    if max_delay is not None:
        seconds = min(seconds, max_delay)
    return seconds


def backoff_delay(
    attempt: int,
    base: float = 1.0,
    maximum: float = 300.0,
    *,
    jitter: bool = True,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff for the ``attempt``-th retry (1-based): ``base * 2**(attempt-1)``, capped.

    With ``jitter`` the delay is drawn from [50 %, 100 %] of that, so parallel downloads that failed
    together do not all come back at the same instant.
    """
    delay = min(maximum, base * 2 ** min(max(attempt - 1, 0), 60))
    if jitter:
        delay *= 0.5 + rng() / 2
    return max(0.0, delay)


def next_poll_delay(
    retry_after: float | None,
    polls: int,
    poll_interval: float,
    max_poll_interval: float,
    min_poll_interval: float = 1.0,
) -> float:
    """How long to wait before the next status poll.

    The server's ``Retry-After`` wins when given; otherwise exponential backoff (the spec's SHOULD)
    starting at ``poll_interval`` after the first poll. Always clamped to
    [``min_poll_interval``, ``max_poll_interval``]: Cerner has asked for five-hour waits, and a server
    saying 0 must not make us spin.
    """
    backoff = poll_interval * 2 ** min(max(polls - 1, 0), 60)
    delay = retry_after if retry_after is not None else backoff
    return min(max(delay, min_poll_interval), max_poll_interval)


@dataclass(frozen=True)
class Sleep:
    """What a sans-IO exchange yields when it wants to wait: its driver sleeps (or awaits) ``seconds``."""

    seconds: float


class TransientFailure(Exception):
    """Raised by one attempt of a retried operation: "not now", worth another try after a pause."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (429, 5xx, dropped connections, short bodies) are retried.

    :param attempts: retries after the first try, per request or file.
    :param backoff_base: first backoff delay without a ``Retry-After``; doubles per retry up to ``backoff_max``.
    :param max_retry_after: cap on any server-requested wait (Cerner has asked for five hours).
    :param deadline: a ``clock()`` time no retry loop waits past (None: no bound). A pause that would
        end after it is cut short: if the server asked for it (``Retry-After``) the loop sleeps until
        the deadline and raises :class:`ExportTimeoutError` without the early request; if it is our
        own backoff, one last try is made at the deadline. Set it with :meth:`bounded`.
    :param max_wait: the longest single pause slept in-process (None: no limit). A longer one raises
        :class:`ExportThrottledError` at once, carrying when to come back, so an Airflow task can
        defer instead of holding a worker slot.
    :param sleep: injectable ``time.sleep``.
    :param clock: injectable ``time.monotonic``; ``deadline`` is on this clock.
    """

    attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    max_retry_after: float = 3600.0
    deadline: float | None = None
    max_wait: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def bounded(
        self,
        *,
        timeout: float | None = None,
        max_wait: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> RetryPolicy:
        """This policy, with its waits ending at most ``timeout`` seconds from now (and before any
        deadline it already has) and no single in-process pause longer than ``max_wait``."""
        clock = clock or self.clock
        deadline = self.deadline
        if timeout is not None:
            mine = clock() + max(0.0, timeout)
            deadline = mine if deadline is None else min(deadline, mine)
        if max_wait is not None and self.max_wait is not None:
            max_wait = min(max_wait, self.max_wait)
        return dataclasses.replace(
            self, deadline=deadline, max_wait=self.max_wait if max_wait is None else max_wait, clock=clock
        )

    def remaining(self) -> float | None:
        """Seconds left before ``deadline`` (None: unbounded)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def retry_after(self, header: str | None) -> float | None:
        """A ``Retry-After`` header's wait in seconds, capped by ``max_retry_after`` (None if absent)."""
        return parse_retry_after(header, max_delay=self.max_retry_after)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The pause before retry number ``failures``: the server's wish (capped), else backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return backoff_delay(failures, self.backoff_base, self.backoff_max)

    def plan_pause(self, delay: float, *, server_asked: bool, what: str) -> tuple[float, Exception | None]:
        """The pause :meth:`pause` takes, without taking it: ``(seconds to sleep, error to raise after)``.

        Over ``max_wait``: no sleep, :class:`ExportThrottledError`. Past the ``deadline``: sleep until it,
        then :class:`ExportTimeoutError` if the server asked for the wait (or no time is left), else
        return for one last try at the deadline.
        """
        if self.max_wait is not None and delay > self.max_wait:
            return 0.0, ExportThrottledError(
                f"{what}: the server asked to wait {delay:.0f} s before trying again, longer than the "
                f"{self.max_wait:.0f} s this process waits in place.",
                retry_after=delay,
                not_before=time.time() + delay,
            )
        remaining = self.remaining()
        if remaining is not None and delay > remaining:
            if server_asked or remaining <= 0:
                return max(0.0, remaining), ExportTimeoutError(
                    f"{what}: the server asked to wait {delay:.0f} s but the caller's timeout ends in "
                    f"{max(0.0, remaining):.0f} s; gave up at the timeout instead of asking early."
                    if server_asked
                    else f"{what}: the caller's timeout passed.",
                    retry_after=delay,
                )
            return max(0.0, remaining), None
        return delay, None

    def pause(self, delay: float, *, server_asked: bool, what: str) -> None:
        """Sleep ``delay`` seconds within this policy's bounds (see ``deadline`` and ``max_wait``)."""
        seconds, error = self.plan_pause(delay, server_asked=server_asked, what=what)
        if seconds > 0 or error is None:
            self.sleep(seconds)
        if error is not None:
            raise error

    def run(
        self,
        attempt: Callable[[], T],
        *,
        what: str,
        give_up: Callable[[TransientFailure, int], Exception],
        on_failure: Callable[[], None] | None = None,
    ) -> T:
        """Call ``attempt`` until it returns, retrying on :class:`TransientFailure` (see :meth:`retrying`).

        ``on_failure`` cleans up after each failed attempt. Pauses are slept with ``sleep``.
        """

        def one() -> Generator[Any, Any, T]:
            try:
                return attempt()
            except TransientFailure:
                if on_failure is not None:
                    on_failure()
                raise
            yield  # pragma: no cover - makes this a generator; the attempt itself does no I/O here

        exchange = self.retrying(one, what=what, give_up=give_up)
        try:
            action = next(exchange)
            while True:
                assert isinstance(action, Sleep)
                self.sleep(action.seconds)
                action = next(exchange)
        except StopIteration as done:
            return done.value

    def retrying(
        self,
        attempt: Callable[[], Generator[Any, Any, T]],
        *,
        what: str,
        give_up: Callable[[TransientFailure, int], Exception],
    ) -> Generator[Any, Any, T]:
        """The retry loop, sans I/O: run the ``attempt`` exchange until it returns, retrying on
        :class:`TransientFailure` after yielding a :class:`Sleep` (the driver sleeps or awaits it).

        After ``attempts`` retries the exception from ``give_up(last_failure, tries)`` is raised.
        ``what`` names the operation in log lines. Pauses respect ``deadline``
        (:class:`ExportTimeoutError`) and ``max_wait`` (:class:`ExportThrottledError`).
        """
        failures = 0
        while True:
            try:
                return (yield from attempt())
            except TransientFailure as failure:
                failures += 1
                if failures > self.attempts:
                    raise give_up(failure, failures) from None
                delay = self.delay(failures, failure.retry_after)
                log.warning("%s failed (%s); retry %d of %d in %.1f s.", what, failure, failures, self.attempts, delay)
                seconds, error = self.plan_pause(
                    delay, server_asked=failure.retry_after is not None, what=f"{what} failed ({failure})"
                )
                if seconds > 0 or error is None:
                    yield Sleep(seconds)
                if error is not None:
                    raise error from None
