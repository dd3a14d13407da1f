"""Small shared pieces of the sandbox: requests/responses, instants, OperationOutcomes."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

JSON = "application/json"
FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """Wall-clock milliseconds that never repeat, so "touched after export X" is always strictly after."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            self._last = max(now_ms(), self._last + 1)
            return self._last


def iso_ms(ms: int, *, zulu: bool = True) -> str:
    """A FHIR instant with millisecond precision: ``2023-04-05T06:07:08.123Z`` (or ``+00:00``)."""
    seconds, millis = divmod(ms, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{millis:03d}{'Z' if zulu else '+00:00'}"


def parse_instant(text: str) -> int:
    """Parse a FHIR instant (timezone required; a bare date means UTC midnight) into epoch milliseconds."""
    text = text.strip()
    if len(text) == 10:  # YYYY-MM-DD
        value = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    else:
        value = dt.datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise ValueError(f"instant {text!r} has no timezone")
    return int(value.timestamp() * 1000)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Request:
    method: str
    path: str  # percent-decoded path, no query
    query: str  # raw query string
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def query_params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # stream the body from this file instead of ``body``
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    close: bool = False
    data_route: bool = False  # the body is bulk data (a file), so "after_bytes" faults apply


def json_response(
    status: int, obj: Any, *, content_type: str = JSON, headers: dict[str, str] | None = None
) -> Response:
    return Response(status, dumps(obj), {"Content-Type": content_type, **(headers or {})})


def outcome_response(
    status: int,
    code: str,
    diagnostics: str,
    *,
    severity: str = "error",
    headers: dict[str, str] | None = None,
) -> Response:
    return json_response(
        status, operation_outcome(code, diagnostics, severity), content_type=FHIR_JSON, headers=headers
    )
