"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``conn-fields`` / ``ui-field-behaviour``), the Airflow >= 3.2 way:
the API server reads it without importing the hook.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart import __version__

INTEGRATION = "SMART on FHIR"


def _text(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"], **schema}}


CONN_FIELDS: dict[str, Any] = {
    "auth_method": _text(
        "Auth method",
        "private_key_jwt (SMART Backend Services, default), client_secret_basic, client_secret_post, or "
        "refresh_token (a user-authorised App Launch; run 'airflow-smart authorize --conn-id ...').",
        enum=["private_key_jwt", "client_secret_basic", "client_secret_post", "refresh_token"],
        default="private_key_jwt",
    ),
    "private_key": _text(
        "Private key (PEM)",
        "The client's PEM private key (RSA or EC P-384). Paste it whole, line breaks included.",
        format="multiline",
    ),
    "private_key_path": _text(
        "Private key file", "Path to the PEM file on the workers, instead of pasting the key above."
    ),
    "kid": _text("Key ID (kid)", "The kid of this key in the JWK Set registered with the server."),
    "alg": _text(
        "Signing algorithm",
        "JWT signing algorithm; empty = chosen from the key type and the server's advertised algorithms.",
        enum=["ES384", "RS384", "ES256", "RS256", "PS384"],
    ),
    "scope": _text(
        "Scope",
        "Space-separated scopes to request, e.g. system/Patient.rs system/Observation.rs",
        default="system/*.read",
    ),
    "token_url": _text("Token endpoint", "Skips discovery when set.", format="url"),
    "jku": _text("JWKS URL (jku)", "Sent in the assertion header only when set; must match the registration."),
    "allowed_hosts": _text(
        "Other hosts for the token",
        "Comma-separated hosts (or origins) besides the FHIR server that may receive the access token, "
        "e.g. a file server that requires it. Leave empty unless the server's docs say so.",
    ),
    "headers": _text(
        "Extra headers (JSON)", 'Static headers for every FHIR request, e.g. {"Epic-Client-ID": "..."}', format="json"
    ),
    "refresh_token": _text(
        "Refresh token",
        "auth_method refresh_token only: the initial offline_access refresh token (airflow-smart authorize "
        "writes it). Rotated tokens are kept in the token store below.",
        format="password",
    ),
    "token_store": _text(
        "Token store",
        "auth_method refresh_token only: where rotated tokens persist between tasks: variable (Airflow "
        "Variables, Fernet-encrypted; default), file:/path/tokens.json, or memory.",
        default="variable",
    ),
    "verify": _text("Verify TLS", "true (default), false, or the path of a CA bundle."),
    "timeout": {
        "label": "Timeout (s)",
        "description": "Per-request timeout in seconds.",
        "schema": {"type": ["number", "null"], "minimum": 1, "default": 60},
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-smart",
        "versions": [__version__],
        "name": "SMART on FHIR",
        "description": "SMART on FHIR Backend Services auth and FHIR Bulk Data export for Apache Airflow.",
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://hl7.org/fhir/smart-app-launch/backend-services.html",
                "tags": ["protocol"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_smart.hooks.smart"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_smart.operators.token",
                    "airflow_provider_smart.operators.bulk_export",
                ],
            }
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_smart.sensors.bulk_export"]}
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_smart.triggers.bulk_export"]}
        ],
        "connection-types": [
            {
                "connection-type": "smart",
                "hook-class-name": "airflow_provider_smart.hooks.smart.SmartHook",
                "hook-name": "SMART on FHIR",
                "ui-field-behaviour": {
                    "hidden-fields": ["port", "schema"],
                    "relabeling": {
                        "host": "FHIR base URL",
                        "login": "Client ID",
                        "password": "Client secret (client_secret_* methods only)",
                    },
                    "placeholders": {
                        "host": "https://fhir.example.org/r4",
                        "login": "my-backend-client",
                        "password": "leave empty for private_key_jwt",
                    },
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
