"""Shared plumbing of the benchmarks: paths, keys, the sandbox as a separate process, measured child
processes (wall time, CPU and peak RSS via ``os.wait4``), medians and table printing.

Only the standard library and the package itself are used (no psutil).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"
PY = sys.executable
CLIENT_ID = "bench-client"
KID = "bench-key-1"
SCOPE = "system/*.rs"
MB = 1e6
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- small helpers ---------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def log(message: str) -> None:
    """Progress lines go to stderr so that stdout holds only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def dir_sizes(path: Path) -> dict[str, int]:
    """``{file name: size}`` of the NDJSON files directly in ``path`` (no partial files)."""
    return {p.name: p.stat().st_size for p in path.glob("*.ndjson")}


def count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def airflow_env() -> dict[str, str]:
    """An isolated Airflow configuration for any child that imports airflow."""
    home = WORK / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env.pop("AIRFLOW_CONN_SMART_DEFAULT", None)
    return env


# -- keys ------------------------------------------------------------------------------------------


@dataclass
class Keys:
    pem_path: Path
    jwks_path: Path
    pem: str

    @classmethod
    def create(cls, directory: Path) -> Keys:
        from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks

        directory.mkdir(parents=True, exist_ok=True)
        key = generate_private_key("ES384")
        pem = private_key_to_pem(key)
        pem = pem.decode() if isinstance(pem, bytes) else pem
        pem_path, jwks_path = directory / "key.pem", directory / "jwks.json"
        pem_path.write_text(pem)
        pem_path.chmod(0o600)
        jwks_path.write_text(json.dumps(public_jwks(key, kid=KID, alg="ES384")))
        return cls(pem_path, jwks_path, pem)


def make_client(fhir_url: str, keys: Keys, **auth_kwargs: Any) -> Any:
    """An authenticated ``BulkExportClient`` (``BackendServicesAuth`` with the benchmark key)."""
    import requests

    from airflow_provider_smart.auth import BackendServicesAuth
    from airflow_provider_smart.bulk import BulkExportClient

    auth = BackendServicesAuth(
        client_id=CLIENT_ID, private_key=keys.pem, kid=KID, fhir_base_url=fhir_url, scope=SCOPE, **auth_kwargs
    )
    session = requests.Session()
    session.auth = auth
    return BulkExportClient(session, fhir_url)


# -- the sandbox as a separate process -------------------------------------------------------------


class ServerProcess:
    """``python -m airflow_provider_smart.testing`` in its own process, so its CPU is not the client's."""

    def __init__(
        self,
        name: str,
        keys: Keys,
        *,
        patients: int,
        resources_per_patient: int,
        resources_per_file: int,
        gzip: bool,
        token_lifetime: int = 3600,
    ) -> None:
        self.name, self.keys = name, keys
        self.settings = {
            "patients": patients,
            "resources_per_patient": resources_per_patient,
            "resources_per_file": resources_per_file,
            "gzip": gzip,
        }
        self.directory = WORK / f"server-{name}"
        self.data_dir = self.directory / "data"
        self.token_lifetime = token_lifetime
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        fresh_dir(self.directory)
        ready = self.directory / "ready"
        s = self.settings
        argv = [
            PY, "-m", "airflow_provider_smart.testing",
            "--port", "0",
            "--ready-file", str(ready),
            "--client-id", CLIENT_ID,
            "--jwks", str(self.keys.jwks_path),
            "--scopes", SCOPE,
            "--token-lifetime", str(self.token_lifetime),
            "--patients", str(s["patients"]),
            "--resources-per-patient", str(s["resources_per_patient"]),
            "--resources-per-file", str(s["resources_per_file"]),
            "--status-polls", "0",
            "--retry-after", "1",
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        if not s["gzip"]:
            argv.append("--no-gzip")
        self._log = (self.directory / "server.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sandbox {self.name} exited early; see {self.directory / 'server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox {self.name} did not start within 60 s")
            time.sleep(0.02)
        self.url = ready.read_text().strip()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the CLI stops cleanly on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """user+sys CPU of the server so far (from /proc; 0 where /proc is unavailable)."""
        if self.proc is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)

    def job_dir(self, status_url: str) -> Path:
        return self.data_dir / status_url.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Export:
    """A completed export on a server process: its manifest, and a token for curl."""

    server: ServerProcess
    status_url: str
    manifest: Any
    token: str
    token_url: str
    seconds: float  # kick-off to complete manifest (generation time, for context)
    _sizes: dict[str, int] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [f.url for _, f in self.manifest.files]

    def names(self) -> dict[str, int]:
        """``{file name: manifest count}``."""
        return {f.url.rsplit("/", 1)[-1]: f.count for _, f in self.manifest.files}

    def sizes(self) -> dict[str, int]:
        """The true (uncompressed) sizes, read once from the server's data directory."""
        if not self._sizes:
            directory = self.server.job_dir(self.status_url)
            self._sizes = {name: (directory / name).stat().st_size for name in self.names()}
        return dict(self._sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes().values())


