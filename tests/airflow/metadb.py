"""Reading what a DAG run left in the metadata DB, on every supported Airflow (the models moved in 3.0)."""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS


def _xcom_model() -> Any:
    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XComModel

        return XComModel
    from airflow.models.xcom import XCom  # 2.x: the ORM class itself

    return XCom


def xcom_value(
    *, run_id: str, task_id: str, dag_id: str | None = None, key: str = "return_value", map_index: int = -1
) -> Any:
    """The XCom a task (or one mapped instance) pushed, deserialised; None when there is none."""
    from airflow.utils.session import create_session

    model = _xcom_model()
    with create_session() as session:
        query = session.query(model).filter_by(run_id=run_id, task_id=task_id, key=key, map_index=map_index)
        if dag_id is not None:
            query = query.filter_by(dag_id=dag_id)
        row = query.one_or_none()
        if row is None:
            return None
        return row.value  # 2.x deserialises on load (init_on_load), 3.x stores JSON


def delete_xcoms(dag_id: str) -> None:
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(_xcom_model()).filter_by(dag_id=dag_id).delete()


def asset_events(run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(task id, asset name, extra) per asset event a run emitted; on 2.x the asset is a Dataset, named by URI."""
    from airflow.utils.session import create_session

    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.asset import AssetEvent

        with create_session() as session:
            events = session.query(AssetEvent).filter_by(source_run_id=run_id).all()
            return [(e.source_task_id, e.asset.name, dict(e.extra or {})) for e in events]
    from airflow.models.dataset import DatasetEvent

    with create_session() as session:
        events = session.query(DatasetEvent).filter_by(source_run_id=run_id).all()
        return [(e.source_task_id, e.dataset.uri, dict(e.extra or {})) for e in events]


def register_assets(*dags: Any) -> None:
    """Make the DAGs' outlet assets known and active, as the DAG processor would before any run.

    3.1+'s dag.test() does it. 2.x's does not, and records no event for a Dataset it has never seen; 3.0's
    does not either, and fails a task whose outlet is not active (AirflowInactiveAssetInInletOrOutletException).
    """
    if AIRFLOW_V_3_1_PLUS:
        return
    if not AIRFLOW_V_3_0_PLUS:
        for dag in dags:
            dag.sync_to_db()
        return
    from airflow.models.asset import AssetActive, AssetModel
    from airflow.providers.common.compat.sdk import Asset
    from airflow.utils.session import create_session

    with create_session() as session:
        for asset in {
            (o.name, o.uri): o for d in dags for t in d.tasks for o in t.outlets if isinstance(o, Asset)
        }.values():
            if session.query(AssetModel).filter_by(name=asset.name, uri=asset.uri).one_or_none() is None:
                session.add(AssetModel(name=asset.name, uri=asset.uri, group=asset.group, extra=asset.extra))
            if session.query(AssetActive).filter_by(name=asset.name, uri=asset.uri).one_or_none() is None:
                session.add(AssetActive(name=asset.name, uri=asset.uri))
