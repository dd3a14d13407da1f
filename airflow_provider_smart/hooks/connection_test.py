"""``SmartHook.test_connection``: what Airflow's Test button shows a person, in sentences.

Kept apart from the hook so the messages and the refresh-token rules live in one place. The result
goes to the UI as is, so it names connection fields (by their form labels), never the random id the
API server tests a copy under, and never a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_smart.hooks.legacy_form import AIRFLOW2_PLACEHOLDER

if TYPE_CHECKING:
    from airflow_provider_smart.connection import ConnectionSettings
    from airflow_provider_smart.hooks.smart import SmartHook

# What to check when the token endpoint answers an RFC 6749 error.
_HINTS = {
    "invalid_client": (
        "Check the Client ID, the Key ID (kid) and that the Private key is the one whose public key is "
        "registered with the server (or, for client_secret_*, the Client secret)."
    ),
    "unauthorized_client": "The server does not allow this client to use this auth method.",
    "invalid_scope": "Check the Scope field: ask only for scopes the client is registered for.",
}


MASK = "***"
_MASKS = (MASK, AIRFLOW2_PLACEHOLDER)


def masked_fields(password: str | None, extra: dict[str, Any]) -> list[str]:
    """The form labels of secrets that arrived as Airflow's mask (or 2.x's placeholder) instead of their value."""
    from airflow_provider_smart.get_provider_info import CONN_FIELDS

    labels = ["Client secret"] if password in _MASKS else []
    # 2.x's form sends each custom field twice, as ``extra__smart__<name>`` and as ``<name>``.
    names = dict.fromkeys(k.removeprefix("extra__smart__") for k, v in extra.items() if v in _MASKS)
    return labels + [CONN_FIELDS.get(name, {}).get("label", name) for name in names]


def _mask_sent(password: str | None, extra: dict[str, Any]) -> str:
    return MASK if MASK in (password, *extra.values()) else AIRFLOW2_PLACEHOLDER


def run_connection_test(hook: SmartHook) -> tuple[bool, str]:
    """Test the hook's connection; never raises."""
    from airflow_provider_smart.connection import settings_from_connection
    from airflow_provider_smart.hooks.secrets import mask_secrets

    try:
        conn = hook._connection or hook.get_connection(hook.smart_conn_id)
        masked = masked_fields(conn.password, conn.extra_dejson)
        if masked:
            # Airflow 3.0's test API and 2.x's edit form send the connection as shown; 3.1+ restore secrets.
            return False, (
                f"{' and '.join(masked)} arrived as '{_mask_sent(conn.password, conn.extra_dejson)}', what "
                "Airflow shows for a saved secret, not the stored value: Airflow 3.0's API and 2.x's edit form "
                "test what they are sent (3.1 and later restore the stored secret). Test with 'airflow "
                "connections test <connection id>' or 'airflow-smart test --conn-id <connection id>', which "
                "read the stored connection, or paste the secret again before pressing Test."
            )
        settings = settings_from_connection(conn.host, conn.login, conn.password, conn.extra_dejson, port=conn.port)
        mask_secrets(*settings.secrets)
        hook.__dict__["settings"] = settings  # the hook's cached settings, without the conn id in errors
        if settings.auth_method == "refresh_token":
            ok, message = _test_refresh_token(settings)
        else:
            ok, message = _test_client_credentials(hook, conn.extra_dejson)
    except Exception as exc:
        ok, message = False, describe_error(exc)
    return ok, _redact(message)


def _test_client_credentials(hook: SmartHook, extra: dict[str, Any]) -> tuple[bool, str]:
    token = hook.get_token(force_refresh=True)
    summary = token.summary()
    scope = summary["scope"] or "(none granted)"
    expiry = f", valid until {summary['expires_at'].replace('T', ' ').rstrip('Z')} UTC" if summary["expires_at"] else ""
    message = f"Connected: the server issued an access token for scope {scope}{expiry} ({hook.auth.token_url})."
    ok, checks = _doctor_short_form(hook, extra)
    return ok, f"{message} {checks}" if checks else message


