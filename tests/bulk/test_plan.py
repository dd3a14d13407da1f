"""Safe local names, planning and batching (no I/O)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportManifest, batch, plan_files, safe_type_name
from airflow_provider_smart.bulk.plan import check_entry
from airflow_provider_smart.bulk.storage import url_key

STATUS = "https://ehr.example/fhir/bulkstatus/job1"


@pytest.mark.parametrize(
    ("rtype", "expected"),
    [
        ("Patient", "Patient"),
        ("MedicationRequest", "MedicationRequest"),
        ("../../x", "invalid_x"),
        ("..", "invalid"),
        ("Pat/ient", "invalid_Patient"),
        ("C:\\evil", "invalid_Cevil"),
        ("a" * 65, "invalid_" + "a" * 48),
        ("", "output"),
        (None, "output"),
        ("Patient\n", "invalid_Patient"),
    ],
)
def test_safe_type_name(rtype: str | None, expected: str) -> None:
    assert safe_type_name(rtype) == expected


def manifest() -> ExportManifest:
    out = [
        {"type": "Patient", "url": "https://h/f/p1", "count": 5},
        {"type": "Observation", "url": "https://h/f/o1", "count": 100},
        {"type": "Patient", "url": "https://h/f/p2", "count": 3},
        {"type": "../../evil", "url": "https://h/f/../..", "count": 1},
        {"url": "https://h/f/mixed"},
    ]
    return ExportManifest.from_json(
        {
            "transactionTime": "t",
            "requiresAccessToken": True,
            "output": out,
            "deleted": [{"type": "Patient", "url": "https://h/f/d1"}],
            "error": [{"type": "OperationOutcome", "url": "https://h/f/e1"}],
        },
        STATUS,
    )


def test_plan_files_names() -> None:
    planned = plan_files(manifest())
    assert [p["path"] for p in planned] == [
        "Patient.1.ndjson",
        "Observation.1.ndjson",
        "Patient.2.ndjson",
        "invalid_evil.1.ndjson",
        "output.1.ndjson",
        "deleted/Patient.1.ndjson",
        "error/OperationOutcome.1.ndjson",
    ]
    assert planned[0] == {
        "kind": "output",
        "type": "Patient",
        "url": "https://h/f/p1",
        "key": url_key("https://h/f/p1"),
        "count": 5,
        "path": "Patient.1.ndjson",
    }
    assert json.loads(json.dumps(planned)) == planned
    for entry in planned:
        check_entry(entry)


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "output", "url": "https://h/x", "path": "../Patient.1.ndjson"},
        {"kind": "output", "url": "https://h/x", "path": "/etc/Patient.1.ndjson"},
        {"kind": "output", "url": "https://h/x", "path": "deleted/Patient.1.ndjson"},
        {"kind": "error", "url": "https://h/x", "path": "Patient.1.ndjson"},
        {"kind": "sideways", "url": "https://h/x", "path": "Patient.1.ndjson"},
        {"kind": "output", "url": "https://h/x", "path": "Patient.0.ndjson"},
        {"kind": "output", "url": "https://h/x"},
        {"kind": "output", "path": "Patient.1.ndjson"},
        "Patient.1.ndjson",
    ],
)
def test_check_entry_refuses_unsafe_entries(entry: object) -> None:
    with pytest.raises(BulkExportError):
        check_entry(entry)


def entries(counts: list[int | None]) -> list[dict]:
    return [
        {"kind": "output", "type": "T", "url": f"https://h/{i}", "count": c, "path": f"T.{i + 1}.ndjson"}
        for i, c in enumerate(counts)
    ]


def test_batch_balances_by_count_and_keeps_order() -> None:
    files = entries([100, 1, 1, 50, 50, 1])
    batches = batch(files, 2)
    assert sorted(sum(e["count"] for e in b) for b in batches) == [101, 102]
    for b in batches:
        assert [e["path"] for e in b] == sorted((e["path"] for e in b), key=lambda p: int(p.split(".")[1]))
    assert sorted(e["url"] for b in batches for e in b) == sorted(e["url"] for e in files)


def test_batch_never_makes_empty_batches() -> None:
    assert len(batch(entries([1, 2]), max_batches=32)) == 2
    assert batch([], 4) == []


def test_batch_size() -> None:
    files = entries([1] * 7)
    assert [len(b) for b in batch(files, batch_size=3)] == [3, 3, 1]
    assert len(batch(files, batch_size=1, max_batches=4)) == 4
    with pytest.raises(ValueError):
        batch(files)
    with pytest.raises(ValueError):
        batch(files, 0)


def test_batch_tolerates_missing_counts() -> None:
    batches = batch(entries([None, None, None, None]), 2)
    assert [len(b) for b in batches] == [2, 2]


def test_files_are_numbered_in_natural_url_order_whatever_the_manifest_order() -> None:
    def planned(order: list[int]) -> dict[str, str]:
        output = [{"type": "Observation", "url": f"https://ehr/files/Observation.{n}.ndjson"} for n in order]
        manifest = ExportManifest.from_json(
            {"transactionTime": "2024-01-01T00:00:00Z", "output": output}, "https://ehr/s"
        )
        return {e["url"].rsplit("/", 1)[-1]: e["path"] for e in plan_files(manifest)}

    server_order = [10, 2, 12, 1, 11, 3, 9, 4, 8, 5, 7, 6]
    expected = {f"Observation.{n}.ndjson": f"Observation.{n}.ndjson" for n in range(1, 13)}
    assert planned(server_order) == planned(sorted(server_order)) == expected  # the server's own names


def test_a_files_identity_ignores_signature_and_expiry_parameters() -> None:
    from airflow_provider_smart.bulk.storage import url_key
    from airflow_provider_smart.bulk.urls import file_identity

    medplum = "https://api.example/storage/abc/v1?Expires=1700000000&Signature=zz"
    assert file_identity(medplum) == "https://api.example/storage/abc/v1"
    s3 = "https://b.s3.amazonaws.com/x/P.ndjson?part=2&X-Amz-Algorithm=A&X-Amz-Signature=s&X-Amz-Expires=600"
    assert file_identity(s3) == "https://b.s3.amazonaws.com/x/P.ndjson?part=2"
    sas = "https://a.blob.core.windows.net/c/P.ndjson?sv=2024&se=2025-01-01&sp=r&sig=abc"
    assert file_identity(sas) == "https://a.blob.core.windows.net/c/P.ndjson"
    assert url_key(medplum) == url_key(medplum.replace("Signature=zz", "Signature=yy"))
    assert url_key("https://h/f?file=1") != url_key("https://h/f?file=2")  # naming parameters are kept
