"""``SmartClient``: an App Launch session's tokens, refreshed before expiry and on a 401."""

from __future__ import annotations

import hashlib
from typing import Any

from airflow_provider_smart.auth.backend import TokenAuth
from airflow_provider_smart.auth.client_auth import client_authentication
from airflow_provider_smart.auth.discovery import SmartConfiguration
from airflow_provider_smart.auth.keys import PrivateKey
from airflow_provider_smart.auth.launch import TokenResponse
from airflow_provider_smart.auth.tokens import StoredToken
from airflow_provider_smart.exceptions import SmartAuthError

SEED_KEY = "_seed"  # fingerprint of the refresh token the store was seeded with


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class SmartClient(TokenAuth):
    """A ``requests`` auth for tokens from an App Launch (``authorization_code`` + ``refresh_token``).

    Refreshes ``expiry_skew`` seconds before expiry and once on a 401; keeps a rotated
    ``refresh_token`` and discards the old one; one refresh at a time across threads, and across
    processes when the token store can lock (:class:`~airflow_provider_smart.auth.stores.FileTokenStore`).

    :param tokens: the tokens from :func:`exchange_code` (or a refresh token wrapped in a StoredToken).
        They seed the store unless the store already holds tokens rotated from this same seed.
    :param scope: ask refreshes for this narrower scope; None keeps the original grant.
    """

    def __init__(
        self,
        *,
        client_id: str,
        smart_config: SmartConfiguration | None = None,
        fhir_base_url: str | None = None,
        tokens: StoredToken | None = None,
        client_secret: str | None = None,
        private_key: str | bytes | PrivateKey | None = None,
        kid: str | None = None,
        alg: str | None = None,
        auth_method: str | None = None,
        scope: str | None = None,
        store_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        jwt_options = {"kid": kid, "alg": alg} if private_key is not None else {}
        client_auth = client_authentication(
            client_id, client_secret=client_secret, private_key=private_key, method=auth_method, **jwt_options
        )
        base = fhir_base_url or (smart_config.fhir_base_url if smart_config else None)
        super().__init__(
            client_auth=client_auth,
            scope=scope,
            smart_configuration=smart_config,
            fhir_base_url=base,
            store_key=store_key or f"smart-client:{client_id}@{base}",
            **kwargs,
        )
        if tokens is not None:
            self.seed(tokens)

    def seed(self, tokens: StoredToken) -> None:
        """Store ``tokens`` unless the store already holds their rotated successors."""
        if not tokens.refresh_token:
            self.token_store.set(self.store_key, tokens)
            return
        seed = _fingerprint(tokens.refresh_token)
        current = self.token_store.get(self.store_key)
        if current is not None and current.context.get(SEED_KEY) == seed:
            return  # the store carries on from this seed; its refresh token may have rotated since
        stored = StoredToken.from_dict(tokens.to_dict())
        stored.context = {**stored.context, SEED_KEY: seed}
        self.token_store.set(self.store_key, stored)

    def _grant_form(self, current: StoredToken | None) -> dict[str, str]:
        if current is None or not current.refresh_token:
            raise SmartAuthError(
                "No refresh token to renew the access token with: authorise again "
                "(airflow-smart authorize) and ask for the offline_access scope.",
                error="invalid_grant",
            )
        form = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        if self.scope:
            form["scope"] = self.scope
        return form

    def _keep_from_previous(self, new: StoredToken, current: StoredToken | None) -> StoredToken:
        if current is None:
            return new
        # A rotated refresh token replaces the old one; otherwise the old one stays valid.
        new.refresh_token = new.refresh_token or current.refresh_token
        new.id_token = new.id_token or current.id_token
        new.context = {**current.context, **new.context}
        return new

    # --- launch context ---------------------------------------------------------------------------
    @property
    def tokens(self) -> TokenResponse | None:
        stored = self._cached()  # a token the store refused is newer than the store's copy
        return TokenResponse.from_stored(stored) if stored is not None else None

    @property
    def patient_id(self) -> str | None:
        return self.tokens.patient if self.tokens else None

    @property
    def encounter_id(self) -> str | None:
        return self.tokens.encounter if self.tokens else None

    @property
    def fhir_context(self) -> list[dict[str, Any]]:
        return self.tokens.fhir_context if self.tokens else []

    @property
    def granted_scope(self) -> str:
        return self.tokens.scope if self.tokens else ""

    def __repr__(self) -> str:
        return f"SmartClient(client_id={self.client_id!r}, fhir_base_url={self.fhir_base_url!r})"
