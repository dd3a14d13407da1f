"""The Airflow-free SMART on FHIR auth library (Backend Services, scopes, discovery, token stores)."""

from airflow_provider_smart.auth.backend import BackendServicesAuth, ClientSecretAuth, TokenAuth
from airflow_provider_smart.auth.discovery import SmartConfiguration, discover_smart_configuration
from airflow_provider_smart.auth.keys import generate_private_key, load_private_key, private_key_to_pem, public_jwks
from airflow_provider_smart.auth.launch import (
    TokenResponse,
    build_authorize_post,
    build_authorize_url,
    code_challenge_s256,
    exchange_code,
    generate_code_verifier,
    generate_state,
    refresh_access_token,
)
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
from airflow_provider_smart.auth.smart_client import SmartClient
from airflow_provider_smart.auth.stores import FileTokenStore
from airflow_provider_smart.auth.tokens import InMemoryTokenStore, StoredToken, TokenStore
from airflow_provider_smart.exceptions import (
    DiscoveryError,
    SmartAuthError,
    SmartConfigError,
    SmartError,
    SmartTransportError,
    TokenStoreError,
)
from airflow_provider_smart.origins import OriginPolicy

__all__ = [
    "FHIR_USER",
    "OFFLINE_ACCESS",
    "ONLINE_ACCESS",
    "OPENID",
    "BackendServicesAuth",
    "ClientSecretAuth",
    "DiscoveryError",
    "FileTokenStore",
    "InMemoryTokenStore",
    "OriginPolicy",
    "ParsedScope",
    "SmartAuthError",
    "SmartClient",
    "SmartConfigError",
    "SmartConfiguration",
    "SmartError",
    "SmartTransportError",
    "StoredToken",
    "TokenAuth",
    "TokenResponse",
    "TokenStore",
    "TokenStoreError",
    "build_authorize_post",
    "build_authorize_url",
    "build_scopes",
    "code_challenge_s256",
    "discover_smart_configuration",
    "exchange_code",
    "generate_code_verifier",
    "generate_private_key",
    "generate_state",
    "load_private_key",
    "missing_scopes",
    "parse_scope",
    "parse_scopes",
    "private_key_to_pem",
    "public_jwks",
    "refresh_access_token",
    "resource_scope",
]
