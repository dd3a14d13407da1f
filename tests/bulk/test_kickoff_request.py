"""Kick-off URL, headers, GET query and POST Parameters building, and request validation (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportRequest, build_kickoff

BASE = "https://ehr.example/fhir/r4/"


def test_urls_keep_the_base_path_and_quote_the_group_id() -> None:
    assert build_kickoff(ExportRequest(), BASE).url == "https://ehr.example/fhir/r4/$export"
    assert build_kickoff(ExportRequest(level="patient"), BASE).url == "https://ehr.example/fhir/r4/Patient/$export"
    group = build_kickoff(ExportRequest(level="group", group_id="a b/c"), BASE)
    assert group.url == "https://ehr.example/fhir/r4/Group/a%20b%2Fc/$export"


def test_headers_are_exact() -> None:
    spec = build_kickoff(ExportRequest(), BASE)
    assert spec.method == "GET"
    assert spec.headers == {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    assert spec.body is None
    lenient = build_kickoff(ExportRequest(lenient=True), BASE)
    assert lenient.headers["Prefer"] == "respond-async, handling=lenient"


def full_request(**kwargs: object) -> ExportRequest:
    values = dict(
        level="group",
        group_id="g1",
        resource_types=["Patient", "Observation"],
        since="2024-01-01T00:00:00Z",
        until=datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
        type_filters=["Observation?category=laboratory", "Observation?code=a,b"],
        elements=["id", "status"],
        include_associated_data=["LatestProvenanceResources"],
        organize_output_by="Patient",
        allow_partial_manifests=True,
    )
    values.update(kwargs)
    return ExportRequest(**values)  # type: ignore[arg-type]


def test_get_sends_spec_form_by_default() -> None:
    """_type/_elements comma-joined with literal commas; one _typeFilter per query (STU3's form)."""
    spec = build_kickoff(full_request(), BASE)
    assert spec.params == [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_since", "2024-01-01T00:00:00Z"),
        ("_until", "2024-06-01T12:00:00Z"),
        ("_type", "Patient,Observation"),
        ("_elements", "id,status"),
        ("_typeFilter", "Observation?category=laboratory"),
        ("_typeFilter", "Observation?code=a,b"),
        ("includeAssociatedData", "LatestProvenanceResources"),
        ("organizeOutputBy", "Patient"),
        ("allowPartialManifests", "true"),
    ]
    assert "&_type=Patient,Observation&_elements=id,status&" in spec.query
    assert "_typeFilter=Observation%3Fcategory%3Dlaboratory&_typeFilter=Observation%3Fcode%3Da%2Cb&" in spec.query
    assert spec.full_url == f"{spec.url}?{spec.query}"


def test_typefilter_comma_list_escapes_the_queries_own_commas() -> None:
    """STU2's comma-separated list: a query's own comma must not read as a separator."""
    spec = build_kickoff(full_request(), BASE, comma_join_repeats=True)
    assert ("_typeFilter", "Observation?category=laboratory,Observation?code=a%2Cb") in spec.params
    assert "_typeFilter=Observation%3Fcategory%3Dlaboratory,Observation%3Fcode%3Da%252Cb" in spec.query


def test_get_repeats_list_parameters_when_asked() -> None:
    spec = build_kickoff(full_request(), BASE, comma_join_repeats=False)
    assert spec.params == [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_since", "2024-01-01T00:00:00Z"),
        ("_until", "2024-06-01T12:00:00Z"),
        ("_type", "Patient"),
        ("_type", "Observation"),
        ("_elements", "id"),
        ("_elements", "status"),
        ("_typeFilter", "Observation?category=laboratory"),
        ("_typeFilter", "Observation?code=a,b"),
        ("includeAssociatedData", "LatestProvenanceResources"),
        ("organizeOutputBy", "Patient"),
        ("allowPartialManifests", "true"),
    ]


def test_get_comma_joins_for_cerner() -> None:
    params = dict(build_kickoff(full_request(), BASE, comma_join_repeats=True).params)
    assert params["_type"] == "Patient,Observation"
    assert params["_elements"] == "id,status"


def test_post_parameters_have_the_operation_definition_types() -> None:
    spec = build_kickoff(full_request(patients=["p1", "Patient/p2"], method="auto"), BASE)
    assert spec.method == "POST"
    assert spec.params == []
    assert spec.headers["Content-Type"] == "application/fhir+json"
    assert spec.body is not None and spec.body["resourceType"] == "Parameters"
    params = spec.body["parameter"]
    assert {"name": "_outputFormat", "valueString": "application/fhir+ndjson"} in params
    assert {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"} in params
    assert {"name": "_until", "valueInstant": "2024-06-01T12:00:00Z"} in params
    assert [p["valueString"] for p in params if p["name"] == "_type"] == ["Patient", "Observation"]
    assert [p["valueString"] for p in params if p["name"] == "_typeFilter"] == [
        "Observation?category=laboratory",
        "Observation?code=a,b",
    ]
    assert {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"} in params
    assert {"name": "organizeOutputBy", "valueString": "Patient"} in params
    assert {"name": "allowPartialManifests", "valueBoolean": True} in params
    refs = [p["valueReference"] for p in params if p["name"] == "patient"]
    assert refs == [{"reference": "Patient/p1"}, {"reference": "Patient/p2"}]


def test_explicit_post_without_patients() -> None:
    spec = build_kickoff(ExportRequest(method="POST", resource_types="Patient,Condition"), BASE)
    assert spec.method == "POST"
    assert [p["valueString"] for p in spec.body["parameter"] if p["name"] == "_type"] == [
        "Patient",
        "Condition",
    ]


def test_naive_and_offset_datetimes() -> None:
    naive = build_kickoff(ExportRequest(since=datetime(2024, 1, 2, 3, 4, 5)), BASE)
    assert ("_since", "2024-01-02T03:04:05Z") in naive.params
    offset = datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=timezone(timedelta(hours=2)))
    params = build_kickoff(ExportRequest(since=offset), BASE).params
    assert ("_since", "2024-01-02T03:04:05.250+02:00") in params


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"level": "everything"}, "level must be one of"),
        ({"level": "group"}, "needs group_id"),
        ({"group_id": "g1"}, "only used with level='group'"),
        ({"patients": ["p1"]}, "cannot be used at system level"),
        ({"level": "patient", "patients": ["p1"], "method": "GET"}, "only allowed in a POST"),
        ({"method": "PUT"}, "method must be"),
        ({"resource_types": ["Patient", "../x"]}, "not a FHIR resource type name"),
        ({"type_filters": ["category=laboratory"]}, "must look like"),
        ({"since": "yesterday"}, "not a FHIR instant"),
        ({"level": "patient", "patients": ["Group/1"]}, "not a Patient id"),
        ({"output_format": " "}, "output_format is empty"),
    ],
)
def test_validation_says_what_to_fix(kwargs: dict, fragment: str) -> None:
    with pytest.raises(BulkExportError, match="Invalid export request") as info:
        build_kickoff(ExportRequest(**kwargs), BASE)
    assert fragment in str(info.value)


def test_request_to_dict_is_json_safe() -> None:
    import json

    data = full_request().to_dict()
    assert json.loads(json.dumps(data))["until"] == "2024-06-01T12:00:00+00:00"
