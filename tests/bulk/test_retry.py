"""Retry-After parsing, backoff and poll pacing, transient classification (no I/O)."""

from __future__ import annotations

import email.utils

import pytest

from airflow_provider_smart.bulk.outcome import body_text, is_transient, outcome_text
from airflow_provider_smart.bulk.retry import backoff_delay, next_poll_delay, parse_retry_after

NOW = 1_800_000_000.0


def now() -> float:
    return NOW


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), ("1.5", 1.5)])
def test_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=now) == expected


def test_http_date() -> None:
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(90, abs=1)


def test_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT", now=now) == 0.0


def test_epoch_seconds_and_milliseconds_read_as_absolute_times() -> None:
    # The SMART reference server sends an absolute epoch time on 429s.
    assert parse_retry_after(str(int(NOW + 300)), now=now) == pytest.approx(300)
    assert parse_retry_after(str(int((NOW + 300) * 1000)), now=now) == pytest.approx(300)


def test_absurd_values_are_clamped() -> None:
    assert parse_retry_after("99999999999999999999", now=now, max_delay=3600) == 3600
    assert parse_retry_after("86400", max_delay=600) == 600


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1e3", "NaN", "Fri, 99 Foo 1999"])
def test_garbage_gives_none(value: str | None) -> None:
    assert parse_retry_after(value, now=now) is None


def test_backoff_doubles_and_caps() -> None:
    delays = [backoff_delay(n, 1.0, 10.0, jitter=False) for n in range(1, 7)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(10_000, 1.0, 300.0, jitter=False) == 300  # no overflow


def test_backoff_jitter_stays_within_half_and_full() -> None:
    assert backoff_delay(3, 1.0, 100.0, rng=lambda: 0.0) == 2.0
    assert backoff_delay(3, 1.0, 100.0, rng=lambda: 1.0) == 4.0


def test_next_poll_delay() -> None:
    assert next_poll_delay(30.0, 1, 5.0, 600.0) == 30.0  # Retry-After wins
    assert next_poll_delay(18000.0, 1, 5.0, 600.0) == 600.0  # Cerner's five hours, capped
    assert next_poll_delay(0.0, 1, 5.0, 600.0) == 1.0  # never spin
    assert [next_poll_delay(None, n, 5.0, 30.0) for n in (1, 2, 3, 4)] == [5, 10, 20, 30]


def outcome(*codes: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": c, "diagnostics": f"d-{c}"} for c in codes],
    }


def test_transient_only_when_all_issue_codes_are() -> None:
    assert is_transient(outcome("transient"))
    assert is_transient(outcome("throttled", "lock-error", "timeout"))
    assert not is_transient(outcome("transient", "processing"))
    assert not is_transient(outcome())
    assert not is_transient(None)


def test_outcome_text_uses_diagnostics_or_details() -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x", "details": {"text": "T"}}],
    }
    assert outcome_text(oo) == "error x: T"
    assert body_text(b"plain failure") == "plain failure"
    assert body_text(b"") == "empty body"
