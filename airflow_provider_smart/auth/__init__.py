"""The Airflow-free SMART on FHIR auth library (Backend Services, scopes, discovery, token stores)."""

from airflow_provider_smart.auth.backend import BackendServicesAuth, ClientSecretAuth, TokenAuth
from airflow_provider_smart.auth.discovery import SmartConfiguration, discover_smart_configuration
from airflow_provider_smart.auth.keys import generate_private_key, load_private_key, private_key_to_pem, public_jwks
from airflow_provider_smart.auth.origins import OriginPolicy
from airflow_provider_smart.auth.scopes import (
    FHIR_USER,
    OFFLINE_ACCESS,
    ONLINE_ACCESS,
    OPENID,
    ParsedScope,
    build_scopes,
    missing_scopes,
    parse_scope,
    parse_scopes,
    resource_scope,
)
from airflow_provider_smart.auth.tokens import InMemoryTokenStore, StoredToken, TokenStore
from airflow_provider_smart.exceptions import DiscoveryError, SmartAuthError, SmartConfigError, SmartError

__all__ = [
    "FHIR_USER",
    "OFFLINE_ACCESS",
    "ONLINE_ACCESS",
    "OPENID",
    "BackendServicesAuth",
    "ClientSecretAuth",
    "DiscoveryError",
    "InMemoryTokenStore",
    "OriginPolicy",
    "ParsedScope",
    "SmartAuthError",
    "SmartConfigError",
    "SmartConfiguration",
    "SmartError",
    "StoredToken",
    "TokenAuth",
    "TokenStore",
    "build_scopes",
    "discover_smart_configuration",
    "generate_private_key",
    "load_private_key",
    "missing_scopes",
    "parse_scope",
    "parse_scopes",
    "private_key_to_pem",
    "public_jwks",
    "resource_scope",
]
