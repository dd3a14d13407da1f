"""Every CLI command fails bad input with one line naming the argument and exit code 2, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.cli import main


def run(argv: list[str], capsys: Any) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture
def busy_port() -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "not-json").write_text("{nope")
    (tmp_path / "not-jwks").write_text(json.dumps({"keys": [{"kty": "EC", "crv": "P-384"}]}))
    (tmp_path / "a-file").write_text("x")
    return {name: str(tmp_path / name) for name in ("not-json", "not-jwks", "a-file", "missing")}


CASES = [
    (["sandbox", "--jwks", "{missing}"], "--jwks"),
    (["sandbox", "--jwks", "{not-json}"], "--jwks"),
    (["sandbox", "--jwks", "{not-jwks}"], "--jwks"),
    (["sandbox", "--port", "{busy}"], "--port"),
    (["sandbox", "--port", "99999"], "--port"),
    (["sandbox", "--patients", "-5"], "--patients"),
    (["sandbox", "--resources-per-file", "0"], "--resources-per-file"),
    (["sandbox", "--manifest-page-size", "-1"], "--manifest-page-size"),
    (["sandbox", "--token-lifetime", "nan"], "--token-lifetime"),
    (["sandbox", "--retry-after", "soon"], "--retry-after"),
    (["keygen", "--kid", "k", "--out", "{a-file}/sub"], "--out"),
    (["keygen", "--kid", " ", "--out", "{missing}"], "--kid"),
    (["token", "--conn-id", "no_such_connection"], "--conn-id"),
    (["token", "--conn-id", "smart_scope_list"], "scope"),
    (["test", "--conn-id", "no_such_connection"], "--conn-id"),
    (["authorize", "--fhir-url", "http://127.0.0.1:1/fhir"], "--client-id"),
    (["authorize", "--port", "-3", "--conn-id", "x"], "--port"),
    (["authorize", "--timeout", "inf", "--conn-id", "x"], "--timeout"),
]


@pytest.mark.parametrize(("argv", "names"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_is_one_line_naming_the_argument(
    argv: list[str], names: str, files: dict[str, str], busy_port: int, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMART_SCOPE_LIST",
        json.dumps(
            {
                "conn_type": "smart",
                "host": "http://127.0.0.1:1/fhir",
                "login": "c",
                "extra": {"private_key": "not-a-pem-key", "scope": ["system/*.rs"]},
            }
        ),
    )
    argv = [a.format(busy=busy_port, **files) for a in argv]
    code, err = run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert names in lines[-1] and "error:" in lines[-1], err
    assert not any(line.startswith("  File ") for line in lines)


def test_a_subprocess_run_shows_no_traceback(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_smart.cli", "sandbox", "--jwks", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and "argument --jwks" in out.stderr
