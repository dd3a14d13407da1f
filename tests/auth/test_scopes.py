from __future__ import annotations

import pytest

from airflow_provider_smart.auth.scopes import (
    FHIR_USER,
    OFFLINE_ACCESS,
    OPENID,
    build_scopes,
    missing_scopes,
    parse_scope,
    resource_scope,
)
from airflow_provider_smart.exceptions import SmartConfigError


def test_build_scopes_matches_seed_example() -> None:
    scope = build_scopes(
        [
            OPENID,
            FHIR_USER,
            OFFLINE_ACCESS,
            "launch/patient",
            resource_scope("patient", "Observation", ["r", "s"]),
            resource_scope("patient", "Condition", "*"),
        ]
    )
    assert scope == "openid fhirUser offline_access launch/patient patient/Observation.rs patient/Condition.cruds"


@pytest.mark.parametrize(("perms", "expected"), [("sr", "rs"), ("dc", "cd"), ("*", "cruds"), ("read", "rs")])
def test_resource_scope_orders_permissions_canonically(perms: str, expected: str) -> None:
    assert resource_scope("system", "Patient", perms) == f"system/Patient.{expected}"


def test_build_scopes_drops_duplicates_and_blanks() -> None:
    assert build_scopes(["system/Patient.rs", "", None, "system/Patient.rs system/Group.rs"]) == (
        "system/Patient.rs system/Group.rs"
    )


def test_parse_finer_grained_scope() -> None:
    parsed = parse_scope(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    )
    assert (parsed.kind, parsed.context, parsed.resource, parsed.permissions, parsed.version) == (
        "resource",
        "patient",
        "Observation",
        "rs",
        2,
    )
    assert parsed.query == {"category": "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"}


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("system/*.read", "system/*.rs"),
        ("user/Patient.write", "user/Patient.cud"),
        ("patient/Observation.*", "patient/Observation.cruds"),
    ],
)
def test_v1_scopes_convert_to_v2(v1: str, v2: str) -> None:
    parsed = parse_scope(v1)
    assert parsed.version == 1
    assert parsed.to_v2() == v2


@pytest.mark.parametrize(
    ("scope", "kind"),
    [
        ("openid", "identity"),
        ("fhirUser", "identity"),
        ("offline_access", "access"),
        ("launch/patient", "launch"),
        ("launch", "launch"),
    ],
)
def test_non_resource_scopes(scope: str, kind: str) -> None:
    assert parse_scope(scope).kind == kind


@pytest.mark.parametrize(
    "bad", ["patient/Observation.dus", "system/Patient.sr", "clinic/Patient.rs", "system/Patient.", "two scopes"]
)
def test_invalid_scopes_raise_clear_errors(bad: str) -> None:
    with pytest.raises(SmartConfigError) as err:
        parse_scope(bad)
    assert err.value.kind == "smart.config"


def test_invalid_resource_scope_arguments() -> None:
    with pytest.raises(SmartConfigError, match="context"):
        resource_scope("clinic", "Patient", "rs")
    with pytest.raises(SmartConfigError, match="cruds"):
        resource_scope("system", "Patient", "x")


def test_missing_scopes_compares_v1_and_v2() -> None:
    assert missing_scopes("system/*.read", ["system/Patient.rs", "system/Observation.read"]) == []
    assert missing_scopes("system/Patient.rs", ["system/Patient.rs", "system/Observation.rs"]) == [
        "system/Observation.rs"
    ]
    assert missing_scopes("system/Patient.rs", ["system/*.rs"]) == ["system/*.rs"]
    assert missing_scopes("system/*.rs", ["system/Patient.c"]) == ["system/Patient.c"]
    assert missing_scopes("", ["openid"]) == ["openid"]
