"""Fault injection: the next N requests on a route answer something else (or a file is cut short)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from airflow_provider_smart.testing.common import FHIR_JSON, JSON, Response, dumps, operation_outcome

FAULT_ROUTES = frozenset({"token", "kickoff", "status", "file", "delete", "patient"})
_CODE_FOR_STATUS = {401: "login", 403: "forbidden", 404: "not-found", 429: "throttled", 503: "transient"}


@dataclass
class Fault:
    route: str
    status: int | None
    body: Any
    headers: dict[str, str] | None
    times: int
    after_bytes: int | None
    delay: float | None
    path_contains: str | None = None  # only requests whose path contains this (e.g. one file's name)

    @property
    def is_cut(self) -> bool:
        return self.after_bytes is not None and self.status is None

    def response(self) -> Response:
        assert self.status is not None
        headers = dict(self.headers or {})
        body = self.body
        if body is None:
            if self.route == "token":
                error = "temporarily_unavailable" if self.status >= 500 else "invalid_request"
                body = {"error": error, "error_description": f"injected fault (HTTP {self.status})"}
            else:
                code = _CODE_FOR_STATUS.get(self.status, "exception" if self.status >= 500 else "invalid")
                body = operation_outcome(code, f"injected fault (HTTP {self.status})")
        if isinstance(body, dict | list):
            is_fhir = isinstance(body, dict) and "resourceType" in body
            headers.setdefault("Content-Type", FHIR_JSON if is_fhir else JSON)
            data = dumps(body)
        elif isinstance(body, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            data = body.encode()
        else:
            headers.setdefault("Content-Type", "application/octet-stream")
            data = bytes(body)
        return Response(self.status, data, headers)


class FaultBoard:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        if fault.route not in FAULT_ROUTES:
            raise ValueError(f"route must be one of {sorted(FAULT_ROUTES)}, not {fault.route!r}")
        if fault.status is None and fault.after_bytes is None and fault.delay is None:
            raise ValueError("a fault needs status, after_bytes (route 'file') or delay")
        if fault.after_bytes is not None and fault.route != "file":
            raise ValueError("after_bytes only applies to route 'file'")
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def take(self, route: str, path: str = "", *, cut: bool = False) -> Fault | None:
        """Consume one use of the first pending fault of ``route`` for ``path`` (cut faults only when ``cut``)."""
        with self._lock:
            for fault in self._faults:
                if fault.path_contains is not None and fault.path_contains not in path:
                    continue
                if fault.route == route and fault.is_cut == cut:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
