"""Thread and file-descriptor counts stay flat after 200 parallel requests with deadlines, whether the
answers come in time or drip until the deadline cuts them (a guard: this held before the pass)."""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_provider_smart.sessions import DeadlineExceeded, new_session, request_within
from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler


class FastOrDripping(QuietHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/drip"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):  # 10 bytes every 50 ms: never complete within the 1 s deadline
                if self.server.release.wait(0.05):
                    return
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle(target: int, count: callable, seconds: float = 5.0) -> int:  # type: ignore[valid-type]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gc.collect()
        if count() <= target:
            break
        time.sleep(0.05)
    return count()  # type: ignore[no-any-return]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors through /proc")
def test_200_parallel_requests_with_deadlines_leave_no_threads_or_fds_behind() -> None:
    with CountingServer(FastOrDripping).running() as server:
        session = new_session(pool_size=8)

        def one(n: int) -> str:
            path = "/drip" if n % 4 == 0 else "/fast"
            try:
                response = request_within(session, 1.0, "GET", f"{server.base}{path}/{n}", timeout=5)
                response.content  # noqa: B018 - read the body within the deadline
                response.close()
                return f"ok {path}"
            except DeadlineExceeded:
                return f"cut {path}"

        one(1)  # warm up: the pool's first connection, imports
        before, files = {t.ident for t in threading.enumerate()}, fds()

        def new_threads() -> int:  # the client's: not the server's handlers, nor other tests' winding down
            return len(client_threads())

        def client_threads() -> list[str]:
            alive = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
            return [t.name for t in alive if "process_request" not in t.name]

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(200)))
        # every drip is cut; a fast answer may be cut too on a loaded machine: resources are what is checked
        assert results.count("cut /drip") == 50 and "ok /fast" in results
        assert settle(0, new_threads) == 0, client_threads()
        # at most the pool's 8 connections kept for reuse, and the server's ends of them (it runs here too)
        assert settle(files + 16, fds, 10.0) <= files + 16
        session.close()
