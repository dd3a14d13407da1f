"""The form for Airflow 2.11, 3.0 and 3.1 UIs comes from the same declaration as the 3.2+ one."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.get_provider_info import CONN_FIELDS, get_provider_info
from airflow_provider_smart.hooks.connection_test import masked_fields
from airflow_provider_smart.hooks.legacy_form import AIRFLOW2_PLACEHOLDER, connection_form_widgets, ui_field_behaviour
from airflow_provider_smart.hooks.smart import SmartHook
from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_2_PLUS

DECLARED = get_provider_info()["connection-types"][0]


def test_field_behaviour_is_the_declared_one() -> None:
    declared = DECLARED["ui-field-behaviour"]
    assert SmartHook.get_ui_field_behaviour() == ui_field_behaviour()
    assert ui_field_behaviour() == {
        "hidden_fields": declared["hidden-fields"],
        "relabeling": declared["relabeling"],
        "placeholders": declared["placeholders"],
    }


def test_every_declared_field_becomes_a_widget_of_the_right_kind() -> None:
    pytest.importorskip("wtforms")
    widgets = SmartHook.get_connection_form_widgets()
    assert list(widgets) == list(CONN_FIELDS)  # form order is declaration order
    kinds = {name: field.field_class.__name__ for name, field in widgets.items()}
    assert kinds["private_key"] == kinds["refresh_token"] == "PasswordField"  # secrets stay hidden
    assert kinds["allow_insecure_http"] == "BooleanField"
    assert kinds["timeout"] == "IntegerField"
    assert kinds["scope"] == kinds["alg"] == "StringField"
    for name, field in widgets.items():
        assert field.kwargs["label"] == CONN_FIELDS[name]["label"]
        assert field.kwargs["description"] == CONN_FIELDS[name]["description"]
        assert field.kwargs.get("default") == CONN_FIELDS[name]["schema"].get("default")


def test_a_new_declared_field_reaches_the_legacy_form(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wtforms")
    import copy
    import importlib

    info = importlib.import_module("airflow_provider_smart.get_provider_info")  # the module, not the function

    declared = info.get_provider_info()
    extended = copy.deepcopy(declared)
    vendor = {"label": "Vendor", "schema": {"type": ["string", "null"], "enum": ["a"]}}
    extended["connection-types"][0]["conn-fields"]["new_field"] = vendor
    monkeypatch.setattr(info, "get_provider_info", lambda: extended)
    widgets = connection_form_widgets()
    assert list(widgets)[-1] == "new_field" and widgets["new_field"].kwargs["label"] == "Vendor"


def _shown_form() -> dict[str, Any]:
    """Field name -> label, as this Airflow's UI gets the form."""
    if AIRFLOW_V_3_0_PLUS:
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

        meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}["smart"]
        return {name: f["schema"]["title"] for name, f in (meta.extra_fields or {}).items()}
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    return {w.field_name: w.field.kwargs["label"] for k, w in widgets.items() if k.startswith("extra__smart__")}


def test_this_airflows_ui_gets_every_declared_field() -> None:
    assert _shown_form() == {name: spec["label"] for name, spec in CONN_FIELDS.items()}


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="2.11's FAB UI only")
def test_2_11_stores_secrets_as_sensitive_and_knows_the_field_behaviour() -> None:
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    smart = [w for k, w in pm.connection_form_widgets.items() if k.startswith("extra__smart__")]
    assert {w.field_name for w in smart if w.is_sensitive} == {"private_key", "refresh_token"}
    assert pm.field_behaviours["smart"] == ui_field_behaviour()


@pytest.mark.skipif(AIRFLOW_V_3_2_PLUS, reason="3.2+ read conn-fields and never call the hook methods")
def test_the_hook_methods_are_what_this_airflow_uses() -> None:
    from airflow.providers_manager import ProvidersManager

    assert ProvidersManager().field_behaviours["smart"] == ui_field_behaviour()


def test_a_saved_secret_shows_as_airflow_2s_placeholder_never_itself() -> None:
    """2.11's edit form saves an empty custom field as "delete": a saved key must come back as the placeholder
    its save turns into "keep the stored value", and the secret must never reach the page."""
    fieldwidgets = pytest.importorskip("flask_appbuilder.fieldwidgets")
    if not isinstance(fieldwidgets.BS3PasswordFieldWidget, type):
        pytest.skip("a stand-in flask_appbuilder (3.0/3.1's API server makes one); widgets are 2.x's Flask UI's")
    import wtforms

    widgets = SmartHook.get_connection_form_widgets()

    class Form(wtforms.Form):
        private_key = widgets["private_key"]

    saved = str(Form(data={"private_key": "-----BEGIN PRIVATE KEY-----\nSECRETBYTES"}).private_key())
    assert "SECRETBYTES" not in saved and f'value="{AIRFLOW2_PLACEHOLDER}"' in saved and 'type="password"' in saved
    assert 'value=""' in str(Form().private_key())


def test_a_secret_sent_as_the_placeholder_is_named_once_by_its_label() -> None:
    sent = {"private_key": AIRFLOW2_PLACEHOLDER, "extra__smart__private_key": AIRFLOW2_PLACEHOLDER, "kid": "k"}
    assert masked_fields(None, sent) == [CONN_FIELDS["private_key"]["label"]]
    assert masked_fields("***", {"refresh_token": "***"}) == ["Client secret", CONN_FIELDS["refresh_token"]["label"]]
