"""One place knows where each Airflow name lives on each supported Airflow: ``airflow_provider_smart.compat``.

Code that imports ``airflow.sdk`` (absent on 2.11) or a path that moved in 3.0 (``airflow.models.baseoperator``,
``airflow.io``, ``airflow.datasets``...) works on some supported versions only; these tests name the module and
the import to route through ``compat`` instead.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.architecture.test_layers import PACKAGE, imported_modules, module_name

COMPAT_MODULES = {"airflow_provider_smart.compat", "airflow_provider_smart.version_compat"}
EXAMPLE_DAGS = (PACKAGE.parent / "dags_examples", PACKAGE.parent / "tests" / "dags")
# Paths that exist on some supported Airflow versions only (2.11 and 3.0 to 3.3).
VERSION_SPECIFIC = (
    "airflow.sdk",
    "airflow.assets",
    "airflow.datasets",
    "airflow.io",
    "airflow.decorators",
    "airflow.hooks.base",
    "airflow.sensors.base",
    "airflow.models.baseoperator",
    "airflow.utils.context",
    "airflow.utils.log.secrets_masker",
)


def version_specific_imports(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in VERSION_SPECIFIC))


def test_the_check_catches_a_direct_sdk_import(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from airflow.sdk import ObjectStoragePath\n    import airflow.io.path\n")
    assert version_specific_imports(imported_modules(source)) == [
        "airflow.io.path",
        "airflow.sdk",
        "airflow.sdk.ObjectStoragePath",
    ]


def test_only_the_compat_module_imports_version_specific_airflow_paths() -> None:
    offenders = {
        module_name(path): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if module_name(path) not in COMPAT_MODULES and (found := version_specific_imports(imported_modules(path)))
    }
    assert offenders == {}, "import these from airflow_provider_smart.compat instead"


def test_example_dags_run_on_every_supported_airflow() -> None:
    offenders = {
        path.name: found
        for path in sorted(p for folder in EXAMPLE_DAGS for p in folder.glob("*.py"))
        if (found := version_specific_imports(imported_modules(path)))
    }
    assert offenders == {}, "import these from airflow.providers.common.compat.sdk instead"


def test_tests_run_on_every_supported_airflow() -> None:
    """CI runs the fast suite on 2.11 too: a test importing ``airflow.sdk`` fails there, not here."""
    offenders = {
        str(path.relative_to(PACKAGE.parent)): found
        for path in sorted((PACKAGE.parent / "tests").rglob("*.py"))
        if (found := version_specific_imports(imported_modules(path)))
    }
    assert offenders == {}, "import these from airflow_provider_smart.compat instead"


def _type_checking_names() -> set[str]:
    tree = ast.parse((PACKAGE / "compat.py").read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                names.update(alias.asname or alias.name for alias in imp.names)
    return names


def test_compat_declares_each_name_once_for_mypy_and_runtime() -> None:
    compat = importlib.import_module("airflow_provider_smart.compat")
    assert _type_checking_names() == set(compat._WHERE)
    assert set(compat.__all__) == set(compat._WHERE) | {"attach_store"}


@pytest.mark.parametrize("name", sorted(importlib.import_module("airflow_provider_smart.compat")._WHERE))
def test_every_compat_name_resolves_on_this_airflow(name: str) -> None:
    compat = importlib.import_module("airflow_provider_smart.compat")
    assert getattr(compat, name) is not None
