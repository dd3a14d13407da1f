"""The ``smart`` connection form as the API server serves it to the UI (``/ui/connections/hook_meta``).

On 3.2+ the API server reads the declaration in ``get_provider_info()``; on 3.0/3.1 it builds the same form
from the hook's WTForms fields (``hooks/legacy_form.py``), which 2.11's UI renders (``test_legacy_form.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.connection import EXTRA_ALIASES
from airflow_provider_smart.get_provider_info import CONN_FIELDS, REFRESH_SECTION, get_provider_info
from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

SECRETS = {"private_key", "refresh_token"}
needs_api_server = pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2.x has no API server (FAB UI)")


def smart_meta() -> Any:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    # computed once per process, as the API server does (3.1 fails a second computation: mocked modules)
    return {m.connection_type: m for m in HookMetaService.hook_meta_data()}["smart"]


def test_only_secret_fields_have_names_airflow_masks() -> None:
    from airflow_provider_smart.compat import redact
    from airflow_provider_smart.hooks.token_stores import in_task_context

    assert not in_task_context()
    for name, spec in CONN_FIELDS.items():
        masked = redact({name: "value"})[name] == "***"
        assert masked == (name in SECRETS), name
        assert (spec["schema"].get("format") == "password") == (name == "refresh_token"), name
    for new, old in EXTRA_ALIASES.items():
        assert new in CONN_FIELDS and old not in CONN_FIELDS
        assert redact({old: "v"})[old] == "***"  # why the old names had to go


@needs_api_server
def test_a_new_form_shows_no_masked_value_in_any_field() -> None:
    meta = smart_meta()
    fields = meta.extra_fields
    assert all(field["value"] != "***" for field in fields.values())
    assert list(fields) == list(CONN_FIELDS)  # form order is declaration order
    assert fields["auth_method"]["value"] == "private_key_jwt"
    assert fields["scope"]["value"] is None  # no scope pre-filled: the default depends on the auth method
    assert "system/*.rs" in fields["scope"]["description"]


def test_backend_services_fields_come_first_and_refresh_token_ones_are_grouped() -> None:
    names = list(CONN_FIELDS)
    refresh_only = [n for n, f in CONN_FIELDS.items() if f["schema"].get("section") == REFRESH_SECTION]
    assert refresh_only == ["refresh_token", "rotation_store", "launch_scope"]
    assert names[-len(refresh_only) :] == refresh_only
    assert names[:5] == ["auth_method", "private_key", "key_file", "kid", "alg"]
    for name in refresh_only:
        assert CONN_FIELDS[name]["description"].startswith("refresh_token connections only")


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("private_key", "P-384)"),  # ES256 keys are P-256
        ("key_file", "on the workers, instead"),  # Test reads it on the API server
        ("oauth_url", "Skips discovery when set."),
        ("allowed_hosts", "Other hosts for the token"),
    ],
)
def test_help_texts_say_what_the_code_does(field: str, bad: str) -> None:
    text = CONN_FIELDS[field]["label"] + " " + CONN_FIELDS[field]["description"]
    assert bad not in text


def test_every_algorithm_the_code_accepts_is_offered() -> None:
    from airflow_provider_smart.auth.keys import SUPPORTED_ALGS

    assert set(CONN_FIELDS["alg"]["schema"]["enum"]) == set(SUPPORTED_ALGS)


def test_standard_fields_labels_are_short_and_the_port_is_shown() -> None:
    behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    assert "port" not in behaviour["hidden-fields"]
    assert all(len(label) <= 30 for label in behaviour["relabeling"].values())
    if not AIRFLOW_V_3_0_PLUS:
        return  # 2.11's FAB form: test_legacy_form.py
    standard = smart_meta().standard_fields
    assert standard.password.title == "Client secret"
    assert standard.port.hidden is False and "443" in standard.port.placeholder
