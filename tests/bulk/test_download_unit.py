"""Download edge cases that need no server: completeness checks, empty manifests, destinations."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import BulkExportClient, BulkExportError, ExportManifest
from airflow_provider_smart.bulk.storage import as_destination
from airflow_provider_smart.bulk.stream import IncompleteBody, open_body


class Raw:
    def __init__(self, read: int) -> None:
        self.read = read

    def tell(self) -> int:
        return self.read


def response(headers: dict[str, str], raw: object) -> requests.Response:
    r = requests.Response()
    r.status_code = 200
    r.headers.update(headers)
    r.raw = raw
    return r


def check_complete(response: requests.Response, decoded_bytes: int) -> None:
    """A body urllib3 read for us (no http.client response under it): BodyReader's fallback check."""
    body = open_body(response)
    body.decoded = decoded_bytes
    body.check_complete()


def test_short_body_is_incomplete() -> None:
    # IncompleteBody is what the downloader retries as a transient failure
    with pytest.raises(IncompleteBody, match="ended after 90 of 100 bytes"):
        check_complete(response({"Content-Length": "100"}, Raw(90)), 90)
    # gzip: Content-Length counts the bytes on the wire, not the decoded ones
    check_complete(response({"Content-Length": "100"}, Raw(100)), 300)
    check_complete(response({}, Raw(5)), 5)  # chunked: nothing to compare


def test_short_body_without_tell_compares_decoded_bytes_unless_encoded() -> None:
    with pytest.raises(IncompleteBody):
        check_complete(response({"Content-Length": "100"}, object()), 99)
    encoded = {"Content-Length": "100", "Content-Encoding": "gzip"}
    check_complete(response(encoded, object()), 5)


def test_empty_manifest_downloads_nothing(tmp_path) -> None:
    client = BulkExportClient(requests.Session(), "https://ehr.example/fhir")
    manifest = ExportManifest.from_json({"transactionTime": "t", "output": [], "error": []}, "https://ehr.example/s")
    report = client.download(manifest, tmp_path / "out")
    assert report.files == [] and (tmp_path / "out").is_dir()
    assert report.to_dict()["totals"]["files"] == 0


def test_duplicate_paths_are_refused(tmp_path) -> None:
    client = BulkExportClient(requests.Session(), "https://ehr.example/fhir")
    entry = {
        "kind": "output",
        "type": "Patient",
        "url": "https://ehr.example/f",
        "count": 1,
        "path": "Patient.1.ndjson",
    }
    with pytest.raises(BulkExportError, match="share a path"):
        client.download_batch([entry, dict(entry)], tmp_path)


def test_destinations(tmp_path) -> None:
    assert as_destination(str(tmp_path)) == tmp_path
    assert as_destination(tmp_path) is tmp_path
    with pytest.raises(BulkExportError, match="ObjectStoragePath"):
        as_destination("s3://bucket/x")


def test_big_chunks_are_written_in_slices() -> None:
    import io

    from airflow_provider_smart.bulk.download import WRITE_SIZE, write_in_slices

    class Recording(io.BytesIO):
        sizes: list[int] = []

        def write(self, data: Any) -> int:
            self.sizes.append(len(data))
            return super().write(data)

    chunk = bytearray(range(256)) * (WRITE_SIZE * 2 // 256 + 100)
    handle = Recording()
    write_in_slices(handle, chunk)
    write_in_slices(handle, b"tail")
    assert handle.getvalue() == bytes(chunk) + b"tail"
    assert handle.sizes == [WRITE_SIZE, WRITE_SIZE, len(chunk) - 2 * WRITE_SIZE, 4]
    chunk.extend(b"x")  # no view of the reused buffer outlives the call (it could not grow otherwise)
