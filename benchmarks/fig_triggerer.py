"""Figure 8: triggerer capacity. N bulk-export triggers wait in one event loop, as in one triggerer.

Three processes per case, so that nothing measured shares a CPU budget it should not:

* ``serve``: a local asyncio HTTP/1.1 server (keep-alive). ``POST /token`` mints a fresh token and counts
  it; ``GET /status/<i>`` checks the bearer token (401 otherwise), waits ``latency`` seconds, then answers
  ``202`` + ``Retry-After: <retry_after>``. It records when each status URL was asked and answered, so it
  can count polls made before the ``Retry-After`` it gave had passed ("early"); ``GET /stats`` returns it all.
* ``triggers`` (the measured child): N ``SmartBulkExportTrigger`` s of one connection (an
  ``AIRFLOW_CONN_*`` env var, ``private_key_jwt`` with the benchmark key), run by ``asyncio.gather`` in one
  event loop with ``end_time`` = start + ``duration``. Beside them a ticker sleeps 50 ms in a loop and
  records its worst lateness (the loop's worst stall) and the most threads alive; peak RSS is
  ``ru_maxrss``, measured against the RSS once everything is imported (Airflow included).
* this module's :func:`run_triggerer_figure`, which starts both and reads the numbers.

Before the triggers start, the ticker runs alone for a few seconds: its worst lateness then is the
machine's own noise (other processes, the scheduler), printed beside the stall under load.

The server's pace: a trigger that polls whenever the server allows makes one poll every ``latency +
retry_after`` seconds from its start; a poll counts when its answer comes before ``end_time``:
``floor((duration - latency) / (latency + retry_after)) + 1`` polls. Durations keep the last answer
seconds away from ``end_time`` (40 s with L = 1 s: the 7th answer at 37 s; 50 s with L = 5 s: the 5th
at 45 s). The figure is the polls the triggers reported
(their events' ``polls``) over N times that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import CLIENT_ID, KID, PY, REPO, SCOPE, WORK, Keys, log  # noqa: E402

TICK = 0.05
IDLE_SECONDS = 5.0  # the ticker alone first: the machine's own noise


@dataclass
class TriggererCase:
    triggers: int
    latency: float  # seconds the server takes to answer a status request
    retry_after: int  # the server's Retry-After on each 202
    duration: float  # end_time - start

    @property
    def ideal_polls(self) -> int:
        return math.floor((self.duration - self.latency) / (self.latency + self.retry_after)) + 1


TRIGGERER_FULL = [
    TriggererCase(1000, 1.0, 5, 40.0),
    TriggererCase(100, 1.0, 5, 40.0),
    TriggererCase(1000, 5.0, 5, 50.0),
    TriggererCase(100, 5.0, 5, 50.0),
]
TRIGGERER_QUICK = [TriggererCase(200, 1.0, 5, 15.0)]


# -- the server ------------------------------------------------------------------------------------
class StatusServer:
    def __init__(self, latency: float, retry_after: int) -> None:
        self.latency, self.retry_after = latency, retry_after
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.polls = 0
        self.unauthorised = 0
        self.early = 0
        self.answered: dict[str, float] = {}  # status path -> when its last 202 was sent
        self.connections = 0

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                writer.write(await self.answer(method, path.split("?", 1)[0], headers))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        if path == "/token" and method == "POST":
            self.token_requests += 1
            token = f"bench-token-{self.token_requests}-{os.urandom(8).hex()}"
            self.tokens.add(token)
            body = {"access_token": token, "token_type": "bearer", "expires_in": 3600, "scope": SCOPE}
            return self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if path.startswith("/status/"):
            if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
                self.unauthorised += 1
                return self._reply(401, b"no token")
            arrived = time.monotonic()
            last = self.answered.get(path)
            if last is not None and arrived - last < self.retry_after - 0.01:
                self.early += 1
            self.polls += 1
            await asyncio.sleep(self.latency)
            self.answered[path] = time.monotonic()
            return self._reply(202, b"", {"Retry-After": str(self.retry_after), "X-Progress": "waiting"})
        if path == "/stats":
            stats = {
                "token_requests": self.token_requests,
                "polls": self.polls,
                "unauthorised": self.unauthorised,
                "early_polls": self.early,
                "connections": self.connections,
            }
            return self._reply(200, json.dumps(stats).encode(), {"Content-Type": "application/json"})
        return self._reply(404, b"not found")


async def serve(latency: float, retry_after: int, ready_file: Path) -> None:
    server = StatusServer(latency, retry_after)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096, limit=2**16)
    port = listener.sockets[0].getsockname()[1]
    ready_file.write_text(str(port))
    async with listener:
        await listener.serve_forever()


# -- the measured child ----------------------------------------------------------------------------
def _vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_triggers(case: TriggererCase, url: str, out: Path) -> None:
    from airflow_provider_smart import connection  # noqa: F401 - all a trigger imports, before the baseline
    from airflow_provider_smart.bulk import aio, protocol  # noqa: F401
    from airflow_provider_smart.hooks import smart  # noqa: F401
    from airflow_provider_smart.triggers import shared  # noqa: F401
    from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger

    # What a long-running triggerer's heap is at rest: Airflow's modules, imported once. Frozen, a full
    # collection walks only what the triggers allocate (unfrozen, 120 MB of Airflow took 300-400 ms here).
    gc.collect()
    gc.freeze()
    baseline = _vm_rss_mb()
    threads_at_start = threading.active_count()
    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_pauses.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)

    async def idle_stall(seconds: float) -> float:
        """The worst lateness of the ticker alone: this machine's noise floor, side by side."""
        worst, until = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < until:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - before - TICK)
        return worst

    async def main() -> dict[str, Any]:
        idle = await idle_stall(IDLE_SECONDS)
        worst_stall, most_threads, done = 0.0, threads_at_start, False

        async def ticker() -> None:
            nonlocal worst_stall, most_threads
            while not done:
                before = time.perf_counter()
                await asyncio.sleep(TICK)
                worst_stall = max(worst_stall, time.perf_counter() - before - TICK)
                most_threads = max(most_threads, threading.active_count())

        async def one(trigger: SmartBulkExportTrigger) -> tuple[dict[str, Any], float]:
            async for event in trigger.run():
                return event.payload, time.time()
            raise RuntimeError("no event")

        tick = asyncio.ensure_future(ticker())
        started = time.time()
        end_time = started + case.duration
        triggers = [
            SmartBulkExportTrigger(
                status_url=f"{url}/status/{i}",
                smart_conn_id="smart_bench",
                end_time=end_time,
                poll_interval=float(case.retry_after),
            )
            for i in range(case.triggers)
        ]
        mid_rss: list[float] = []

        async def sample_rss() -> None:
            await asyncio.sleep(case.duration / 2)
            mid_rss.append(_vm_rss_mb())

        sampler = asyncio.ensure_future(sample_rss())
        results = await asyncio.gather(*(one(t) for t in triggers))
        done = True
        await tick
        await sampler
        events = [event for event, _ in results]
        return {
            "statuses": sorted({e["status"] for e in events}),
            "errors": [e.get("message") for e in events if e["status"] == "error"][:3],
            "polls": sum(e["polls"] for e in events),
            "min_polls": min(e["polls"] for e in events),
            "overshoot_s": max(at - end_time for _, at in results),
            "wall_s": time.time() - started,
            "worst_stall_ms": worst_stall * 1000,
            "idle_stall_ms": idle * 1000,
            "most_threads": most_threads,
            "threads_at_start": threads_at_start,
            "mid_rss_mb": mid_rss[0] if mid_rss else float("nan"),
            "full_gc_ms": max(gc_pauses, default=0.0) * 1000,
            "full_gcs": len(gc_pauses),
        }

    result = asyncio.run(main())
    result["baseline_rss_mb"] = baseline
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


