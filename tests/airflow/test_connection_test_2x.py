"""The Test button of Airflow 2.11's UI: ``POST /api/v1/connections/test``, run here as its endpoint runs it.

``airflow.api_connexion.endpoints.connection_endpoint.test_connection`` builds a ``Connection`` from the
form under a random id, exports it as ``AIRFLOW_CONN_<ID>`` in URI form, and calls ``test_connection()``,
which builds our hook for that id. Starting 2.11's Flask webserver for one call would add a minute.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

pytestmark = pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="Airflow 2.x's endpoint; 3.x: test_connection_test_api")


def press_test(**fields: Any) -> tuple[bool, str]:
    from airflow.models.connection import Connection

    conn_id = uuid.uuid4().hex[:8]
    conn = Connection(conn_id=conn_id, conn_type="smart", **fields)
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    os.environ[variable] = conn.get_uri()
    try:
        return conn.test_connection()
    finally:
        os.environ.pop(variable, None)


def test_backend_services_connection_tests_green(sandbox: Any, es384: Any) -> None:
    extra = {"auth_method": "private_key_jwt", "private_key": es384.pem, "kid": es384.kid}
    status, message = press_test(host=sandbox.url, port=sandbox.port, login="es-client", extra=json.dumps(extra))
    assert status is True, message
    assert message.startswith("Connected: the server issued an access token for scope system/*.rs")
    assert es384.pem not in message


def test_a_wrong_key_tests_red_with_a_readable_message(sandbox: Any, rs384: Any) -> None:
    extra = {"private_key": rs384.pem, "kid": "es-key-1"}
    status, message = press_test(host=sandbox.url, login="es-client", extra=json.dumps(extra))
    assert status is False
    assert "invalid_client" in message and rs384.pem not in message
