"""Airflow's secret masker, as the library's ``on_secret`` / ``on_new_token`` callbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_smart.auth.tokens import StoredToken


def mask_secrets(*secrets: str | None) -> None:
    """Register secrets with Airflow's masker so they never reach task logs or rendered fields."""
    from airflow_provider_smart.compat import mask_secret

    for secret in secrets:
        if secret:
            mask_secret(secret)


def mask_token(token: StoredToken) -> None:
    mask_secrets(token.access_token, token.refresh_token, token.id_token)
