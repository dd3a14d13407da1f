"""Fixtures of the auth tests: hostile servers (see ``hostile.py``) and a TLS certificate for 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: make ``hostile`` importable

from hostile import self_signed_cert


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert, key) for https://127.0.0.1; the cert doubles as the CA bundle to verify it."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))
