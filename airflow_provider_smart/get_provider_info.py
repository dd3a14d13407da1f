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


# Field order is form order: what every connection needs, then the Backend Services options, then the
# refresh-token (App Launch) fields in their own section. Airflow hides the value of any extra whose
# name contains a sensitive word (token, private_key, secret, password, ...), so only the secrets carry
# such names; the other fields' older names (private_key_path, token_url, token_store) are still read.
REFRESH_SECTION = "Refresh token (App Launch) connections only"

CONN_FIELDS: dict[str, Any] = {
    "auth_method": _text(
        "Auth method",
        "private_key_jwt: SMART Backend Services, a signed JWT (the default). client_secret_basic / "
        "client_secret_post: a client secret in the Client secret field. refresh_token: a user-authorised "
        "App Launch; fill the section at the end (or run 'airflow-smart authorize --conn-id ...').",
        enum=["private_key_jwt", "client_secret_basic", "client_secret_post", "refresh_token"],
        default="private_key_jwt",
    ),
    "private_key": _text(
        "Private key (PEM)",
        "The client's private key: RSA (2048 bits or more) or EC P-256/P-384. Paste it whole, line breaks "
        "included. Stored encrypted and shown as *** once saved.",
        format="multiline",
    ),
    "key_file": _text(
        "Key file",
        "Instead of pasting the key: the path of a PEM file. It is read wherever the connection is used: "
        "on the workers, and on the API server when you press Test.",
    ),
    "kid": _text("Key ID (kid)", "The kid of this key in the JWK Set registered with the server."),
    "alg": _text(
        "Signing algorithm",
        "Empty: chosen from the key type and the algorithms the server advertises (ES384 or RS384 first).",
        enum=["ES384", "RS384", "ES256", "RS256", "PS384", "ES512", "RS512", "PS256", "PS512"],
    ),
    "scope": _text(
        "Scope",
        "Space-separated scopes to request, e.g. system/Patient.rs system/Observation.rs. Empty: system/*.rs "
        "(read and search everything) for Backend Services and client secrets; for refresh_token, the scope "
        "granted at authorisation.",
    ),
    "oauth_url": _text(
        "Token endpoint URL",
        "Empty: discovered from the server's .well-known/smart-configuration. Set it to skip that discovery.",
        format="url",
    ),
    "jku": _text(
        "JWKS URL (jku)", "Sent in the JWT header only when set; must be the JWKS URL registered for the client."
    ),
    "allowed_hosts": _text(
        "Hosts that may receive the token",
        "Comma-separated hosts (or origins) besides the FHIR server that may be sent the access token, "
        "e.g. a file server that requires it. Leave empty unless the server's docs say so.",
    ),
    "headers": _text(
        "Extra headers (JSON)", 'Static headers for every FHIR request, e.g. {"Epic-Client-ID": "..."}', format="json"
    ),
    "verify": _text("Verify TLS", "true (default), false, or the path of a CA bundle."),
    "timeout": {
        "label": "Timeout (s)",
        "description": "Per-request timeout in seconds (default 60).",
        "schema": {"type": ["number", "null"], "minimum": 1},
    },
    "allow_insecure_http": {
        "label": "Allow plain http (insecure)",
        "description": "For test servers only: lets the token and credentials travel over plain http to a "
        "non-loopback host, or to http URLs of an https server. Leave off for real servers.",
        "schema": {"type": ["boolean", "null"]},
    },
    "refresh_token": _text(
        "Refresh token",
        "refresh_token connections only: the offline_access refresh token ('airflow-smart authorize' "
        "writes it). Rotated tokens are kept in the rotation store below, not here.",
        format="password",
        section=REFRESH_SECTION,
    ),
    "rotation_store": _text(
        "Rotation store",
        "refresh_token connections only: where rotated tokens persist between tasks. Empty or variable: "
        "Airflow Variables (Fernet-encrypted, shared by workers, the API server and the CLI). "
        "file:/shared/path/tokens.json: a locked file every process can reach. memory: this process only.",
        section=REFRESH_SECTION,
    ),
    "launch_scope": _text(
        "Scopes to authorise",
        "refresh_token connections only: the scopes 'airflow-smart authorize --conn-id ...' asks the user for "
        "(default: openid fhirUser offline_access user/*.rs).",
        section=REFRESH_SECTION,
    ),
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
                    "airflow_provider_smart.operators.views",
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
                    # The port stays visible: Airflow 3.3.1/3.3.2's Test button only works for a connection
                    # that stores one (README, "The Test button"). It must agree with the FHIR base URL.
                    "hidden-fields": ["schema"],
                    "relabeling": {
                        "host": "FHIR base URL",
                        "port": "Port of the FHIR base URL",
                        "login": "Client ID",
                        "password": "Client secret",
                    },
                    "placeholders": {
                        "host": "https://fhir.example.org/r4",
                        "port": "443 for https (needed by the Test button on Airflow 3.3.1/3.3.2)",
                        "login": "my-backend-client",
                        "password": "client_secret_basic / client_secret_post only",
                    },
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
