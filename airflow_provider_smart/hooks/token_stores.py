"""Token stores that need Airflow, injected into the library through :func:`airflow_token_store`.

:class:`AirflowVariableTokenStore` keeps tokens in Airflow Variables, encrypted at rest by Airflow's
Fernet key. Without a Fernet key (``[core] fernet_key`` empty) Variables are stored in plain text: set
one. Variables have no lock across machines, so with workers on several machines run token-refreshing
tasks one at a time (a pool of one slot) or use a ``file:`` store on shared storage that honours flock.

The same Variables are reached from every Airflow process, one way or the other:

* inside a task or a trigger (the Task SDK's supervisor is connected): the Task SDK ``Variable`` API,
  which goes through the Execution API;
* anywhere else (the API server behind the Test button, the ``airflow-smart`` CLI, ``airflow connections
  test``, a scheduler-side callback): the metadata database, through Airflow's ``Variable`` model and its
  secrets backends, in the same order a task reads them.

A process that has neither (no supervisor, no database configured) gets a :class:`SmartConfigError`
naming the store to use instead.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Protocol

from airflow_provider_smart.auth.tokens import StoredToken, TokenStore
from airflow_provider_smart.exceptions import SmartConfigError
from airflow_provider_smart.hooks.secrets import mask_token

DESCRIPTION = "SMART tokens kept by airflow-provider-smart (secret)"


class _Variables(Protocol):
    where: str

    def get(self, name: str) -> Any: ...

    def set(self, name: str, value: dict[str, Any]) -> None: ...

    def delete(self, name: str) -> None: ...


def in_task_context() -> bool:
    """True inside a task or trigger process, where the Task SDK talks to its supervisor."""
    import sys

    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


class _TaskSdkVariables:
    where = "Airflow Variables (through the Task SDK)"

    def get(self, name: str) -> Any:
        from airflow_provider_smart.compat import Variable

        return Variable.get(name, default=None, deserialize_json=True)

    def set(self, name: str, value: dict[str, Any]) -> None:
        from airflow_provider_smart.compat import Variable

        Variable.set(name, value, description=DESCRIPTION, serialize_json=True)

    def delete(self, name: str) -> None:
        from airflow_provider_smart.compat import Variable

        Variable.delete(name)


class _DatabaseVariables:
    where = "Airflow Variables (in the metadata database)"

    def get(self, name: str) -> Any:
        from airflow.models.variable import Variable

        return Variable.get(name, default_var=None, deserialize_json=True)

    def set(self, name: str, value: dict[str, Any]) -> None:
        from airflow.models.variable import Variable

        Variable.set(name, value, description=DESCRIPTION, serialize_json=True)

    def delete(self, name: str) -> None:
        from airflow.models.variable import Variable

        Variable.delete(name)


def _unreachable(exc: Exception) -> SmartConfigError:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return SmartConfigError(
        "The rotation store 'variable' cannot reach Airflow Variables from this process: it is not an Airflow "
        f"task and the metadata database did not answer ({reason}). Run this where Airflow's database is "
        "configured, or set the connection's rotation store to file:/shared/path/tokens.json (a file every "
        "process using the connection can reach).",
        field="rotation_store",
    )


class AirflowVariableTokenStore:
    """Tokens in Airflow Variables (one per key): the Task SDK in a task, the metadata DB elsewhere."""

    def __init__(self, prefix: str = "smart_token") -> None:
        self.prefix = prefix

    def _variable_key(self, key: str) -> str:
        return f"{self.prefix}__{hashlib.sha256(key.encode()).hexdigest()[:24]}"

    @staticmethod
    def _variables() -> _Variables:
        return _TaskSdkVariables() if in_task_context() else _DatabaseVariables()

    @property
    def where(self) -> str:
        return self._variables().where

    def _call(self, method: str, *args: Any) -> Any:
        variables = self._variables()
        try:
            return getattr(variables, method)(*args)
        except SmartConfigError:
            raise
        except Exception as exc:
            if isinstance(variables, _TaskSdkVariables):
                raise
            raise _unreachable(exc) from None

    def get(self, key: str) -> StoredToken | None:
        entry = self._call("get", self._variable_key(key))
        if not isinstance(entry, dict):
            return None
        token = StoredToken.from_dict(entry)
        mask_token(token)
        return token

    def set(self, key: str, token: StoredToken) -> None:
        self._call("set", self._variable_key(key), token.to_dict())

    def delete(self, key: str) -> None:
        self._call("delete", self._variable_key(key))

    def __repr__(self) -> str:
        return f"AirflowVariableTokenStore(prefix={self.prefix!r})"


class AirflowVariableRecords:
    """JSON records in Airflow Variables, reached like the token store's (Task SDK in a task, metadata DB
    elsewhere): where :class:`~airflow_provider_smart.bulk.inflight.InFlightRegistry` keeps a connection's
    exports in flight, so every worker, the triggerer and the CLI see the same ones."""

    where = "Airflow Variables"

    def __init__(self) -> None:
        self._store = AirflowVariableTokenStore()

    def get(self, name: str) -> Any:
        try:
            return self._store._call("get", name)
        except SmartConfigError:
            return None  # no Variables here (a bare library process): nothing recorded

    def set(self, name: str, value: dict[str, Any]) -> None:
        self._store._call("set", name, value)

    def delete(self, name: str) -> None:
        with contextlib.suppress(SmartConfigError):
            self._store._call("delete", name)


def airflow_token_store(spec: str) -> TokenStore | None:
    """The store for a connection's rotation store value that only Airflow can provide, else None."""
    if spec == "variable":
        return AirflowVariableTokenStore()
    return None


def describe_store(spec: str) -> str:
    """A person's name for a rotation store value."""
    if spec == "variable":
        return "Airflow Variables"
    if spec == "memory":
        return "this process's memory"
    return f"the file {spec[len('file:') :]}"
