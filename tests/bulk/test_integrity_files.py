"""Data integrity of single files against a hostile server: truncation, gzip trailers, HTML, wrong counts."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkDownloadError, ExportManifest


def ndjson(n: int, rtype: str = "Patient") -> bytes:
    return b"".join(json.dumps({"resourceType": rtype, "id": str(i)}).encode() + b"\n" for i in range(n))


def manifest_of(server: Any, *entries: dict[str, Any]) -> ExportManifest:
    return ExportManifest.from_json(server.default_manifest(list(entries)), server.status_url)


def test_a_body_cut_mid_line_without_content_length_is_retried(hostile, plain_client, tmp_path) -> None:
    full = ndjson(3)
    hostile.files["p1"] = [hostile.Body(full[:-10], framing="close"), hostile.Body(full, framing="close")]
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert report.files[0].attempts == 2 and report.files[0].lines == 3
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == full


def test_a_cut_that_keeps_failing_never_lands(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = hostile.Body(ndjson(3)[:-10], framing="close")
    with pytest.raises(BulkDownloadError, match=r"not a complete JSON object.*gave up after 2 attempts"):
        plain_client(hostile, attempts=1).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert list(tmp_path.rglob("*.ndjson")) == [] and not list(tmp_path.glob(".*part"))


def test_a_last_line_without_newline_that_is_whole_is_accepted(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = hostile.Body(ndjson(3)[:-1], framing="close")
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=3)), tmp_path)
    assert report.files[0].attempts == 1 and report.files[0].lines == 3


@pytest.mark.parametrize("cut", [8, 4, 200])  # no trailer, half a trailer, mid-stream
def test_a_gzip_body_is_complete_only_with_its_trailer(hostile, plain_client, tmp_path, cut: int) -> None:
    full = ndjson(50)
    packed = gzip.compress(full)
    gz = {"Content-Encoding": "gzip"}
    hostile.files["p1"] = [
        hostile.Body(packed[:-cut], framing="close", headers=gz),
        hostile.Body(packed, framing="close", headers=gz),
    ]
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert report.files[0].attempts == 2 and report.files[0].lines == 50
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == full


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n", "text/html; charset=utf-8"),
        (b'["not", "an", "object"]\n{"resourceType":"Patient"}\n', "application/fhir+ndjson"),
        (b"  \n\nGateway says hello\n", "text/plain"),
    ],
)
def test_a_200_that_is_not_ndjson_is_rejected(hostile, plain_client, tmp_path, data: bytes, ctype: str) -> None:
    hostile.files["p1"] = hostile.Body(data, content_type=ctype)
    with pytest.raises(BulkDownloadError) as info:
        plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    message = str(info.value)
    assert "not NDJSON" in message and hostile.file_url("p1") in message and ctype in message
    assert hostile.served("p1") == 1  # not retried: it is an answer, not a broken connection
    assert list(tmp_path.rglob("*ndjson*")) == []
