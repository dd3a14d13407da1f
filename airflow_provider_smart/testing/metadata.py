"""Static-ish documents: SMART configuration, CapabilityStatement and the Patient search Bundle."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from airflow_provider_smart.testing.data import RESOURCE_TYPES

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
_BULK_OPS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
LAUNCH_CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "sso-openid-connect",
)
_LAUNCH_SCOPES = ["openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access"]
_LAUNCH_SCOPES += ["online_access", "patient/*.rs", "patient/*.read", "user/*.rs", "user/*.read"]


class LaunchEndpoints(NamedTuple):
    """Where App Launch lives; passed only when the sandbox advertises App Launch."""

    authorize: str
    jwks: str
    issuer: str


def smart_configuration(
    token_url: str, signing_algs: list[str], launch: LaunchEndpoints | None = None
) -> dict[str, Any]:
    scopes = ["system/*.rs", "system/*.read"]
    for rtype in (*RESOURCE_TYPES, "Group"):
        scopes += [f"system/{rtype}.rs", f"system/{rtype}.read"]
    config = _backend_configuration(token_url, signing_algs, scopes)
    if launch is not None:
        config["issuer"] = launch.issuer
        config["jwks_uri"] = launch.jwks
        config["authorization_endpoint"] = launch.authorize
        config["grant_types_supported"] += ["authorization_code", "refresh_token"]
        config["response_types_supported"] = ["code"]
        config["code_challenge_methods_supported"] = ["S256"]
        config["scopes_supported"] += _LAUNCH_SCOPES
        config["capabilities"] += LAUNCH_CAPABILITIES
    return config


def _backend_configuration(token_url: str, signing_algs: list[str], scopes: list[str]) -> dict[str, Any]:
    return {
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": list(signing_algs),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": scopes,
        "capabilities": [
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "permission-v1",
            "permission-v2",
        ],
    }


def capability_statement(base_url: str, token_url: str, launch: LaunchEndpoints | None = None) -> dict[str, Any]:
    def export(name: str, definition: str) -> dict[str, str]:
        return {"name": name, "definition": f"{_BULK_OPS}/{definition}"}

    oauth_uris = [{"url": "token", "valueUri": token_url}]
    if launch is not None:
        oauth_uris.append({"url": "authorize", "valueUri": launch.authorize})
    resources: list[dict[str, Any]] = []
    for rtype in RESOURCE_TYPES:
        entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": "search-type"}]}
        if rtype == "Patient":
            entry["interaction"].append({"code": "read"})
            entry["operation"] = [export("export", "patient-export")]
        resources.append(entry)
    resources.append({"type": "Group", "operation": [export("export", "group-export")]})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "airflow-provider-smart sandbox"},
        "implementation": {"description": "Offline SMART Backend Services + Bulk Data sandbox", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [{"url": OAUTH_URIS, "extension": oauth_uris}],
                },
                "resource": resources,
                "operation": [export("export", "export")],
            }
        ],
    }


def search_bundle(base_url: str, lines: list[str], count: int, offset: int) -> dict[str, Any]:
    page = [json.loads(line) for line in lines[offset : offset + count]]
    links = [{"relation": "self", "url": f"{base_url}/Patient?_count={count}&_offset={offset}"}]
    if offset + count < len(lines):
        links.append({"relation": "next", "url": f"{base_url}/Patient?_count={count}&_offset={offset + count}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(lines),
        "link": links,
        "entry": [
            {"fullUrl": f"{base_url}/Patient/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in page
        ],
    }
