"""Waiting politely: ``Retry-After`` parsing, exponential backoff, and which failures are worth a retry.

Stdlib only, shared by the client, the downloader and the Airflow trigger (which imports this module
on its own to pace its polls). :class:`RetryPolicy` is the one place retries are decided and counted.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import TypeVar

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
    :param sleep: injectable ``time.sleep``.
    """

    attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    max_retry_after: float = 3600.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def retry_after(self, header: str | None) -> float | None:
        """A ``Retry-After`` header's wait in seconds, capped by ``max_retry_after`` (None if absent)."""
        return parse_retry_after(header, max_delay=self.max_retry_after)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The pause before retry number ``failures``: the server's wish (capped), else backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return backoff_delay(failures, self.backoff_base, self.backoff_max)

    def run(
        self,
        attempt: Callable[[], T],
        *,
        what: str,
        give_up: Callable[[TransientFailure, int], Exception],
        on_failure: Callable[[], None] | None = None,
    ) -> T:
        """Call ``attempt`` until it returns, retrying on :class:`TransientFailure`.

        ``on_failure`` cleans up after each failed attempt; after ``attempts`` retries the exception
        from ``give_up(last_failure, tries)`` is raised. ``what`` names the operation in log lines.
        """
        failures = 0
        while True:
            try:
                return attempt()
            except TransientFailure as failure:
                if on_failure is not None:
                    on_failure()
                failures += 1
                if failures > self.attempts:
                    raise give_up(failure, failures) from None
                delay = self.delay(failures, failure.retry_after)
                log.warning("%s failed (%s); retry %d of %d in %.1f s.", what, failure, failures, self.attempts, delay)
                self.sleep(delay)
