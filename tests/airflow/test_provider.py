"""The provider is discovered through its entry point and its connection form is declared."""

from __future__ import annotations

import subprocess
import sys

import pytest

from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_2_PLUS


def test_provider_discovered_with_connection_type_and_fields() -> None:
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-smart" in pm.providers
    hook_info = pm.hooks["smart"]
    assert hook_info is not None
    assert hook_info.hook_class_name == "airflow_provider_smart.hooks.smart.SmartHook"
    assert hook_info.connection_testable


@pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2.x has no API server (FAB UI): test_legacy_form.py")
def test_api_server_hook_meta_lists_the_form_fields() -> None:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    smart = meta["smart"]
    assert smart.hook_name == "SMART on FHIR"
    fields = smart.extra_fields or {}
    assert {"private_key", "scope", "kid", "alg", "oauth_url", "auth_method", "allowed_hosts"} <= set(fields)
    # 3.2+ reads conn-fields (a text area); 3.0/3.1 translate the hook's PasswordField (repair_pem restores
    # the line breaks a single-line input drops)
    assert fields["private_key"]["schema"]["format"] == ("multiline" if AIRFLOW_V_3_2_PLUS else "password")
    behaviour = smart.standard_fields
    assert behaviour is not None


@pytest.mark.slow  # starts a new Python that imports Airflow (seconds)
def test_airflow_providers_list_shows_the_provider() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "airflow-provider-smart" in out


@pytest.mark.slow  # starts a new Python that imports Airflow (seconds)
def test_operator_module_import_is_cheap() -> None:
    code = (
        "import sys, airflow.providers.common.compat.sdk as sdk; sdk.BaseOperator; before=set(sys.modules);"
        "import airflow_provider_smart.operators.bulk_export, airflow_provider_smart.operators.token;"
        "import airflow_provider_smart.operators.views, airflow_provider_smart.tables;"
        "heavy=[m for m in ('jwt', 'cryptography', 'requests', 'airflow_provider_smart.bulk.download',"
        " 'duckdb', 'pyarrow', 'deltalake', 'airflow_provider_smart.views')"
        " if m in sys.modules and m not in before];"
        "print('HEAVY=' + repr(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=[]" in out.stdout.splitlines()
