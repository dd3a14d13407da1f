"""The Airflow 3 public REST API (``/api/v2``), used the way a user or a CI job would use it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests


class AirflowAPI:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only; no proxy from the environment

    def login(self, timeout: float = 180) -> None:
        """A JWT from the simple auth manager (``simple_auth_manager_all_admins``: no credentials needed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.session.get(f"{self.base}/auth/token", timeout=10)
                if response.ok:
                    token = response.json()["access_token"]
                    self.session.headers["Authorization"] = f"Bearer {token}"
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the api-server gave no token")
            time.sleep(1)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if not response.ok:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params).json()

    # --- connections and DAGs ------------------------------------------------------------------------
    def create_connection(self, conn_id: str, **fields: Any) -> None:
        self._call("POST", "/connections", json={"connection_id": conn_id, **fields})

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        def parsed() -> bool:
            response = self.session.get(f"{self.base}/api/v2/dags/{dag_id}", timeout=30)
            return response.status_code == 200

        wait_until(parsed, timeout, f"DAG {dag_id} parsed by the dag-processor")

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, logical_date: str, conf: dict[str, Any]) -> None:
        body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf}
        self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    # --- runs and task instances ---------------------------------------------------------------------
    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", limit=1000)["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        return self.get(path)["task_instances"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/{try_number}"
        response = self._call(
            "GET",
            path,
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
        )
        return response.text

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, map_index=map_index, deserialize="true")["value"]

    def asset_events(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/assets/events", limit=100, **filters)["asset_events"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(interval)
