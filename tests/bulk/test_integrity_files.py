"""Data integrity of single files against a hostile server: truncation, gzip trailers, HTML, wrong counts."""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkDownloadError, DownloadOptions, ExportManifest


def ndjson(n: int, rtype: str = "Patient") -> bytes:
    return b"".join(json.dumps({"resourceType": rtype, "id": str(i)}).encode() + b"\n" for i in range(n))


def manifest_of(server: Any, *entries: dict[str, Any]) -> ExportManifest:
    return ExportManifest.from_json(server.default_manifest(list(entries)), server.status_url)


def test_a_body_cut_mid_line_without_content_length_is_retried(hostile, plain_client, tmp_path) -> None:
    full = ndjson(3)
    hostile.files["p1"] = [hostile.Body(full[:-10], framing="close"), hostile.Body(full, framing="close")]
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    # the cut copy, then two full ones: nothing frames the body, so a second copy must agree
    assert report.files[0].attempts == 3 and report.files[0].lines == 3
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
    assert report.files[0].attempts == 3 and report.files[0].lines == 50  # cut, full, agreeing copy
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


# -- item 2: a wrong manifest count ------------------------------------------------------------------
def test_a_wrong_count_is_checked_twice_then_kept_with_a_warning(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files["p1"] = hostile.Body(ndjson(3))
    caplog.set_level(logging.WARNING, "airflow_provider_smart")
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=113)), tmp_path)
    assert hostile.served("p1") == 2  # a second opinion before believing the file over the manifest
    assert report.files[0].lines == 3 and report.files[0].count_mismatch
    assert report.count_mismatches == [
        {"path": str(tmp_path / "Patient.1.ndjson"), "type": "Patient", "count": 113, "lines": 3}
    ]
    assert report.totals()["count_mismatches"] == 1
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == ndjson(3)
    assert "strict_counts=True" in caplog.text and "check_counts" not in caplog.text


def test_strict_counts_fails_a_wrong_count_naming_the_parameter(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = hostile.Body(ndjson(3))
    options = DownloadOptions(strict_counts=True)
    with pytest.raises(BulkDownloadError, match=r"3 resources but the manifest says 113.*strict_counts=False"):
        plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=113)), tmp_path, options)
    assert list(tmp_path.rglob("*ndjson*")) == []


def test_a_short_first_copy_is_replaced_by_a_full_second_one(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = [hostile.Body(ndjson(2)), hostile.Body(ndjson(3))]
    options = DownloadOptions(strict_counts=True)
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=3)), tmp_path, options)
    assert report.files[0].lines == 3 and not report.files[0].count_mismatch


def test_two_copies_that_disagree_fail(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = [hostile.Body(ndjson(2)), hostile.Body(ndjson(4))]
    with pytest.raises(BulkDownloadError, match="held 2 and 4 resources"):
        plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=3)), tmp_path)
    assert list(tmp_path.rglob("*ndjson*")) == []


# -- item 3: error files in bounded memory, diagnostics truncated -------------------------------------------
def outcome(severity: str, diagnostics: str) -> bytes:
    issue = {"severity": severity, "code": "processing", "diagnostics": diagnostics}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode() + b"\n"


def test_error_files_are_read_in_bounded_memory_and_diagnostics_truncated(
    hostile, plain_client, tmp_path, peak_memory
) -> None:
    huge = outcome("error", "x" * (24 * 2**20))  # one 24 MiB line
    hostile.files["e1"] = hostile.Body(outcome("error", "Patient/1: " + "y" * 10_000) + huge + outcome("fatal", "z"))
    manifest = ExportManifest.from_json(
        {**hostile.default_manifest([]), "error": [hostile.entry("e1", "OperationOutcome")]}, hostile.status_url
    )
    report, peak = peak_memory(plain_client(hostile).download, manifest, tmp_path)
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert report.error_issue_count == 3
    first, clipped, last = report.error_issues
    assert first["diagnostics"].startswith("Patient/1: yyy") and len(first["diagnostics"]) < 600
    assert first["diagnostics"].endswith("characters in all)")
    assert clipped["severity"] == "error" and "line 2 is longer than" in clipped["diagnostics"]
    assert len(clipped["diagnostics"]) < 600
    assert last["severity"] == "fatal"
    assert len(json.dumps(report.to_dict())) < 5000
