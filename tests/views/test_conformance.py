"""The official SQL on FHIR v2 suite (copied from the pinned spec, MIT) against the DuckDB engine.

Every case runs as its own test, and every case must pass: no deviation is declared (``DEVIATIONS`` is
empty; a case added there must say why in README "Tables").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.views.conformance import DEVIATIONS, run_case, run_suite, summary

SUITE = Path(__file__).resolve().parent / "sql-on-fhir-v2" / "tests"
CASES = [
    pytest.param(path.name, case, suite.get("resources", []), id=f"{path.stem}: {case['title']}")
    for path in sorted(SUITE.glob("*.json"))
    for suite in [json.loads(path.read_text())]
    for case in suite["tests"]
]


def test_the_suite_is_the_pinned_one() -> None:
    assert len(CASES) == 134
    shareable = [c for c in CASES if "shareable" in c.values[1].get("tags", [])]
    assert len(shareable) == 123


@pytest.mark.parametrize(("file", "case", "resources"), CASES)
def test_case(file: str, case: dict[str, Any], resources: list[dict[str, Any]], tmp_path: Path) -> None:
    passed, reason = run_case(case, resources, tmp_path)
    assert (file, case["title"]) not in DEVIATIONS
    assert passed, reason


@pytest.mark.slow
def test_the_report_has_the_spec_format_and_the_score(tmp_path: Path) -> None:
    report = run_suite(SUITE)
    schema = json.loads((SUITE.parent / "test_report" / "test-report.schema.json").read_text())
    assert set(report) == {p.name for p in SUITE.glob("*.json")}
    for suite in report.values():
        assert set(suite) == {"tests"} and suite["tests"]
        for test in suite["tests"]:
            assert set(test) == {"name", "result"} and isinstance(test["result"]["passed"], bool)
    assert schema["title"].startswith("SQL on FHIR")
    lines = summary(report, SUITE)
    assert lines[-1] == "total 134 / 134; shareable 123 / 123; experimental 11 / 11", lines
