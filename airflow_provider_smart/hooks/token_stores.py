"""Token stores that need Airflow, injected into the library through :func:`airflow_token_store`.

:class:`AirflowVariableTokenStore` keeps tokens in Airflow Variables, encrypted at rest by Airflow's
Fernet key. Without a Fernet key (``[core] fernet_key`` empty) Variables are stored in plain text: set
one. Variables have no lock across machines, so with workers on several machines run token-refreshing
tasks one at a time (a pool of one slot) or use a ``file:`` store on shared storage that honours flock.
"""

from __future__ import annotations

import hashlib

from airflow_provider_smart.auth.tokens import StoredToken, TokenStore
from airflow_provider_smart.hooks.secrets import mask_token


class AirflowVariableTokenStore:
    """Tokens in Airflow Variables (one per key), read and written through the Task SDK."""

    def __init__(self, prefix: str = "smart_token") -> None:
        self.prefix = prefix

    def _variable_key(self, key: str) -> str:
        return f"{self.prefix}__{hashlib.sha256(key.encode()).hexdigest()[:24]}"

    def get(self, key: str) -> StoredToken | None:
        from airflow.sdk import Variable

        entry = Variable.get(self._variable_key(key), default=None, deserialize_json=True)
        if not isinstance(entry, dict):
            return None
        token = StoredToken.from_dict(entry)
        mask_token(token)
        return token

    def set(self, key: str, token: StoredToken) -> None:
        from airflow.sdk import Variable

        Variable.set(
            self._variable_key(key),
            token.to_dict(),
            description="SMART tokens kept by airflow-provider-smart (secret)",
            serialize_json=True,
        )

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        Variable.delete(self._variable_key(key))

    def __repr__(self) -> str:
        return f"AirflowVariableTokenStore(prefix={self.prefix!r})"


def airflow_token_store(spec: str) -> TokenStore | None:
    """The store for a connection's ``token_store`` value that only Airflow can provide, else None."""
    if spec == "variable":
        return AirflowVariableTokenStore()
    return None