# -- the figure ------------------------------------------------------------------------------------
def _start_server(case: TriggererCase, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = work / "triggerer-server.port"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [PY, __file__, "serve", "--latency", str(case.latency), "--retry-after", str(case.retry_after),
         "--ready-file", str(ready)],
        cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the triggerer benchmark's server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{ready.read_text().strip()}"


def _stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        return dict(json.loads(response.read()))


def run_case(case: TriggererCase, keys: Keys) -> dict[str, Any]:
    work = WORK / "triggerer"
    work.mkdir(parents=True, exist_ok=True)
    server, url = _start_server(case, work)
    try:
        connection = {
            "conn_type": "smart",
            "host": f"{url}/fhir",
            "login": CLIENT_ID,
            "extra": {"private_key": keys.pem, "kid": KID, "scope": SCOPE, "oauth_url": f"{url}/token"},
        }
        env = {**os.environ, "AIRFLOW_CONN_SMART_BENCH": json.dumps(connection), "PYTHONWARNINGS": "ignore"}
        out = work / "triggers.json"
        out.unlink(missing_ok=True)
        with (work / "triggers.log").open("wb") as child_log:
            subprocess.run(
                [PY, __file__, "triggers", "--url", url, "--out", str(out), "--case", json.dumps(asdict(case))],
                cwd=REPO, env=env, stdout=child_log, stderr=child_log, timeout=case.duration + 300, check=True,
            )  # fmt: skip
        result = json.loads(out.read_text())
        result.update(server=_stats(url), case=asdict(case), ideal_polls=case.ideal_polls)
    finally:
        server.terminate()
        server.wait(timeout=10)
    result["pace"] = result["polls"] / (case.triggers * case.ideal_polls)
    result["kb_per_export"] = (result["peak_rss_mb"] - result["baseline_rss_mb"]) * 1024 / case.triggers
    result["targets"] = {
        "pace": result["pace"] >= 0.95,
        "overshoot": result["overshoot_s"] <= 1.0,
        "stall": result["worst_stall_ms"] <= 100,
        "tokens": result["server"]["token_requests"] == 1,
        "rss": result["peak_rss_mb"] <= 200 or case.triggers != 1000,
        "no_early_polls": result["server"]["early_polls"] == 0,
        "all_timed_out": result["statuses"] == ["timeout"],
    }
    return result


def run_triggerer_figure(keys: Keys, cases: list[TriggererCase]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        log(f"triggerer: {case.triggers} triggers, latency {case.latency:g} s, Retry-After {case.retry_after} s")
        rows.append(run_case(case, keys))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--latency", type=float, required=True)
    s.add_argument("--retry-after", type=int, required=True)
    s.add_argument("--ready-file", type=Path, required=True)
    t = sub.add_parser("triggers")
    t.add_argument("--url", required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--case", required=True)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        server = serve(args.latency, args.retry_after, args.ready_file)
        try:
            import uvloop  # the server's speed is not what is measured: the fastest loop at hand
        except ImportError:
            asyncio.run(server)
        else:
            uvloop.run(server)
    else:
        run_triggers(TriggererCase(**json.loads(args.case)), args.url, args.out)


if __name__ == "__main__":
    main()
