"""Landed exports written the way the export operators land them, and a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def observation(rid: str, codes: list[str], status: str = "final", value: float = 1.5) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": c, "display": f"code {c}"} for c in codes]},
        "subject": {"reference": f"Patient/{rid.split('-')[1]}"},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


def patient(pid: str, gender: str = "female") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": "1970-01-02"}


def land(
    root: Any,
    files: dict[str, list[Any]],
    *,
    since: str | None = None,
    transaction_time: str = "2024-05-01T00:00:00Z",
    deleted: list[str] | None = None,
    checks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write NDJSON files (``{"Observation.1.ndjson": [resource or raw line, ...]}``), deleted Bundles for
    ``deleted`` (``Type/id``), and ``manifest.json`` with the export summary, as ``ExportWorkflow`` does
    (``checks``: what the export found of its server, e.g. ``{"deletions_not_reported": True}``)."""
    root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "destination": str(root),
        "transaction_time": transaction_time,
        "request": "http://127.0.0.1:1/fhir/$export" + (f"?_since={since}" if since else ""),
        "output": [],
        "deleted": [],
        "error": [],
        **(checks or {}),
    }
    for name, lines in files.items():
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        (root / name).write_text(text)
        entry = {"type": name.split(".")[0], "path": str(root / name), "lines": len(lines), "bytes": len(text)}
        summary["output"].append(entry)
    if deleted:
        (root / "deleted").mkdir(exist_ok=True)
        bundles = [
            {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE", "url": ref}}]}
            for ref in deleted
        ]
        text = "".join(json.dumps(b) + "\n" for b in bundles)
        (root / "deleted" / "Bundle.1.ndjson").write_text(text)
        summary["deleted"].append(
            {"type": "Bundle", "path": str(root / "deleted" / "Bundle.1.ndjson"), "lines": len(bundles), "bytes": 1}
        )
    (root / "manifest.json").write_text(json.dumps({"manifest": {}, "summary": summary}))
    return summary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 in its own process (real HTTP: s3fs, delta-rs and DuckDB all talk to it;
    in this process it would wait for the GIL that a delta-rs call holds)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket, and the ``aws_default`` Airflow connection pointing at the moto server."""
    import boto3

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "test-key-id",
                "password": "test-secret-key",
                "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="test-key-id",
        aws_secret_access_key="test-secret-key",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=name)
    return name


def upload_tree(local: Path, bucket: str, prefix: str, endpoint: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    for path in local.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
