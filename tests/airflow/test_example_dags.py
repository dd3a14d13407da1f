"""The example DAGs parse cleanly, and the mapped Group export runs end to end with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from task_output import checked_output

from airflow_provider_smart.version_compat import AIRFLOW_V_3_1_PLUS

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "dags_examples"

pytestmark = pytest.mark.slow  # DagBag and `airflow dags test` in subprocesses


def test_example_dags_parse_without_errors_or_warnings() -> None:
    code = (
        # Deprecations raised by the example DAGs (or by our package on their behalf), not Airflow's own
        "import warnings\n"
        "warnings.filterwarnings('error', category=DeprecationWarning, module=r'(.*smart_|airflow_provider_smart)')\n"
        "try:\n    from airflow.dag_processing.dagbag import DagBag\n"
        "except ImportError:  # Airflow < 3.1\n    from airflow.models.dagbag import DagBag\n"
        f"bag = DagBag({str(EXAMPLES)!r})\n"
        "print('ERRORS=' + repr(bag.import_errors)); print('DAGS=' + repr(sorted(bag.dag_ids)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "ERRORS={}" in lines
    assert (
        "DAGS=['smart_daily_export', 'smart_daily_tables', 'smart_group_export_consumer', 'smart_group_export_mapped', "
        "'smart_tables_consumer', 'smart_token_check']" in lines
    )


def test_mapped_group_export_dag(airflow_db: str, sandbox: Any, es384: Any, tmp_path: Path) -> None:
    connection = {
        "conn_type": "smart",
        "host": sandbox.url,
        "login": "es-client",
        "extra": {"private_key": es384.pem, "kid": es384.kid, "scope": "system/*.rs"},
    }
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW_CONN_SMART_DEFAULT": json.dumps(connection),
        "SMART_EXPORT_ROOT": str(tmp_path),
    }
    if not AIRFLOW_V_3_1_PLUS:  # 3.0's `dags test` fails on an outlet the DAG processor has not activated yet
        parsed = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "reserialize"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert parsed.returncode == 0, (parsed.stdout + parsed.stderr)[-3000:]
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "smart_group_export_mapped"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    [dest] = list((tmp_path / "group").iterdir())
    manifest = json.loads((dest / "manifest.json").read_text())
    files = sorted(p.name for p in dest.glob("*.ndjson") if p.name != "log.ndjson")
    assert files == sorted(Path(e["path"]).name for e in manifest["summary"]["output"])
    # ...and the files became one Delta table per bundled view (4 mapped shares, one commit).
    from deltalake import DeltaTable

    patients = sum(e["lines"] for e in manifest["summary"]["output"] if e["type"] == "Patient")
    table = DeltaTable(str(tmp_path / "tables" / "delta" / "patient_demographics"))
    assert table.to_pyarrow_table().num_rows == patients > 0
    assert {e["type"] for e in manifest["summary"]["output"]} == {"Patient", "Observation", "Condition"}
    patients = [json.loads(line) for line in (dest / "Patient.1.ndjson").read_text().splitlines()]
    assert {p["id"] for p in patients} == {f"pat-{i:04d}" for i in range(2, 11, 2)}  # cohort-a: even patients
    assert [k["group_id"] for k in sandbox.kickoffs] == ["cohort-a"]
    mapped = [line for line in out.stdout.splitlines() + out.stderr.splitlines() if "map_index=" in line]
    assert any("map_index=1" in line for line in mapped)
    assert any(e["route"] == "delete" for e in sandbox.requests_log)
    for token in sandbox.issued_tokens():
        assert token not in checked_output(out.stdout, out.stderr)
