"""SmartBulkExportDownloadOperator with a mapped ``batch``: a batch naming a file that is no longer in the
export's manifest fails before downloading anything. Real HTTP against the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.exceptions import BulkExportError
from airflow_provider_smart.operators.bulk_export import SmartBulkExportDownloadOperator
from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor

CONTEXT: Any = {}  # the batch path of execute() does not read the context


def planned_batch(sandbox: Any, kick_off: Any) -> dict[str, Any]:
    """A complete export, planned into one batch by the sensor, as the mapped download tasks receive it."""
    sandbox.status_polls_before_ready = 0  # read at kick-off: complete at the first poll
    status_url = kick_off()
    result = SmartBulkExportSensor(task_id="wait", status_url=status_url, max_batches=1).poke(CONTEXT)
    assert result.is_done
    [batch] = result.xcom_value
    assert len(batch["paths"]) >= 2
    return batch


def download(batch: dict[str, Any], destination: Path) -> dict[str, Any]:
    return SmartBulkExportDownloadOperator(task_id="download", batch=batch, destination=str(destination)).execute(
        CONTEXT
    )


@pytest.mark.parametrize(
    ("stale", "keep", "missing"),
    [
        (["Observation.99.ndjson"], True, 1),  # one file the manifest no longer lists, among current ones
        (["Patient.7.ndjson", "deleted/Patient.1.ndjson"], False, 2),  # none of the batch is current
    ],
)
def test_batch_with_files_no_longer_in_the_manifest_fails_before_downloading(
    sandbox: Any, kick_off: Any, tmp_path: Path, stale: list[str], keep: bool, missing: int
) -> None:
    planned = planned_batch(sandbox, kick_off)
    gone_keys = [f"{i:016x}" for i in range(len(stale))]  # URL keys of files the manifest no longer lists
    batch = {
        **planned,
        "paths": [*(planned["paths"] if keep else []), *stale],
        "keys": [*(planned["keys"] if keep else []), *gone_keys],
    }
    dest = tmp_path / "dest"
    sandbox.reset_logs()

    with pytest.raises(BulkExportError) as raised:
        download(batch, dest)
    message = str(raised.value)
    assert message.startswith(f"{missing} file(s) of this batch are no longer in the export's manifest")
    assert planned["status_url"] in message and "re-run the sensor" in message
    routes = [e["route"] for e in sandbox.requests_log]
    assert "status" in routes and "file" not in routes  # it read the manifest, then stopped
    assert not (dest.exists() and any(dest.rglob("*")))


def test_the_batch_as_planned_downloads(sandbox: Any, kick_off: Any, tmp_path: Path) -> None:
    """The control for the test above: the same batch without stale paths lands every file."""
    planned = planned_batch(sandbox, kick_off)
    dest = tmp_path / "dest"
    totals = download(planned, dest)
    assert totals["files"] == totals["downloaded"] == len(planned["paths"])
    assert totals["lines"] == planned["count"] > 0
    assert sorted(p.name for p in dest.glob("*.ndjson") if p.name != "log.ndjson") == sorted(planned["paths"])
