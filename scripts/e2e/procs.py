"""Processes the e2e run starts, and stops again: by pid and process group, also on failure or a signal."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what or 'nothing'} listening on 127.0.0.1:{port} after {timeout:.0f} s")


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (children first)."""
    try:
        root = psutil.Process(pid)
        return [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to a process, its process group and every descendant; returns the pids signalled."""
    procs = tree(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    return [p.pid for p in procs]


class Processes:
    """Everything started here, stopped in reverse order by ``stop_all`` (idempotent)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.cleanups: list[tuple[str, Any]] = []
        self._stopped = False
        atexit.register(self.stop_all)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        print(f"\n!!! signal {signal.Signals(signum).name}: stopping everything", file=sys.stderr, flush=True)
        self.stop_all()
        raise SystemExit(128 + signum)

    def start(self, name: str, args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` in its own session (process group = its pid), output to ``<logs>/<name>.log``."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kwargs,
        )
        log.close()
        self.started.append((name, proc))
        return proc

    def on_stop(self, name: str, fn: Any) -> None:
        """Run ``fn()`` when stopping (for daemons such as postgres that are not our children)."""
        self.cleanups.append((name, fn))

    def assert_alive(self, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Fail fast when a service died (its log says why)."""
        for name, proc in self.started:
            if name not in skip and proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{name} exited with {proc.returncode}: " + " | ".join(tail))

    def pid_of(self, name: str) -> int:
        return next(p.pid for n, p in self.started if n == name)

    def stop_all(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        family: dict[str, list[psutil.Process]] = {}
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                family[name] = tree(proc.pid)  # remembered now: psutil checks identity before signalling
                kill_tree(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {proc.pid}) ignored SIGTERM; SIGKILL", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for p in family.get(name, []):  # leftovers (task processes, pool children)
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name, fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {name} failed: {exc}", file=sys.stderr)
