"""Manifest parsing across spec versions, and its validation (no I/O)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportManifest, StatusResult

STATUS = "https://ehr.example/fhir/bulkstatus/job1"


def stu2() -> dict:
    return {
        "transactionTime": "2024-05-01T00:00:00Z",
        "request": "https://ehr.example/fhir/$export",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": "https://ehr.example/files/p1.ndjson", "count": 10},
            {"type": "Observation", "url": "https://ehr.example/files/o1.ndjson"},
        ],
        "error": [{"type": "OperationOutcome", "url": "https://ehr.example/files/err.ndjson"}],
    }


def test_stu2_manifest() -> None:
    m = ExportManifest.from_json(stu2(), STATUS)
    assert m.transaction_time == "2024-05-01T00:00:00Z"
    assert m.request == "https://ehr.example/fhir/$export"
    assert m.requires_access_token is True
    assert [(f.type, f.count) for f in m.output] == [("Patient", 10), ("Observation", None)]
    assert [f.url for f in m.error] == ["https://ehr.example/files/err.ndjson"]
    assert m.deleted == []
    assert m.status_url == STATUS


def test_stu3_fields_and_unknown_keys_are_kept() -> None:
    data = stu2() | {
        "deleted": [{"type": "Bundle", "url": "https://ehr.example/files/del.ndjson", "count": 2}],
        "link": [{"relation": "next", "url": "https://ehr.example/fhir/bulkstatus/job1?page=2"}],
        "extension": {"https://vendor/x": 1},
        "outputOrganizedBy": "",
        "vendorThing": [1, 2],
    }
    data["output"][0]["extension"] = {"https://vendor/y": True}
    m = ExportManifest.from_json(json.dumps(data).encode(), STATUS)
    assert m.deleted[0].count == 2
    assert m.next_link() == "https://ehr.example/fhir/bulkstatus/job1?page=2"
    assert m.extension == {"https://vendor/x": 1}
    assert m.output[0].extension == {"https://vendor/y": True}
    assert m.raw["vendorThing"] == [1, 2]


def test_stu4_outcome_is_read_into_error_and_request_may_be_missing() -> None:
    data = stu2()
    del data["request"], data["error"]
    data["outcome"] = [{"type": "OperationOutcome", "url": "https://ehr.example/files/oo.ndjson"}]
    m = ExportManifest.from_json(data, STATUS)
    assert m.request is None
    assert [f.url for f in m.error] == ["https://ehr.example/files/oo.ndjson"]


def test_string_count_and_bad_count() -> None:
    data = stu2()
    data["output"][0]["count"] = "42"
    data["output"][1]["count"] = "many"
    m = ExportManifest.from_json(data, STATUS)
    assert m.output[0].count == 42
    assert m.output[1].count is None


def test_relative_urls_resolve_against_the_status_url() -> None:
    data = stu2()
    data["output"][0]["url"] = "../files/p1.ndjson"
    data["output"][1]["url"] = "/abs/o1.ndjson"
    m = ExportManifest.from_json(data, STATUS)
    assert m.output[0].url == "https://ehr.example/fhir/files/p1.ndjson"
    assert m.output[1].url == "https://ehr.example/abs/o1.ndjson"


def test_missing_requires_access_token_defaults_to_true_and_strings_are_read() -> None:
    data = stu2()
    del data["requiresAccessToken"]
    assert ExportManifest.from_json(data, STATUS).requires_access_token is True
    data["requiresAccessToken"] = "false"
    assert ExportManifest.from_json(data, STATUS).requires_access_token is False


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: [d], "not an object"),
        (lambda d: {k: v for k, v in d.items() if k != "output"}, "no 'output' list"),
        (lambda d: d | {"output": {"type": "Patient"}}, "no 'output' list"),
        (lambda d: d | {"output": [{"type": "Patient"}]}, "output[0] has no url"),
        (lambda d: d | {"output": ["https://x/y"]}, "output[0] is not an object"),
        (lambda d: d | {"output": [{"type": "Patient", "url": "file:///etc/passwd"}]}, "not http(s)"),
        (lambda d: d | {"error": {"url": "https://x"}}, "'error' is not a list"),
        (lambda d: d | {"output": [{"type": 5, "url": "https://x/y"}]}, "type that is not a string"),
    ],
)
def test_malformed_manifests(mutate, fragment: str) -> None:
    with pytest.raises(BulkExportError, match="manifest is malformed") as info:
        ExportManifest.from_json(mutate(stu2()), STATUS)
    assert fragment in str(info.value)


def test_not_json() -> None:
    with pytest.raises(BulkExportError, match="not JSON"):
        ExportManifest.from_json(b'{"output": [', STATUS)


def test_to_dict_round_trips_and_is_json_safe() -> None:
    m = ExportManifest.from_json(stu2(), STATUS)
    data = json.loads(json.dumps(m.to_dict()))
    again = ExportManifest.from_json(data, STATUS)
    assert again.output == m.output and again.error == m.error
    assert again.requires_access_token is True
    result = StatusResult("complete", manifest=m)
    assert json.loads(json.dumps(result.to_dict()))["manifest"]["output"][0]["count"] == 10


def test_merging_pages_keeps_each_file_once() -> None:
    first = ExportManifest.from_json(stu2(), STATUS)
    page = stu2()
    page["output"] = [page["output"][1], {"type": "Condition", "url": "https://ehr.example/files/c1.ndjson"}]
    page["error"] = []
    merged = first.merged_with(ExportManifest.from_json(page, STATUS))
    assert [f.type for f in merged.output] == ["Patient", "Observation", "Condition"]
    assert len(merged.raw["output"]) == 3 and "link" not in merged.raw
