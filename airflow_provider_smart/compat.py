"""Every Airflow name the provider's Airflow layer uses, valid on each supported Airflow (2.11, 3.0 to 3.3).

Import Airflow's classes and helpers from here, never from ``airflow.sdk`` (absent before 3.0) or from the
pre-3.0 paths (``airflow.models.baseoperator``, ``airflow.io.path``, ``airflow.datasets``...): the mapping
from a name to where the running Airflow keeps it lives here and in ``apache-airflow-providers-common-compat``,
which this module delegates to (``airflow.providers.common.compat.sdk`` and friends, as the official
providers do). ``tests/architecture`` fails on a direct ``airflow.sdk`` import anywhere else in the package.

Names resolve lazily, on first use: importing an operator module must stay cheap (Airflow parses DAG files
constantly), and ``ObjectStoragePath`` or the trigger base classes pull in fsspec and asyncio machinery
that only some tasks need.

On Airflow 2.x, ``Asset``/``AssetAlias`` are Airflow's ``Dataset``/``DatasetAlias`` (same URI, same
``outlet_events`` API), and ``ObjectStoragePath`` is ``airflow.io.path.ObjectStoragePath``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
    from airflow.providers.common.compat.sdk import (
        DAG,
        AirflowException,
        Asset,
        AssetAlias,
        BaseHook,
        BaseOperator,
        BaseSensorOperator,
        Connection,
        Context,
        ObjectStoragePath,
        Param,
        PokeReturnValue,
        TaskDeferred,
        Variable,
        conf,
        mask_secret,
        redact,
        task,
    )
    from airflow.triggers.base import BaseTrigger, TriggerEvent

# Where each name is found on every supported Airflow; the TYPE_CHECKING imports above say the same for mypy
# (tests/architecture checks that the two agree).
_WHERE_BY_MODULE: dict[str, tuple[str, ...]] = {
    # common.compat picks airflow.sdk on 3.x, the pre-3.0 path on 2.x (Asset -> Dataset there)
    "airflow.providers.common.compat.sdk": (
        "DAG",
        "AirflowException",
        "Asset",
        "AssetAlias",
        "BaseHook",
        "BaseOperator",
        "BaseSensorOperator",
        "Connection",
        "Context",
        "ObjectStoragePath",
        "Param",
        "PokeReturnValue",
        "TaskDeferred",
        "Variable",
        "conf",
        "mask_secret",
        "redact",
        "task",
    ),
    "airflow.providers.common.compat.connection": ("get_async_connection", "get_async_extra_dejson"),
    # still core on 3.x (no Task SDK path), and the same module on 2.11
    "airflow.triggers.base": ("BaseTrigger", "TriggerEvent"),
}
_WHERE = {name: module for module, names in _WHERE_BY_MODULE.items() for name in names}

__all__ = [  # noqa: RUF022 - grouped as above
    "DAG",
    "AirflowException",
    "Asset",
    "AssetAlias",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "Connection",
    "Context",
    "ObjectStoragePath",
    "Param",
    "PokeReturnValue",
    "TaskDeferred",
    "Variable",
    "conf",
    "mask_secret",
    "redact",
    "task",
    "get_async_connection",
    "get_async_extra_dejson",
    "BaseTrigger",
    "TriggerEvent",
    "attach_store",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def attach_store(protocol: str, conn_id: str | None = None, **kwargs: Any) -> Any:
    """Register an object store (``airflow.sdk.io.store.attach`` on 3.x, ``airflow.io.store.attach`` on 2.x)."""
    from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

    store = importlib.import_module("airflow.sdk.io.store" if AIRFLOW_V_3_0_PLUS else "airflow.io.store")
    return store.attach(protocol, conn_id, **kwargs)
