"""Figures 3 and 4: token requests during a long export, and status polls per export.

Both count requests on an in-process ``SmartSandbox`` (its counters are the ground truth); timing
precision does not matter here, only counts against bounds derived from the measured duration.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from typing import Any

from harness import CLIENT_ID, SCOPE, WORK, Keys, fresh_dir, log, make_client


@dataclass
class TokenCase:
    token_lifetime: int  # the server's expires_in, seconds
    expiry_skew: float  # the client renews this long before expiry
    polls: int  # 202 answers before the manifest (Retry-After: 1)
    files: int  # Observation files of the export
    file_delay: float  # server-side delay before each file (a throttled download)
    concurrency: int


TOKEN_FULL = TokenCase(token_lifetime=3, expiry_skew=1.0, polls=6, files=20, file_delay=0.5, concurrency=2)
TOKEN_QUICK = TokenCase(token_lifetime=2, expiry_skew=1.0, polls=2, files=8, file_delay=0.3, concurrency=2)


def _sandbox(keys: Keys, **kwargs: Any) -> Any:
    import json

    from airflow_provider_smart.testing import SmartSandbox

    sb = SmartSandbox(gzip=False, **kwargs).start()
    sb.register_client(CLIENT_ID, jwks=json.loads(keys.jwks_path.read_text()), scopes=SCOPE)
    return sb


def run_token_figure(keys: Keys, case: TokenCase) -> dict[str, Any]:
    from airflow_provider_smart.bulk import DownloadOptions, ExportRequest

    per_file = 100
    sb = _sandbox(
        keys,
        token_lifetime=case.token_lifetime,
        patients=case.files,
        resources_per_patient=per_file,
        resources_per_file=per_file,
        status_polls_before_ready=case.polls,
        retry_after="1",
    )
    try:
        client = make_client(sb.url, keys, expiry_skew=case.expiry_skew)
        sb.add_fault("file", delay=case.file_delay, times=10_000)  # throttle every file download
        dest = fresh_dir(WORK / "dl" / "tokens")
        started = time.monotonic()
        status_url = client.kick_off(ExportRequest(resource_types=["Observation"]))
        manifest = client.wait(status_url)
        waited = time.monotonic() - started
        report = client.download(manifest, dest, DownloadOptions(max_concurrent_downloads=case.concurrency))
        duration = time.monotonic() - started
        sb.clear_faults()
        shutil.rmtree(dest)
        log_entries = list(sb.requests_log)
        tokens = sb.token_requests
    finally:
        sb.stop()
    effective = case.token_lifetime - case.expiry_skew
    bound = math.ceil(duration / effective) + 1
    api = [e for e in log_entries if e["route"] != "token"]
    with_token = [e for e in api if e["authorization"]]
    return {
        "settings": case.__dict__,
        "duration_s": duration,
        "wait_s": waited,
        "download_s": duration - waited,
        "files": len(report.files),
        "token_requests": tokens,
        "token_endpoint_hits": sum(1 for e in log_entries if e["route"] == "token"),
        "bound": bound,
        "effective_lifetime_s": effective,
        "http_requests": len(api),
        "http_requests_with_token": len(with_token),
        "http_401": sum(1 for e in api if e["status"] == 401),
        "ok": tokens <= bound and tokens < len(with_token),
    }


@dataclass
class PollCase:
    polls: int  # 202 answers before the manifest
    retry_after: int  # seconds, sent on every 202


POLL_FULL = (PollCase(5, 1), PollCase(3, 2))
POLL_QUICK = (PollCase(2, 1),)


def run_poll_figure(keys: Keys, cases: tuple[PollCase, ...]) -> list[dict[str, Any]]:
    from airflow_provider_smart.bulk import ExportRequest

    rows = []
    for case in cases:
        sb = _sandbox(keys, patients=5, status_polls_before_ready=case.polls, retry_after=str(case.retry_after))
        try:
            client = make_client(sb.url, keys)
            status_url = client.kick_off(ExportRequest(resource_types=["Patient"]))
            sb.reset_logs()
            started = time.monotonic()
            client.wait(status_url)
            waited = time.monotonic() - started
            polls = sb.status_polls
        finally:
            sb.stop()
        bound = waited / case.retry_after + 2
        rows.append(
            {
                "settings": case.__dict__,
                "wait_s": waited,
                "polls": polls,
                "bound": bound,
                "ok": polls <= bound,
            }
        )
        log(f"  {case.polls} x 202 with Retry-After {case.retry_after}: {polls} polls in {waited:.1f} s")
    return rows
