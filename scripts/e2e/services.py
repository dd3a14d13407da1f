"""What ``make e2e`` runs on 127.0.0.1: PostgreSQL, Redis, moto (S3 API), and the Airflow processes.

Installs what is missing first: Debian's ``postgresql`` and ``redis-server`` (``apt-get``; we are root)
and the ``e2e`` extra of this package (Celery and Amazon providers, moto, psycopg2) into the venv.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from e2e.procs import Processes, free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON_DISTS = (
    "apache-airflow-providers-celery",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-openlineage",
    "moto",
    "s3fs",
    "psycopg2-binary",
    "asyncpg",
)


def say(text: str) -> None:
    print(text, flush=True)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def ensure_installed() -> None:
    """apt-get install postgresql / redis-server when missing; the venv's ``e2e`` extra when missing."""
    wanted = [pkg for pkg, ok in (("postgresql", _pg_bin()), ("redis-server", shutil.which("redis-server"))) if not ok]
    if wanted:
        say(f"installing Debian packages: {' '.join(wanted)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # Keep the packages' init scripts from starting system-wide servers we would then have to stop.
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, stdin=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
                env=env,
                check=True,
                stdin=subprocess.DEVNULL,
            )
        finally:
            if ours:
                policy.unlink()
    missing = []
    for dist in PYTHON_DISTS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        say(f"installing into the venv: .[dev,e2e] (missing {', '.join(missing)})")
        uv = BIN / "uv"
        cmd = [str(uv), "pip", "install", "--quiet", "--python", sys.executable] if uv.exists() else None
        cmd = cmd or [sys.executable, "-m", "pip", "install", "--quiet"]
        subprocess.run([*cmd, "-e", f"{REPO}[dev,e2e]"], check=True, stdin=subprocess.DEVNULL)


def start_postgres(root: Path, procs: Processes) -> int:
    """A throwaway cluster (initdb as ``postgres``), ``pg_ctl``-started on a free port; returns the port."""
    pg_bin = _pg_bin()
    assert pg_bin is not None
    pg = root / "pg"
    pg.mkdir()
    shutil.chown(pg, "postgres", "postgres")
    as_pg = {"user": "postgres", "group": "postgres", "cwd": pg, "stdin": subprocess.DEVNULL, "check": True}
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8", "HOME": str(pg)}
    subprocess.run(
        [pg_bin / "initdb", "-D", pg / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        env=env,
        stdout=subprocess.DEVNULL,
        **as_pg,  # type: ignore[arg-type]
    )
    port = free_port()
    options = f"-p {port} -k {pg} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [pg_bin / "pg_ctl", "-D", pg / "data", "-l", pg / "postgres.log", "-w", "-t", "60", "-o", options, "start"],
        env=env,
        stdout=subprocess.DEVNULL,
        **as_pg,  # type: ignore[arg-type]
    )

    def stop() -> None:
        result = subprocess.run(
            [pg_bin / "pg_ctl", "-D", pg / "data", "-m", "fast", "-w", "-t", "30", "stop"],
            env=env,
            user="postgres",
            group="postgres",
            cwd=pg,
            capture_output=True,
        )
        pidfile = pg / "data" / "postmaster.pid"
        if result.returncode != 0 and pidfile.exists():  # by pid, if pg_ctl could not
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    procs.on_stop("postgres", stop)
    subprocess.run(
        [pg_bin / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "airflow"],
        env=env,
        **as_pg,  # type: ignore[arg-type]
    )
    return port


def start_redis(root: Path, procs: Processes) -> int:
    port = free_port()
    (root / "redis").mkdir()
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = procs.start("redis", [*args, "--dir", str(root / "redis")], env=dict(os.environ))
    wait_port(port, 30, proc, "redis")
    return port


def start_moto(procs: Processes) -> int:
    port = free_port()
    proc = procs.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=dict(os.environ))
    wait_port(port, 60, proc, "moto")
    return port


@dataclass
class Airflow:
    """The Airflow deployment: shared configuration (env) and the processes."""

    root: Path
    procs: Processes
    pg_port: int
    redis_port: int
    api_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)  # worker name -> pid

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def secrets(self) -> list[str]:
        return [self.env[k] for k in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")]

    def configure(self) -> None:
        home = self.root / "airflow"
        home.mkdir()
        db = f"postgres@127.0.0.1:{self.pg_port}/airflow"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder()),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://{db}",
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql+psycopg2://{db}",
            AIRFLOW__CORE__FERNET_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW__API__BASE_URL=self.api_url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.api_url}/execution/",
            AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__CORE__HOSTNAME_CALLABLE="e2e.worker_hostname.get_hostname",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
            # A SIGKILLed worker's tasks stop heartbeating: notice within ~30 s rather than the default 5 min.
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
            AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="180",
            AIRFLOW__OPENLINEAGE__NAMESPACE="e2e",
            # The listener emits from a forked process it kills after 10 s by default: too short on 2 busy cores.
            AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT="60",
            AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(
                {"type": "file", "log_file_path": str(self.root / "openlineage" / "event"), "append": False}
            ),
            AWS_EC2_METADATA_DISABLED="true",  # credentials come from aws_default; never probe an IMDS address
            PYTHONPATH=str(REPO / "scripts"),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        (self.root / "openlineage").mkdir()
        self.env = env

    def dags_folder(self) -> Path:
        """The example DAGs and the e2e-only ones (scripts/e2e/dags), copied side by side."""
        folder = self.root / "dags"
        folder.mkdir(exist_ok=True)
        for source in [*(REPO / "dags_examples").glob("*.py"), *(Path(__file__).parent / "dags").glob("*.py")]:
            shutil.copy2(source, folder / source.name)
        return folder

    def airflow(self, *args: str) -> list[str]:
        return [str(BIN / "airflow"), *args]

    def migrate(self) -> None:
        log = self.procs.logs / "db-migrate.log"
        with log.open("wb") as out:
            result = subprocess.run(
                self.airflow("db", "migrate"), env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=900
            )
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed; see {log}")

    def start(self, worker_concurrency: int = 4) -> None:
        api = self.procs.start(
            "api-server", self.airflow("api-server", "-H", "127.0.0.1", "-p", str(self.api_port), "-w", "1"), self.env
        )
        self.procs.start("scheduler", self.airflow("scheduler", "--skip-serve-logs"), self.env)
        self.procs.start("dag-processor", self.airflow("dag-processor"), self.env)
        self.procs.start("triggerer", self.airflow("triggerer", "--skip-serve-logs"), self.env)
        for n in (1, 2):
            self.start_worker(f"e2e-worker-{n}", worker_concurrency)
        wait_port(self.api_port, 180, api, "api-server")

    def start_worker(self, name: str, concurrency: int) -> None:
        env = {**self.env, "E2E_WORKER_NAME": name}
        args = self.airflow(
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@127.0.0.1",
            "--concurrency",
            str(concurrency),
            "--pid",
            str(self.root / f"{name}.pid"),
            "--skip-serve-logs",
            "--without-gossip",
            "--without-mingle",
        )
        self.workers[name] = self.procs.start(name, args, env).pid
