"""Run the SQL on FHIR v2 conformance suite against this engine and write the spec's test report.

    python -m airflow_provider_smart.views.conformance tests/views/sql-on-fhir-v2/tests \\
        --report build/conformance/test-report.json

Judged as the spec's runner judges (rows compared in any order; an ``expectError`` case passes when the
view is refused), and stricter in two ways: ``expectColumns`` is checked, and only our typed errors
count as a refusal (a crash is a failure). Typed values are compared by meaning: ``5`` equals the
decimal ``5.000000000``, ``"2010-10-10T23:59:59.999-12:00"`` equals the same instant in UTC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..exceptions import SmartError
from .definition import ViewDefinition, load_view
from .engine import run_view

# Cases whose expectation this engine does not follow on purpose, with the reason (README, "Tables").
DEVIATIONS: dict[tuple[str, str], str] = {}


def _canonical(value: Any, ctype: str | None) -> Any:
    """A comparable form of a result value or of an expected JSON value of a column of type ``ctype``."""
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(_canonical(v, ctype) for v in value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return round(float(value), 9)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, str) and ctype in ("dateTime", "instant"):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return (
            (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC))
            .astimezone(dt.UTC)
            .isoformat(timespec="milliseconds")
        )
    if isinstance(value, str) and ctype == "time":
        try:
            return dt.time.fromisoformat(value).isoformat(timespec="milliseconds")
        except ValueError:
            return value
    return value


def _row_key(row: Mapping[str, Any], types: Mapping[str, str | None]) -> tuple[Any, ...]:
    return tuple(sorted((name, repr(_canonical(value, types.get(name)))) for name, value in row.items()))


def run_case(case: Mapping[str, Any], resources: Sequence[Mapping[str, Any]], workdir: Path) -> tuple[bool, str]:
    """``(passed, reason)`` of one case."""
    expects_error = bool(case.get("expectError"))
    try:
        view = load_view(case["view"])
        data = workdir / "resources.ndjson"
        if not data.exists():
            data.write_text("".join(json.dumps(r) + "\n" for r in resources))
        table = run_view(view, [data])
    except SmartError as exc:
        return (True, "") if expects_error else (False, f"unexpected error: {exc}")
    except Exception as exc:  # a crash is a failure even where an error is expected
        return False, f"crash: {type(exc).__name__}: {exc}"
    if expects_error:
        return False, f"expected an error, got {table.num_rows} rows"
    return _compare(view, table.to_pylist(), table.column_names, case)


def _compare(
    view: ViewDefinition, rows: list[dict[str, Any]], names: list[str], case: Mapping[str, Any]
) -> tuple[bool, str]:
    if "expectColumns" in case and names != list(case["expectColumns"]):
        return False, f"columns {names}, expected {case['expectColumns']}"
    types = {c.name: c.type for c in view.columns}
    expected = case.get("expect", [])
    for row in expected:
        if set(row) - set(names):
            return False, f"expected columns {sorted(row)}, got {names}"
    got = Counter(_row_key(r, types) for r in rows)
    want = Counter(_row_key({n: row.get(n) for n in names}, types) for row in expected)
    if got != want:
        return False, f"rows differ: got {rows!r}, expected {expected!r}"
    return True, ""


def run_suite(directory: Path) -> dict[str, Any]:
    """The report in the spec's format, ``{"<file>.json": {"tests": [{"name", "result": {...}}]}}``."""
    report: dict[str, Any] = {}
    for path in sorted(directory.glob("*.json")):
        suite = json.loads(path.read_text())
        results = []
        with tempfile.TemporaryDirectory(prefix="sof-") as tmp:
            for case in suite["tests"]:
                passed, reason = run_case(case, suite.get("resources", []), Path(tmp))
                result: dict[str, Any] = {"passed": passed}
                if not passed:
                    result["error"] = reason
                    deviation = DEVIATIONS.get((path.name, case["title"]))
                    if deviation:
                        result["details"] = {"deliberate": deviation}
                results.append({"name": case["title"], "result": result})
        report[path.name] = {"tests": results}
    return report


def summary(report: Mapping[str, Any], directory: Path) -> list[str]:
    tags = {}
    for path in sorted(directory.glob("*.json")):
        for case in json.loads(path.read_text())["tests"]:
            tags[(path.name, case["title"])] = "shareable" if "shareable" in case.get("tags", []) else "experimental"
    lines = [f"{'file':<24} passed / cases"]
    totals: Counter[str] = Counter()
    for name, suite in report.items():
        tests = suite["tests"]
        ok = sum(t["result"]["passed"] for t in tests)
        lines.append(f"{name:<24} {ok:>3} / {len(tests)}")
        for t in tests:
            tag = tags.get((name, t["name"]), "experimental")
            totals[f"{tag}_cases"] += 1
            totals[f"{tag}_passed"] += t["result"]["passed"]
            if not t["result"]["passed"]:
                lines.append(f"    FAIL {t['name']}: {t['result'].get('error', '')[:200]}")
    passed = totals["shareable_passed"] + totals["experimental_passed"]
    cases = totals["shareable_cases"] + totals["experimental_cases"]
    lines.append(
        f"total {passed} / {cases}; shareable {totals['shareable_passed']} / {totals['shareable_cases']}; "
        f"experimental {totals['experimental_passed']} / {totals['experimental_cases']}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", type=Path, help="the folder of the suite's *.json files")
    parser.add_argument("--report", type=Path, help="where to write the test report (JSON)")
    args = parser.parse_args(argv)
    report = run_suite(args.suite)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(summary(report, args.suite)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