def _doctor_short_form(hook: SmartHook, extra: dict[str, Any]) -> tuple[bool, str]:
    """The short form of ``airflow-smart doctor`` (the token was just checked): what failed or warned, and a
    few words for the rest. A failed check (a clock too far off, a jku that lacks our key) fails the test."""
    from airflow_provider_smart.doctor import Doctor

    report = Doctor(hook.settings, extra=extra).run(mint_token=False)
    if not report.checks:
        return True, ""
    if report.failed:
        failed = "; ".join(f"{c.name}: {c.summary}" for c in report.failed)
        return False, f"But: {failed}. Run 'airflow-smart doctor --conn-id <id>' for the full report."
    text = report.short()
    return True, f"Checks: {text}." if text else ""


def _test_refresh_token(settings: ConnectionSettings) -> tuple[bool, str]:
    from airflow_provider_smart.auth.smart_client import SEED_KEY, _fingerprint
    from airflow_provider_smart.connection import refresh_store_key, token_store_for
    from airflow_provider_smart.hooks.token_stores import airflow_token_store, describe_store

    token_url = settings.token_url or _discover_token_url(settings)
    store = token_store_for(settings, airflow_token_store)
    stored = store.get(refresh_store_key(settings))
    assert settings.refresh_token is not None
    seed = _fingerprint(settings.refresh_token)
    where = describe_store(settings.token_store)
    if stored is not None and stored.refresh_token and stored.context.get(SEED_KEY) == seed:
        rotated = stored.refresh_token != settings.refresh_token
        state = (
            f"the latest refresh token, rotated from the one in the connection, is kept in {where}"
            if rotated
            else f"the refresh token is in use and kept in {where}"
        )
        if stored.scope:
            state += f" (granted scope: {stored.scope})"
    else:
        state = f"the refresh token in the connection has not been used yet; rotations will be kept in {where}"
    note = ""
    if settings.token_store == "memory":
        note = (
            " Warning: the rotation store memory keeps rotations in one process only, so a server that rotates "
            "refresh tokens will reject the next task's refresh; use variable."
        )
    return True, (
        f"Connected: the server's token endpoint is {token_url}, and {state}. The token was not refreshed: "
        "a refresh would rotate it, so Test leaves that to your tasks." + note
    )


def _discover_token_url(settings: ConnectionSettings) -> str:
    import requests

    from airflow_provider_smart.auth.discovery import discover_smart_configuration

    session = requests.Session()
    session.verify = settings.verify
    session.headers.update(settings.headers)
    config = discover_smart_configuration(settings.fhir_base_url, session=session, timeout=settings.timeout)
    return config.token_endpoint


def describe_error(exc: Exception) -> str:
    """A sentence for the Test result: our errors as they are, with a hint; others with their kind last."""
    import requests

    from airflow_provider_smart.exceptions import SmartAuthError, SmartError

    if isinstance(exc, SmartAuthError):
        hint = _HINTS.get(exc.error)
        return f"{exc.message} {hint}" if hint and "check" not in exc.message.lower() else exc.message
    if isinstance(exc, SmartError):
        return exc.message
    if isinstance(exc, requests.ConnectionError):
        url = getattr(exc.request, "url", None) or "the server"
        return (
            f"Could not connect to {_without_query(url)}: check the FHIR base URL and that this machine can reach it."
        )
    if isinstance(exc, requests.Timeout):
        return "The server did not answer in time: check the FHIR base URL, or raise the Timeout field."
    return f"The test failed: {exc} ({type(exc).__name__})."


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _redact(message: Any) -> str:
    """Belt and braces: anything registered with Airflow's secret masker is replaced by ***."""
    try:
        from airflow_provider_smart.compat import redact

        return str(redact(message))
    except Exception:
        return str(message)
