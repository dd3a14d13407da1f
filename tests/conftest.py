"""Shared fixtures: an isolated AIRFLOW_HOME, signing keys, the sandbox server and smart connections."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Airflow reads its configuration at import time: isolate it before anything imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="smart-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# One Fernet key for this process and the airflow subprocesses it starts: secrets written by one are
# read by the others (unit-test mode would otherwise draw a random key per process).
os.environ["AIRFLOW__CORE__FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
os.environ.pop("AIRFLOW_CONN_SMART_DEFAULT", None)
try:  # Airflow 2.x runs sqlite with the SequentialExecutor only (unit-test mode would pick LocalExecutor)
    from importlib.metadata import version

    if int(version("apache-airflow").split(".")[0]) < 3:
        os.environ["AIRFLOW__CORE__EXECUTOR"] = "SequentialExecutor"
except Exception:  # no Airflow: the library's tests still run
    pass

import pytest  # noqa: E402

from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class KeyPair:
    def __init__(self, alg: str, kid: str) -> None:
        self.alg, self.kid = alg, kid
        self.key = generate_private_key(alg)
        self.pem = private_key_to_pem(self.key)
        self.jwks = public_jwks(self.key, kid=kid, alg=alg)


@pytest.fixture(scope="session")
def es384() -> KeyPair:
    return KeyPair("ES384", "es-key-1")


@pytest.fixture(scope="session")
def rs384() -> KeyPair:
    return KeyPair("RS384", "rs-key-1")


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Any]]:
    """The one way tests build sandboxes: ``sandbox_factory(clients={...}, **SmartSandbox options)``.

    Returns a started ``SmartSandbox`` with each ``clients`` entry registered
    (``{client_id: register_client keyword arguments}``); every sandbox it started is stopped at teardown.
    Directory conftests wrap it with their own clients and defaults (``tests/bulk``, ``tests/testing``).
    """
    from airflow_provider_smart.testing import SmartSandbox

    started: list[Any] = []

    def make(*, clients: Mapping[str, Mapping[str, Any]] | None = None, **options: Any) -> Any:
        sb = SmartSandbox(**options)
        started.append(sb)
        sb.start()
        for client_id, registration in (clients or {}).items():
            sb.register_client(client_id, **registration)
        return sb

    yield make
    for sb in reversed(started):
        sb.stop()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Any], es384: KeyPair, rs384: KeyPair) -> Any:
    """A fresh sandbox with an ES384 client ``es-client``, an RS384 client ``rs-client`` and a secret client."""
    return sandbox_factory(
        clients={
            "es-client": {"jwks": es384.jwks, "scopes": "system/*.rs system/*.read"},
            "rs-client": {"jwks": rs384.jwks, "scopes": "system/Patient.rs system/Observation.rs"},
            "secret-client": {"client_secret": "s3cret-value", "scopes": "system/*.read"},
        },
        patients=10,
        resources_per_patient=3,
        status_polls_before_ready=1,
        retry_after="1",
    )


def connection_json(sandbox: Any, key: KeyPair, client_id: str = "es-client", **extra: Any) -> str:
    fields: dict[str, Any] = {"private_key": key.pem, "kid": key.kid, "scope": "system/*.rs", **extra}
    return json.dumps({"conn_type": "smart", "host": sandbox.url, "login": client_id, "extra": fields})


@pytest.fixture
def smart_conn(monkeypatch: pytest.MonkeyPatch, sandbox: Any, es384: KeyPair) -> Callable[..., str]:
    """Install a smart connection as an AIRFLOW_CONN_* env var; returns a setter for variants."""

    def install(conn_id: str = "smart_default", *, raw: dict[str, Any] | None = None, **extra: Any) -> str:
        value = json.dumps(raw) if raw is not None else connection_json(sandbox, es384, **extra)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        return conn_id

    install()
    return install


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Slow modules say so with ``pytestmark``; this also catches any test that needs the metadata DB
    # (migrating it alone takes seconds), so none slips into ``make test-fast``.
    for item in items:
        if "airflow_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Migrate a sqlite metadata DB in the isolated AIRFLOW_HOME once, for dag.test() runs."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env={**os.environ},
        timeout=300,
    )
    return _AIRFLOW_HOME


# -- hostile servers: tiny scriptable HTTP servers for fault tests (loopback only) ----------------
# ``hostile_server(app)``: each request calls ``app(handler)``; the handler has ``command``, ``path``,
# ``headers``, and ``reply`` (a normal answer) / ``drip`` (one byte at a time). ``.hits`` records
# ``(time.monotonic(), method, path)`` of every request.
import contextlib  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


class Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        self.server.hits.append((time.monotonic(), self.command, self.path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.app(self)

    do_GET = do_POST = do_DELETE = _dispatch

    def reply(
        self, status: int, body: bytes | dict[str, Any] | str = b"", headers: dict[str, str] | None = None
    ) -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drip(self, data: bytes, every: float) -> None:
        """Send ``data`` one byte at a time, ``every`` seconds apart (stops when the client goes away)."""
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(every)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    app: Callable[[Handler], None]
    hits: list[tuple[float, str, str]]


class HostileServer:
    def __init__(self, app: Callable[[Handler], None]) -> None:
        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.app = app
        self.httpd.hits = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    @property
    def hits(self) -> list[tuple[float, str, str]]:
        return self.httpd.hits

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile_server() -> Iterator[Callable[[Callable[[Handler], None]], HostileServer]]:
    started: list[HostileServer] = []

    def make(app: Callable[[Handler], None]) -> HostileServer:
        server = HostileServer(app).__enter__()
        started.append(server)
        return server

    yield make
    for server in started:
        server.__exit__(None, None, None)
