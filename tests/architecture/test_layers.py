"""The package's shape: no import cycles, and an Airflow-free library under thin Airflow adapters."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_smart"
# The library: everything here must work with Airflow not installed at all.
LIBRARY = ("auth", "bulk", "tables", "testing", "views", "connection", "sessions", "origins", "exceptions")
# Harnesses that start Airflow itself (for the UI and API checks): Airflow is their subject.
AIRFLOW_HARNESSES = {"airflow_provider_smart.testing.airflow_server"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports too), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_graph_is_read_from_the_source() -> None:
    graph = package_graph()
    assert "airflow_provider_smart.bulk.download" in graph["airflow_provider_smart.bulk.client"]
    assert "airflow_provider_smart.connection" in graph["airflow_provider_smart.hooks.smart"]  # a lazy import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    assert find_cycle(package_graph()) is None


@pytest.mark.parametrize("part", LIBRARY)
def test_the_library_never_imports_airflow(part: str) -> None:
    paths = [PACKAGE / f"{part}.py"] if (PACKAGE / f"{part}.py").exists() else sorted((PACKAGE / part).rglob("*.py"))
    offenders = {
        module_name(p): sorted(m for m in imported_modules(p) if m == "airflow" or m.startswith("airflow."))
        for p in paths
        if module_name(p) not in AIRFLOW_HARNESSES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


BLOCK_AIRFLOW = """
import sys
class _NoAirflow:
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"{name} is blocked: the library must not need Airflow")
        return None
sys.meta_path.insert(0, _NoAirflow())
"""


def test_token_request_and_download_run_with_airflow_unimportable(sandbox: Any, es384: Any, tmp_path: Path) -> None:
    code = BLOCK_AIRFLOW + textwrap.dedent(
        f"""
        import requests
        from airflow_provider_smart.connection import build_auth, build_session, settings_from_connection
        from airflow_provider_smart.bulk import BulkExportClient, ExportRequest, ExportWorkflow
        settings = settings_from_connection(
            {sandbox.url!r}, "es-client", None,
            {{"private_key": {es384.pem!r}, "kid": {es384.kid!r}, "scope": "system/Patient.rs",
              "token_store": "memory"}},
        )
        auth = build_auth(settings)
        token = auth.get_token()
        assert token.access_token
        client = BulkExportClient(build_session(settings, auth), settings.fhir_base_url)
        workflow = ExportWorkflow(client, {str(tmp_path)!r}, {{"run": 1}})
        started = workflow.start(ExportRequest(resource_types=["Patient"]))
        summary = workflow.land(started.status_url, client.wait(started.status_url, poll_interval=0.1))
        assert summary["output"] and summary["output"][0]["lines"] > 0, summary
        assert not [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
        print("ok", summary["output"][0]["lines"])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "Patient.1.ndjson").exists()


def test_the_operators_cheap_copy_of_a_library_default_agrees() -> None:
    from airflow_provider_smart.bulk import DownloadOptions
    from airflow_provider_smart.operators.bulk_export import DEFAULT_MIN_DOWNLOAD_RATE

    assert DownloadOptions().min_download_rate == DEFAULT_MIN_DOWNLOAD_RATE
