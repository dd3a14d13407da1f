"""0.1.0's keyword arguments still work for one minor version, each with a DeprecationWarning naming its
replacement (README documents BulkExportClient and download: public API)."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_smart.bulk import BulkExportClient, DownloadOptions, ExportRequest, RetryPolicy


def test_client_retry_keywords_fold_into_the_retry_policy() -> None:
    naps: list[float] = []
    with pytest.warns(DeprecationWarning, match=r"sleep=.*retry=RetryPolicy\(sleep=") as caught:
        client = BulkExportClient(
            requests.Session(), "https://ehr.example/fhir", sleep=naps.append, transient_retries=2, backoff_max=9
        )
    assert len(caught) == 3 and all(w.filename == __file__ for w in caught)  # points at the caller
    assert client.retry.sleep == naps.append  # (a bound method is a new object on each access)
    assert (client.retry.attempts, client.retry.backoff_max) == (2, 9)
    client.retry.sleep(0.5)
    assert naps == [0.5]


def test_client_keywords_keep_an_explicit_policy_and_reject_unknown_ones() -> None:
    with pytest.warns(DeprecationWarning):
        client = BulkExportClient(
            requests.Session(), "https://ehr.example/fhir", retry=RetryPolicy(attempts=7), backoff_base=3
        )
    assert (client.retry.attempts, client.retry.backoff_base) == (7, 3)
    with pytest.raises(TypeError, match="sleeep"):
        BulkExportClient(requests.Session(), "https://ehr.example/fhir", sleeep=print)


def test_download_max_concurrent_downloads_still_works(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = client.wait(client.kick_off(ExportRequest(resource_types=["Patient", "Observation"])))
    with pytest.warns(DeprecationWarning, match=r"download\(max_concurrent_downloads=.*DownloadOptions") as caught:
        report = client.download(manifest, tmp_path, max_concurrent_downloads=1, check_resource_types=True)
    assert {w.filename for w in caught} == {__file__}
    assert len(report.files) == 2 and all(f.lines for f in report.files)  # a failed file would raise
    assert sorted(p.name for p in tmp_path.glob("*.ndjson")) == ["Observation.1.ndjson", "Patient.1.ndjson"]
    with pytest.warns(DeprecationWarning, match=r"download_batch\(skip_existing="):
        client.download_batch([], tmp_path, DownloadOptions(), skip_existing=False)
    with pytest.raises(TypeError, match="max_concurent"):
        client.download(manifest, tmp_path, max_concurent_downloads=2)
