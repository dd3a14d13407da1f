"""make e2e only: 50 deferred export waits in the triggerer at once, and a DAG of another kind beside them.

``smart_e2e_many_waits`` maps a deferrable ``SmartBulkExportSensor`` over the status URLs in its run's conf
(exports the e2e script kicked off, kept waiting by the sandbox); ``smart_e2e_datetime_sensor`` defers a
``DateTimeSensorAsync`` to the conf's ``target_time``: it must fire on time however many exports wait.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, task

from airflow_provider_smart.sensors.bulk_export import SmartBulkExportSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG(dag_id="smart_e2e_many_waits", schedule=None, start_date=START, catchup=False, max_active_tasks=64):

    @task
    def status_urls(dag_run: Any = None) -> list[str]:
        return list(dag_run.conf["status_urls"])

    SmartBulkExportSensor.partial(task_id="wait", deferrable=True, max_poll_interval=5).expand(status_url=status_urls())

with DAG(dag_id="smart_e2e_datetime_sensor", schedule=None, start_date=START, catchup=False):
    DateTimeSensorAsync(task_id="at_target_time", target_time="{{ dag_run.conf['target_time'] }}")
