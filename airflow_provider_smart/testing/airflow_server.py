"""A throwaway Airflow API server on 127.0.0.1, for the connection-test API tests and ``make ui-check``.

Simple auth manager with every user an admin, a sqlite metadata DB in its own ``AIRFLOW_HOME``, connection
testing enabled. Everything it starts it stops, also when the caller fails.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def airflow_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("apache-airflow-core").split(".")[:3] if p.isdigit())


def ui_sends_port_zero_bug() -> bool:
    """True where the API rejects the UI's ``port: 0`` for a connection stored without a port.

    Airflow 3.3.1 and 3.3.2 (fixed upstream in apache/airflow#73298): the UI sends ``Number(null)``, the
    API compares 0 with NULL and answers 400 "The host or port to test differs from the stored connection".
    """
    from airflow.api_fastapi.core_api.routes.public import connections

    same = getattr(connections, "_same_endpoint", None)
    return same is not None and not same(0, None)


def stop_process_group(process: subprocess.Popen[bytes] | None) -> None:
    """End a server started with ``start_new_session=True`` and every worker it forked: TERM, then KILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_until_healthy(
    process: subprocess.Popen[bytes], health_url: str, timeout: float, what: str, log_tail: Callable[[], str]
) -> None:
    """Wait for ``health_url`` to answer 200; a server that exits or stays silent is stopped and reported."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log_tail()}")
        try:
            if requests.get(health_url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop_process_group(process)
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s:\n{log_tail()}")
        time.sleep(0.5)


class AirflowApiServer:
    """``airflow db migrate`` then ``airflow api-server`` in a fresh home; use as a context manager."""

    def __init__(self, home: Path, *, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "api-server.log"
        self._extra_env = env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._token: str | None = None
        self._jwt_secret = base64.urlsafe_b64encode(os.urandom(24)).decode()

    @property
    def env(self) -> dict[str, str]:
        """The environment of this Airflow: use it for ``airflow dags test`` etc. against the same DB."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "_AIRFLOW"))}
        fernet = self.home / "fernet.key"
        if not fernet.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fernet.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        return {
            **base,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": fernet.read_text().strip(),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            **self._extra_env,
        }

    def start(self, timeout: float = 240.0) -> AirflowApiServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.env
        (self.home / "dags").mkdir(exist_ok=True)
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the server and its workers
        )
        log.close()
        wait_until_healthy(self._process, f"{self.url}/api/v2/monitor/health", timeout, "the API server", self.log_tail)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process_group(process)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> AirflowApiServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def token(self) -> str:
        if self._token is None:
            response = requests.get(f"{self.url}/auth/token", timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)

    def run(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (``airflow ...``, ``airflow-smart ...``) against this server's metadata DB."""
        command = [sys.executable, "-m", "airflow", *args[1:]] if args[0] == "airflow" else list(args)
        if args[0] == "airflow-smart":
            command = [sys.executable, "-m", "airflow_provider_smart.cli", *args[1:]]
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
