"""SmartTokenOperator in a real DAG run (dag.test() on a migrated sqlite DB)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from metadb import xcom_value
from task_output import checked_output

DAGS = Path(__file__).resolve().parent.parent / "dags"

pytestmark = pytest.mark.slow  # dag.test() runs on the migrated metadata DB


def load_dag(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def run_and_get_xcom(dag: Any) -> tuple[Any, Any]:
    run = dag.test()
    return run, xcom_value(dag_id=dag.dag_id, run_id=run.run_id, task_id="token")


def test_token_operator_returns_scope_and_expiry_without_the_token(
    airflow_db: str, smart_conn: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    monkeypatch.setenv("SMART_TEST_REQUIRED_SCOPES", "system/Patient.rs system/Observation.read")
    run, value = run_and_get_xcom(load_dag("smart_token_check"))
    assert run.state == "success"
    assert value["scope"] == "system/*.rs"
    assert value["token_type"].lower() == "bearer"
    assert value["expires_at"].endswith("Z")
    assert "access_token" not in value
    assert sandbox.token_requests == 1
    output = capfd.readouterr()
    for token in sandbox.issued_tokens():
        assert token not in checked_output(output.out, output.err)


def test_token_operator_fails_listing_missing_scopes(
    airflow_db: str, smart_conn: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    smart_conn(scope="system/Patient.rs")
    monkeypatch.setenv("SMART_TEST_REQUIRED_SCOPES", "system/Patient.rs system/Group.rs")
    run, value = run_and_get_xcom(load_dag("smart_token_check"))
    assert run.state == "failed"
    assert value is None
    assert "lacks system/Group.rs" in capfd.readouterr().out


def test_push_token_masks_it_in_logs(
    airflow_db: str, smart_conn: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    monkeypatch.setenv("SMART_TEST_PUSH_TOKEN", "1")
    run, value = run_and_get_xcom(load_dag("smart_token_check"))
    assert run.state == "success"
    token = value["access_token"]
    assert token in sandbox.issued_tokens()
    output = capfd.readouterr()
    assert token not in checked_output(output.out, output.err)


def test_connection_stored_in_the_metadata_db(
    airflow_db: str, sandbox: Any, es384: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "smart_db").delete()
        session.add(
            Connection(
                conn_id="smart_db",
                conn_type="smart",
                host=sandbox.url,
                login="es-client",
                extra=json.dumps({"private_key": es384.pem, "kid": es384.kid, "scope": "system/Patient.rs"}),
            )
        )
    monkeypatch.setenv("SMART_TEST_CONN_ID", "smart_db")
    run, value = run_and_get_xcom(load_dag("smart_token_check"))
    assert run.state == "success"
    assert value["scope"] == "system/Patient.rs"
