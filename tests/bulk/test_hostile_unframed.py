"""Bodies nothing proves complete (no Content-Length, not chunked, no manifest count): never silently final.

The first hardening pass left one silent truncation: a body ended by the server closing the connection,
cut exactly at a line end (or after a gzip member), parses whole; with no ``count`` in the manifest
(Medplum sends none) it landed with 26 of its 50 lines. ``unframed_bodies`` decides what happens now.
"""

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


FULL = ndjson(50)
CUT = FULL[: FULL.index(b"\n", len(FULL) // 2) + 1]  # exactly at a line end: 26 whole lines


def test_a_body_cut_at_a_line_end_without_framing_is_fetched_again(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = [hostile.Body(CUT, framing="close"), hostile.Body(FULL, framing="close")]
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL
    assert report.files[0].lines == 50 and report.files[0].unverified is None
    assert hostile.served("p1") == 3  # the cut copy, then two full copies that agree


def test_copies_that_never_agree_fail_and_leave_nothing(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = [hostile.Body(ndjson(n), framing="close") for n in (10, 20, 30)]
    with pytest.raises(BulkDownloadError, match="three downloads of a body with no framing"):
        plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert list(tmp_path.rglob("*ndjson*")) == []


def test_mark_lands_the_first_copy_listed_as_unverified(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files["p1"] = hostile.Body(CUT, framing="close")
    caplog.set_level(logging.WARNING, "airflow_provider_smart")
    options = DownloadOptions(unframed_bodies="mark")
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path, options)
    assert hostile.served("p1") == 1
    assert report.files[0].unverified and "Content-Length" in report.files[0].unverified
    assert report.unverified[0]["path"].endswith("Patient.1.ndjson")
    assert report.totals()["unverified"] == 1
    assert "unverified" in caplog.text


def test_fail_refuses_an_unframed_body_naming_the_option(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = hostile.Body(FULL, framing="close")
    with pytest.raises(BulkDownloadError, match="unframed_bodies='fail'"):
        plain_client(hostile).download(
            manifest_of(hostile, hostile.entry("p1")), tmp_path, DownloadOptions(unframed_bodies="fail")
        )
    assert list(tmp_path.rglob("*ndjson*")) == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_framed_bodies_are_fetched_once(hostile, plain_client, tmp_path, framing: str) -> None:
    """Guard: Content-Length and chunked framing prove a body whole; no second copy."""
    hostile.files["p1"] = hostile.Body(FULL, framing=framing)
    options = DownloadOptions(unframed_bodies="fail")
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path, options)
    assert hostile.served("p1") == 1 and report.files[0].lines == 50


def test_a_matching_manifest_count_proves_an_unframed_body(hostile, plain_client, tmp_path) -> None:
    """Guard: the manifest's count is proof enough."""
    hostile.files["p1"] = hostile.Body(FULL, framing="close")
    options = DownloadOptions(unframed_bodies="fail")
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1", count=50)), tmp_path, options)
    assert hostile.served("p1") == 1 and report.files[0].unverified is None


def test_a_multi_member_gzip_body_cut_at_a_member_boundary_is_not_complete(hostile, plain_client, tmp_path) -> None:
    first, second = gzip.compress(CUT), gzip.compress(FULL[len(CUT) :])
    gz = {"Content-Encoding": "gzip"}
    hostile.files["p1"] = [
        hostile.Body(first, framing="close", headers=gz),  # the trailer of member 1 verifies
        hostile.Body(first + second, framing="close", headers=gz),
    ]
    report = plain_client(hostile).download(manifest_of(hostile, hostile.entry("p1")), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL
    assert report.files[0].lines == 50


def test_unknown_policy_is_refused() -> None:
    from airflow_provider_smart.bulk import BulkExportError

    with pytest.raises(BulkExportError, match="unframed_bodies must be one of"):
        DownloadOptions(unframed_bodies="maybe")
