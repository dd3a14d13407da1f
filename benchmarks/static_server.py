"""A static-file server that is clearly faster than any client: nginx with its own config on 127.0.0.1.

Installed from Debian's packages when missing (``apt-get install nginx-light``; needs root, as on CI).
Serves directories over http and https (a CA and a server certificate generated at start, trusted by
the clients through ``ca_path``), with ``sendfile`` and ``gzip_static`` (pre-gzipped ``.gz`` twins go to
clients that accept gzip). Every request is logged with nginx's ``$connection`` serial number, so the
TCP connections a client opened can be counted at the server; the CPU of the master and its workers is
read from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import CLK_TCK, fresh_dir, log

from airflow_provider_smart.testing.tls import make_tls

WORKERS = 2  # one per core of the reference machine: https costs the server AES per byte


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def ensure_nginx() -> tuple[str | None, str]:
    """(path to nginx, why not): installs Debian's nginx-light when missing and we may."""
    found = find_nginx()
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "nginx is not installed (and this is not a root Debian machine to install it)"
    log("nginx is missing: apt-get install nginx-light ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600, capture_output=True)
        for package in ("nginx-light", "nginx"):
            done = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                env=env,
                timeout=600,
                capture_output=True,
            )
            if done.returncode == 0 and find_nginx():
                break
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"installing nginx failed: {exc}"
    found = find_nginx()
    return (found, "") if found else (None, "apt-get could not install nginx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """
worker_processes {workers};
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    log_format conn '$connection $connection_requests $status $body_bytes_sent $request_uri';
    access_log {dir}/access.log conn;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types {{ application/fhir+ndjson ndjson; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
{locations}
    }}
}}
"""


class Nginx:
    """``nginx -c <own config>`` serving ``roots`` (``{name: directory}``) at ``/<name>/`` over http and https."""

    def __init__(self, binary: str, directory: Path, roots: dict[str, Path]) -> None:
        self.binary, self.directory, self.roots = binary, directory, roots
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = self.https_port = 0
        self.ca_path = directory / "ca.pem"
        self._log_offset = 0

    def url(self, scheme: str, root: str, name: str) -> str:
        port = self.http_port if scheme == "http" else self.https_port
        return f"{scheme}://127.0.0.1:{port}/{root}/{name}"

    def start(self) -> Nginx:
        fresh_dir(self.directory)
        (self.directory / "tmp").mkdir()
        tls = make_tls(self.directory)
        cert, key = tls.cert, tls.key
        self.http_port, self.https_port = free_port(), free_port()
        locations = "\n".join(
            f"        location /{name}/ {{ alias {path}/; gzip_static on; }}" for name, path in self.roots.items()
        )
        config = CONFIG.format(
            workers=WORKERS,
            user="user root;" if os.geteuid() == 0 else "",
            dir=self.directory,
            http_port=self.http_port,
            https_port=self.https_port,
            cert=cert,
            key=key,
            locations=locations,
        )
        conf = self.directory / "nginx.conf"
        conf.write_text(config)
        self._out = (self.directory / "stderr.log").open("wb")
        argv = [self.binary, "-p", str(self.directory), "-c", str(conf)]
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.proc.poll() is not None:
                text = (self.directory / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited at start: {text[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start listening within 30 s")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        for port in (self.http_port, self.https_port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._out.close()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- measurements ---------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.proc is None:
            return []
        master = self.proc.pid
        found = [master]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def mark(self) -> None:
        """Start counting connections from here (see :meth:`connections_since_mark`)."""
        path = self.directory / "access.log"
        self._log_offset = path.stat().st_size if path.exists() else 0

    def requests_since_mark(self) -> list[list[str]]:
        path = self.directory / "access.log"
        with path.open("rb") as handle:
            handle.seek(self._log_offset)
            text = handle.read().decode(errors="replace")
        return [line.split() for line in text.splitlines() if line.strip()]

    def connections_since_mark(self) -> int:
        """Distinct TCP connections (nginx ``$connection`` serials) that carried a request since the mark."""
        return len({fields[0] for fields in self.requests_since_mark()})
