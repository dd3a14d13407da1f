"""An offline SMART Backend Services + FHIR Bulk Data sandbox server (it does not import Airflow).

Usage::

    from airflow_provider_smart.testing import SmartSandbox

    with SmartSandbox(patients=20) as sb:
        sb.register_client("client-1", jwks=public_jwks, scopes="system/*.rs")
        ...  # point a client at sb.url; sb.requests_log / sb.token_log record what it did
"""

from airflow_provider_smart.testing.common import operation_outcome
from airflow_provider_smart.testing.sandbox import SmartSandbox

__all__ = ["SmartSandbox", "operation_outcome"]
