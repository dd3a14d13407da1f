"""What the tables step reads from an export landed from the sandbox: whether it is incremental, and since when."""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.bulk import ExportRequest, ExportWorkflow
from airflow_provider_smart.tables.landed import LandedExport

SINCE = "2020-01-01T00:00:00Z"


def test_an_incremental_post_kickoff_lands_as_incremental(sb: Any, make_client: Any, tmp_path: Any) -> None:
    # A POST kick-off's manifest 'request' is the bare URL (the parameters were in the body): read as a full
    # export, the tables step would replace every table with only the resources that changed.
    request = ExportRequest(level="patient", patients=["pat-0001"], resource_types=["Patient"], since=SINCE)
    flow = ExportWorkflow(make_client(sb), tmp_path, request.to_dict())
    started = flow.start(request)
    summary = flow.land(started.status_url, flow.wait(started.status_url, poll_interval=0.01))
    assert sb.kickoffs[-1]["method"] == "POST" and "_since" not in summary["request"]
    assert summary["since"] == SINCE
    for landed in (LandedExport.open(str(tmp_path)), LandedExport.open(summary)):
        assert landed.incremental and landed.since == SINCE
