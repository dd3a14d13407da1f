"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``conn-fields`` / ``ui-field-behaviour``), the Airflow >= 3.2 way:
the API server reads it without importing the hook.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart import __version__
from airflow_provider_smart.connection_fields import REFRESH_SECTION, conn_fields

__all__ = ["CONN_FIELDS", "REFRESH_SECTION", "get_provider_info"]

INTEGRATION = "SMART on FHIR"


# The form is one view of the connection's field table (connection_fields.py), which also drives the
# type and range checks and README.rst's connection table: the three cannot drift apart.
CONN_FIELDS: dict[str, Any] = conn_fields()


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
