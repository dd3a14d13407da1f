"""Fixtures for the Airflow adapter tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: make ``metadb`` importable


@pytest.fixture
def kick_off(smart_conn: Any, sandbox: Any) -> Callable[[], str]:
    """``kick_off()``: start a system export on the sandbox through ``smart_default``; returns its status URL."""
    from airflow_provider_smart.hooks.smart import SmartHook

    def start() -> str:
        session = SmartHook().get_conn()
        response = session.get(f"{sandbox.url}/$export", headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        return response.headers["Content-Location"]

    return start
