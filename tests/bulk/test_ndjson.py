"""Streaming line counts and resourceType checks, whatever the chunking (no I/O)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_smart.bulk.ndjson import (
    FIRST_LINE_PROBE,
    HEAD_PROBE,
    NdjsonCheckError,
    NdjsonScanner,
    NotNdjsonError,
    TruncatedFileError,
)

COMPACT = (",", ":")


def scan(data: bytes, expected: str | None, size: int, exact: bool = False) -> int:
    scanner = NdjsonScanner(expected, exact=exact)
    for i in range(0, len(data), size):
        scanner.feed(data[i : i + size])
    return scanner.finish()


def resources(n: int, rtype: str = "Patient", pad: int = 50) -> list[bytes]:
    lines = []
    for i in range(n):
        resource = {"resourceType": rtype, "id": str(i), "x": "a" * (i * pad % 7000)}
        lines.append(json.dumps(resource, separators=COMPACT).encode())
    return lines


CHUNKS = [1, 3, 17, 256, 4096, 1 << 20]


@pytest.mark.parametrize("size", CHUNKS)
@pytest.mark.parametrize("expected", [None, "Patient"])
def test_counts_whatever_the_chunking(size: int, expected: str | None) -> None:
    lines = resources(300)
    data = b"\n".join(lines) + b"\n"
    assert scan(data, expected, size) == 300
    assert scan(data[:-1], expected, size) == 300  # last line without a newline still counts
    assert scan(b"", expected, size) == 0


@pytest.mark.parametrize("size", CHUNKS)
def test_blank_lines_are_not_resources(size: int) -> None:
    data = b"\n" + b"\n\n".join(resources(20)) + b"\r\n\n  \n"
    assert scan(data, "Patient", size) == 20
    assert scan(data, None, size, exact=True) == 20


@pytest.mark.parametrize("size", CHUNKS)
def test_wrong_type_is_caught(size: int) -> None:
    lines = resources(50)
    lines[37] = b'{"resourceType":"Observation","id":"o"}'
    with pytest.raises(NdjsonCheckError, match=r"line 38 has resourceType 'Observation'"):
        scan(b"\n".join(lines) + b"\n", "Patient", size)


@pytest.mark.parametrize("size", [5, 4096])
def test_other_serialisations_fall_back_to_parsing(size: int) -> None:
    spaced = [json.dumps({"resourceType": "Patient", "id": str(i)}).encode() for i in range(5)]
    late = [b'{"id":"1","contained":[{"resourceType":"Medication"}],"resourceType":"Patient"}']
    prefix_trap = [b'{"resourceType":"PatientX","id":"1"}']
    assert scan(b"\n".join(spaced + late), "Patient", size) == 6
    with pytest.raises(NdjsonCheckError, match="PatientX"):
        scan(b"\n".join(prefix_trap), "Patient", size)
    with pytest.raises(NdjsonCheckError, match="not valid JSON"):
        scan(b'{"resourceType":"Patient"}\n{oops\n', "Patient", size)


def test_long_lines_are_checked_by_their_head_without_keeping_them() -> None:
    big = b'{"resourceType":"Patient","x":"' + b"a" * (HEAD_PROBE * 50) + b'"}\n'
    scanner = NdjsonScanner("Patient")
    for i in range(0, len(big) * 3, 1000):
        scanner.feed((big * 3)[i : i + 1000])
        assert len(scanner._partial) <= HEAD_PROBE + 1000
    assert scanner.finish() == 3


def test_a_long_line_that_needs_parsing_is_capped() -> None:
    line = b'{"x":"' + b"a" * 10_000 + b'","resourceType":"Patient"}'
    assert scan(line + b"\n", "Patient", 100) == 1
    scanner = NdjsonScanner("Patient", max_line_bytes=5000)
    with pytest.raises(NdjsonCheckError, match="cannot be checked while streaming"):
        for i in range(0, len(line), 100):
            scanner.feed(line[i : i + 100])


def test_bytes_are_counted() -> None:
    scanner = NdjsonScanner()
    scanner.feed(b'{"a":1}\n')
    scanner.feed(b"{}")
    assert scanner.bytes == 10 and scanner.finish() == 2
    loose = NdjsonScanner(check_shape=False)
    loose.feed(b"abc\n")  # the first-line check can be turned off; the last-line one cannot
    loose.feed(b"de")
    with pytest.raises(TruncatedFileError):
        loose.finish()


@pytest.mark.parametrize("size", CHUNKS)
@pytest.mark.parametrize("expected", [None, "Patient"])
def test_a_last_line_cut_short_is_truncation(size: int, expected: str | None) -> None:
    data = b"\n".join(resources(40)) + b"\n"
    for cut in (1, 5, len(resources(40)[-1]) - 1):
        with pytest.raises(TruncatedFileError, match="line 40"):
            scan(data[: -1 - cut], expected, size)
    assert scan(data[:-1], expected, size) == 40  # only the newline is missing: whole


@pytest.mark.parametrize("size", CHUNKS)
@pytest.mark.parametrize(
    "data", [b"<html>\n", b"\n \n<!DOCTYPE html>", b'"x"\n{}\n', b"[{}]\n", b"{not json}\n{}\n", b"null"]
)
def test_a_body_whose_first_line_is_not_an_object_is_not_ndjson(size: int, data: bytes) -> None:
    with pytest.raises(NotNdjsonError):
        scan(data, None, size)


def test_a_huge_first_line_is_only_checked_for_its_brace() -> None:
    line = b'{"resourceType":"Binary","data":"' + b"a" * (FIRST_LINE_PROBE + 10) + b'"}\n'
    assert scan(line * 2, None, 65536) == 2
