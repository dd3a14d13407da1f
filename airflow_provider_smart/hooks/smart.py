"""``SmartHook``: a ``smart`` Airflow connection turned into an authenticated FHIR ``requests`` session."""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import BaseHook
from airflow_provider_smart.hooks.secrets import mask_secrets, mask_token

if TYPE_CHECKING:
    import requests
    from airflow.models.connection import Connection

    from airflow_provider_smart.auth.backend import TokenAuth
    from airflow_provider_smart.auth.discovery import SmartConfiguration
    from airflow_provider_smart.auth.tokens import StoredToken
    from airflow_provider_smart.bulk import BulkExportClient
    from airflow_provider_smart.bulk.inflight import InFlightRegistry
    from airflow_provider_smart.bulk.vendors import VendorProfile
    from airflow_provider_smart.connection import ConnectionSettings
    from airflow_provider_smart.origins import OriginPolicy


ConnectionFields = tuple["str | None", "str | None", "str | None", dict[str, Any], "int | None"]


class SmartHook(BaseHook):
    """Talk to a FHIR server with SMART Backend Services auth.

    The connection's host is the FHIR base URL, login the client id; extras hold the private key,
    scope, kid, alg (see the README's connection table). Nothing touches the network until a token or
    the session is asked for, so constructing the hook during DAG parsing is free.

    :param smart_conn_id: the ``smart`` connection to use.
    :param scope: request this scope instead of the connection's.
    :param connection: use this connection object instead of looking ``smart_conn_id`` up (the CLI
        reads connections from the metadata DB, which the Task SDK's lookup cannot reach outside a task).
    """

    conn_name_attr = "smart_conn_id"
    default_conn_name = "smart_default"
    conn_type = "smart"
    hook_name = "SMART on FHIR"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields for the UIs of Airflow 2.11 to 3.1 (3.2+ reads ``conn-fields`` instead)."""
        from airflow_provider_smart.hooks.legacy_form import connection_form_widgets

        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields for the UIs of Airflow 2.11 to 3.1 (from the same declaration)."""
        from airflow_provider_smart.hooks.legacy_form import ui_field_behaviour

        return ui_field_behaviour()

    def __init__(
        self,
        smart_conn_id: str = default_conn_name,
        *,
        scope: str | None = None,
        connection: Connection | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smart_conn_id = smart_conn_id
        self.scope = scope
        self._connection = connection
        self._settings: ConnectionSettings | None = None

    @property
    def settings(self) -> ConnectionSettings:
        """The connection, validated (errors name the field to fix); its secrets registered with the masker."""
        if self._settings is None:
            conn = self._connection or self.get_connection(self.smart_conn_id)
            self._settings = self._validate(conn.host, conn.login, conn.password, conn.extra_dejson, conn.port)
        return self._settings

    async def aresolve_settings(self) -> ConnectionSettings:
        """Fill :attr:`settings` without blocking an event loop (for triggers): the async connection API,
        then validation (which imports ``requests`` and the crypto libraries) in a thread."""
        if self._settings is None:
            fields = await self.aconnection_fields()
            self._settings = await asyncio.to_thread(self.settings_from_fields, fields)
        return self._settings

    async def aconnection_fields(self) -> ConnectionFields:
        """The connection's raw fields ``(host, login, password, extra, port)``, fetched the async way."""
        from airflow_provider_smart.compat import get_async_connection, get_async_extra_dejson

        conn = await get_async_connection(self.smart_conn_id, hook=self)
        extra = await get_async_extra_dejson(conn)
        return conn.host, conn.login, conn.password, extra, conn.port

    def settings_from_fields(self, fields: ConnectionFields) -> ConnectionSettings:
        """Validate raw connection fields (blocking: call it in a thread from an event loop) and keep them."""
        self._settings = self._validate(*fields)
        return self._settings

    def _validate(
        self, host: str | None, login: str | None, password: str | None, extra: dict[str, Any], port: int | None
    ) -> ConnectionSettings:
        from airflow_provider_smart.connection import settings_from_connection

        settings = settings_from_connection(host, login, password, extra, conn_id=self.smart_conn_id, port=port)
        mask_secrets(*settings.secrets)
        return settings

    @cached_property
    def origins(self) -> OriginPolicy:
        """The origins that may receive the token: one policy shared by the auth and the Bulk Data client."""
        from airflow_provider_smart.origins import OriginPolicy

        settings = self.settings
        return OriginPolicy(
            [settings.fhir_base_url], settings.allowed_hosts, allow_insecure_http=settings.allow_insecure_http
        )

    @cached_property
    def auth(self) -> TokenAuth:
        """The ``requests`` auth that mints, caches and renews tokens for this connection."""
        from airflow_provider_smart.connection import build_auth
        from airflow_provider_smart.hooks.token_stores import airflow_token_store

        return build_auth(
            self.settings,
            scope=self.scope,
            on_new_token=mask_token,
            store_factory=airflow_token_store,
            origins=self.origins,
        )

    @property
    def fhir_base_url(self) -> str:
        return self.settings.fhir_base_url

    def get_conn(self, *, pool_size: int | None = None) -> requests.Session:
        """A ``requests.Session`` whose requests to the FHIR server carry a fresh bearer token."""
        from airflow_provider_smart.connection import build_session
        from airflow_provider_smart.sessions import DEFAULT_POOL_SIZE

        return build_session(self.settings, self.auth, pool_size=pool_size or DEFAULT_POOL_SIZE)

    def get_bulk_client(
        self,
        *,
        max_concurrent_downloads: int = 4,
        transient_retries: int | None = None,
        comma_join_repeats: bool | None = None,
        vendor: str | None = None,
    ) -> BulkExportClient:
        """A Bulk Data client over this connection's session (pool sized for the parallel downloads).

        ``vendor``: the vendor profile to apply (default: the connection's ``vendor`` extra; ``auto``
        detects it from the server's ``/metadata`` and SMART configuration, see :meth:`vendor_profile`).
        """
        from airflow_provider_smart.bulk import BulkExportClient, RetryPolicy
        from airflow_provider_smart.sessions import DEFAULT_POOL_SIZE

        retry = RetryPolicy() if transient_retries is None else RetryPolicy(attempts=transient_retries)
        session = self.get_conn(pool_size=max(DEFAULT_POOL_SIZE, max_concurrent_downloads + 2))
        return BulkExportClient(
            session,
            self.fhir_base_url,
            origins=self.origins,
            allowed_hosts=self.settings.allowed_hosts,
            timeout=self.settings.timeout,
            retry=retry,
            comma_join_repeats=comma_join_repeats,
            profile=self.vendor_profile(vendor, session=session),
        )

    def vendor_profile(self, vendor: str | None = None, *, session: requests.Session | None = None) -> VendorProfile:
        """The vendor profile of this connection's server: named (``vendor`` or the connection's extra), or
        detected from ``/metadata`` and the SMART configuration when that is ``auto``."""
        from airflow_provider_smart.bulk.vendors import profile_named, resolve_profile

        name = vendor or self.settings.vendor
        if profile_named(name) is not None:
            return resolve_profile(name)
        try:
            smart = self.smart_configuration.raw
        except Exception:
            smart = None
        return resolve_profile(
            name,
            session=session or self.get_conn(),
            fhir_base_url=self.fhir_base_url,
            smart_configuration=smart,
            timeout=self.settings.timeout,
        )

    def inflight_registry(self) -> InFlightRegistry:
        """Where this connection's exports in flight are recorded (Airflow Variables), for single-slot servers
        and ``airflow-smart cancel-export``."""
        from airflow_provider_smart.bulk.inflight import InFlightRegistry
        from airflow_provider_smart.hooks.token_stores import AirflowVariableRecords

        return InFlightRegistry(AirflowVariableRecords(), self.fhir_base_url, self.settings.client_id)

    def ensure_tokens_saved(self) -> None:
        """Raise ``TokenStoreError`` if a rotated refresh token could not be saved in the token store.

        Operators call it as their task ends (``post_execute``): the process is about to exit, and the
        only valid copy of the refresh token would go with it.
        """
        auth: TokenAuth | None = self.__dict__.get("auth")
        if auth is not None:
            auth.ensure_saved()

    def get_token(self, *, force_refresh: bool = False) -> StoredToken:
        """A valid token (cached until ``expiry_skew`` before expiry). Its ``repr`` hides the secret."""
        return self.auth.get_token(force=force_refresh)

    @property
    def smart_configuration(self) -> SmartConfiguration:
        return self.auth.smart_configuration

    def test_connection(self) -> tuple[bool, str]:
        """What Airflow's Test button, ``airflow connections test`` and ``airflow-smart test`` run.

        Backend Services and client-secret connections: discover the token endpoint and request a real
        token; report scope and expiry, never the token. Refresh-token connections are tested without
        refreshing (a refresh rotates the token, and a rotation the workers never see burns their grant):
        discovery, plus a check that a refresh token is stored. Never raises. Messages name fields, not the
        connection id: the API server tests a copy under a random id. On Airflow 2 a failure starts with
        "Failed:": its UI shows every result in the same yellow box.
        """
        from airflow_provider_smart.hooks.connection_test import run_connection_test
        from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

        ok, message = run_connection_test(self)
        return ok, message if ok or AIRFLOW_V_3_0_PLUS else f"Failed: {message}"
