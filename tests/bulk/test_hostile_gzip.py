"""gzip bodies as servers really send them: several members, trailing bytes, header flags, stacked codings.

Guards (they held before this pass): several members, header flags, a second member cut short, gzip
stacked twice, bytes after the data that are not gzip. The others failed on the old code: NUL padding
was "corrupt", ``identity`` in a coding list broke decoding (then was retried as a network error), a
stacked body cut inside a layer landed, and an unknown coding was saved still encoded."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkDownloadError, ExportManifest

GZ = {"Content-Encoding": "gzip"}


def ndjson(n: int) -> bytes:
    return b"".join(json.dumps({"resourceType": "Patient", "id": str(i)}).encode() + b"\n" for i in range(n))


FULL = ndjson(200)


def manifest_of(server: Any, count: int | None = None) -> ExportManifest:
    return ExportManifest.from_json(server.default_manifest([server.entry("p1", count=count)]), server.status_url)


def with_flags(data: bytes) -> bytes:
    """A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC set (what gzip.compress never writes)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    head = b"\x1f\x8b\x08" + bytes([0x04 | 0x08 | 0x10 | 0x02]) + b"\0\0\0\0\x00\xff"
    head += struct.pack("<H", 4) + b"ab\x00\x00" + b"Patient.ndjson\x00" + b"exported by a server\x00"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(
    "packed",
    [
        pytest.param(gzip.compress(FULL[:3000]) + gzip.compress(FULL[3000:]), id="two-members"),
        pytest.param(b"".join(gzip.compress(FULL[i : i + 500]) for i in range(0, len(FULL), 500)), id="many-members"),
        pytest.param(with_flags(FULL), id="header-flags"),
        pytest.param(gzip.compress(FULL) + b"\0" * 512, id="zero-padding"),
    ],
)
def test_gzip_variants_decode_whole(hostile, plain_client, tmp_path, packed: bytes, framing: str) -> None:
    hostile.files["p1"] = hostile.Body(packed, framing=framing, headers=GZ)
    plain_client(hostile).download(manifest_of(hostile, count=200), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL


def test_nul_padding_after_the_gzip_data_is_ignored_with_a_warning(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files["p1"] = hostile.Body(gzip.compress(FULL) + b"\0" * 100_000, headers=GZ)
    plain_client(hostile).download(manifest_of(hostile, count=200), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL
    assert "100000 NUL bytes of padding" in caplog.text


@pytest.mark.parametrize(
    "tail",
    [b"<html>proxy footer</html>", b"\x1f\x8c" + gzip.compress(b"x")[2:], b"\x1f"],
    ids=["text", "bad-magic", "1f"],
)
def test_other_bytes_after_the_gzip_data_are_refused_not_dropped(hostile, plain_client, tmp_path, tail: bytes) -> None:
    hostile.files["p1"] = hostile.Body(gzip.compress(FULL) + tail, headers=GZ)
    with pytest.raises(BulkDownloadError, match=r"not gzip|corrupt|without its trailer"):
        plain_client(hostile, attempts=0).download(manifest_of(hostile, count=200), tmp_path)
    assert hostile.served("p1") == 1 and not (tmp_path / "Patient.1.ndjson").exists()


def test_a_second_member_cut_short_is_not_complete(hostile, plain_client, tmp_path) -> None:
    packed = gzip.compress(FULL[:3000]) + gzip.compress(FULL[3000:])
    hostile.files["p1"] = [
        hostile.Body(packed[:-20], framing="chunked", headers=GZ),  # the chunked framing is whole: the data is not
        hostile.Body(packed, framing="chunked", headers=GZ),
    ]
    report = plain_client(hostile).download(manifest_of(hostile), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL and report.files[0].attempts == 2


@pytest.mark.parametrize("coding", ["gzip, gzip", "identity, gzip", "gzip,identity"])
def test_stacked_content_encodings_are_undone_in_order(hostile, plain_client, tmp_path, coding: str) -> None:
    packed = FULL
    for layer in reversed([c.strip() for c in coding.split(",")]):
        packed = gzip.compress(packed) if layer == "gzip" else packed
    hostile.files["p1"] = hostile.Body(packed, headers={"Content-Encoding": coding})
    plain_client(hostile).download(manifest_of(hostile, count=200), tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == FULL


def test_stacked_gzip_cut_inside_the_outer_layer_is_not_complete(hostile, plain_client, tmp_path) -> None:
    packed = gzip.compress(gzip.compress(FULL))
    hostile.files["p1"] = hostile.Body(packed[:-6], framing="chunked", headers={"Content-Encoding": "gzip, gzip"})
    with pytest.raises(BulkDownloadError):
        plain_client(hostile, attempts=0).download(manifest_of(hostile, count=200), tmp_path)
    assert not (tmp_path / "Patient.1.ndjson").exists()


def test_an_unknown_content_encoding_is_refused(hostile, plain_client, tmp_path) -> None:
    hostile.files["p1"] = hostile.Body(FULL, headers={"Content-Encoding": "x-custom"})
    with pytest.raises(BulkDownloadError):
        plain_client(hostile, attempts=0).download(manifest_of(hostile, count=200), tmp_path)