def start_export(server: ServerProcess, keys: Keys, **request: Any) -> tuple[Any, str, float]:
    from airflow_provider_smart.bulk import ExportRequest

    client = make_client(server.url, keys)
    started = time.monotonic()
    return client, client.kick_off(ExportRequest(**request)), started


def finish_export(server: ServerProcess, started: tuple[Any, str, float]) -> Export:
    client, status_url, t0 = started
    manifest = client.wait(status_url, poll_interval=0.2, min_poll_interval=0.2, timeout=600)
    seconds = time.monotonic() - t0
    auth = client.session.auth
    export = Export(server, status_url, manifest, auth.get_token().access_token, auth.token_url, seconds)
    export.sizes()  # while the server (and its files) is alive
    return export


# -- measured child processes ----------------------------------------------------------------------


@dataclass
class Measured:
    wall: float
    user: float
    sys: float
    maxrss_kb: int
    returncode: int
    server_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys


# The measured command is started by this small runner rather than by the harness itself: a process's
# peak RSS (ru_maxrss) survives execve, so anything forked from the ~50 MB harness would report at least
# the harness's RSS. Forked from this bare interpreter (-I -S), the floor is ~9 MB, below curl's own peak.
RUNNER = """
import json, os, signal, sys, time
out, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
signal.setitimer(signal.ITIMER_REAL, 0)
result = {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
          "returncode": os.waitstatus_to_exitcode(status)}
with open(out, "w") as handle:
    json.dump(result, handle)
"""


def run_measured(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    server: Any = None,  # anything with cpu_seconds(): a ServerProcess or static_server.Nginx
) -> Measured:
    """Run ``argv`` to completion and measure it with ``wait4``: wall time, user/sys CPU and peak RSS of it
    and its reaped descendants (for a process tree, ``ru_maxrss`` is the largest single process's peak)."""
    result_path, stderr_path = WORK / "runner-result.json", WORK / "child.stderr"
    result_path.unlink(missing_ok=True)
    server_cpu0 = server.cpu_seconds() if server else 0.0
    with stderr_path.open("wb") as err:
        subprocess.run(
            [PY, "-I", "-S", "-c", RUNNER, str(result_path), str(timeout), *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=REPO,
            timeout=timeout + 60,
            check=True,
        )
    server_cpu = server.cpu_seconds() - server_cpu0 if server else 0.0
    r = json.loads(result_path.read_text())
    if r["returncode"] != 0:
        tail = stderr_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv[:3])}... exited with {r['returncode']}:\n{tail}")
    return Measured(r["wall"], r["user"], r["sys"], r["maxrss_kb"], r["returncode"], server_cpu)


# -- report tables ---------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], aligns: str | None = None) -> str:
    """A plain-text table; ``aligns`` is one of ``l``/``r`` per column (default: first left, rest right)."""
    aligns = aligns or "l" + "r" * (len(headers) - 1)
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if a == "l" else v.rjust(w) for v, w, a in zip(values, widths, aligns, strict=True)]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line([str(h) for h in headers]), rule, *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")
