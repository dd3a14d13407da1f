"""Every connection field is checked by type and range when the connection is read; the error names the
field and the problem. One table (connection_fields.py) drives the form, these checks and the README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem
from airflow_provider_smart.connection import settings_from_connection
from airflow_provider_smart.connection_fields import EXTRA_FIELDS, readme_table
from airflow_provider_smart.exceptions import SmartConfigError

EC_PEM = private_key_to_pem(generate_private_key("ES384"))
K1_PEM = (
    ec.generate_private_key(ec.SECP256K1())
    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    .decode()
)
BASE = "https://fhir.example.org/r4"
README = Path(__file__).resolve().parents[2] / "README.rst"

# (extra as JSON text, the field the error must name, words it must say): what JSON and AIRFLOW_CONN_*
# deliver, typed values included.
JSON_CASES = [
    ('{"alg": 384}', "alg", "must be text"),
    ('{"alg": "XS999"}', "alg", "ES384"),  # guard: held before this pass
    ('{"scope": ["system/Patient.rs", "system/Observation.rs"]}', "scope", "space-separated"),
    ('{"timeout": NaN}', "timeout", "finite"),
    ('{"timeout": Infinity}', "timeout", "finite"),
    ('{"timeout": true}', "timeout", "number"),
    ('{"timeout": 0}', "timeout", "between 0.1 and 3600"),
    ('{"timeout": 1e9}', "timeout", "between 0.1 and 3600"),
    ('{"allowed_hosts": "https://[::1"}', "allowed_hosts", "not a host"),
    ('{"allowed_hosts": "files.example.org:99999"}', "allowed_hosts", "not a host"),
    ('{"allowed_hosts": ["https://files.example.org:0"]}', "allowed_hosts", "ports are 1 to 65535"),
    ('{"allowed_hosts": 7}', "allowed_hosts", "comma-separated"),  # guard: held before this pass
    ('{"private_key": 12345}', "private_key", "must be text"),
    ('{"private_key": null, "key_file": 12345}', "key_file", "must be text"),
    ('{"headers": "{not json"}', "headers", "not JSON"),
    ('{"headers": ["Epic-Client-ID"]}', "headers", "JSON object"),
    ('{"allow_insecure_http": "yes please"}', "allow_insecure_http", "true or false"),  # guard: held before this pass
    ('{"kid": 7}', "kid", "must be text"),
    ('{"auth_method": 1}', "auth_method", "must be text"),
]

# What the form (and a connection URI) delivers: every value a string.
FORM_CASES = [
    ({"timeout": "nan"}, "timeout", "finite"),
    ({"timeout": "inf"}, "timeout", "finite"),
    ({"timeout": "true"}, "timeout", "number"),  # guard: held before this pass
    ({"alg": "384"}, "alg", "ES384"),  # guard: held before this pass
    ({"allowed_hosts": "[fe80::1"}, "allowed_hosts", "not a host"),
    ({"allowed_hosts": "files.example.org:99999"}, "allowed_hosts", "not a host"),
    ({"headers": "Epic-Client-ID: abc"}, "headers", "not JSON"),
]


def read(extra: dict[str, Any]) -> Any:
    extra = {"private_key": EC_PEM, "kid": "k1", **extra}
    return settings_from_connection(BASE, "client", None, extra, conn_id="smart_test")


@pytest.mark.parametrize(("text", "field", "needle"), JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_json_values_of_the_wrong_type_or_range_name_the_field(text: str, field: str, needle: str) -> None:
    with pytest.raises(SmartConfigError) as err:
        read(json.loads(text))
    assert err.value.context.get("field") == field
    assert needle in str(err.value) and field in str(err.value)
    assert str(err.value).startswith("Connection 'smart_test': ")


@pytest.mark.parametrize(("extra", "field", "needle"), FORM_CASES, ids=[str(c[0]) for c in FORM_CASES])
def test_form_values_name_the_field(extra: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(SmartConfigError) as err:
        read(extra)
    assert err.value.context.get("field") == field and needle in str(err.value)


def test_a_secret_of_the_wrong_type_is_named_not_echoed() -> None:
    with pytest.raises(SmartConfigError) as err:
        read({"private_key": 987654321})
    assert "987654321" not in str(err.value)


def test_an_unusable_curve_fails_when_the_connection_is_read() -> None:
    with pytest.raises(SmartConfigError) as err:
        read({"private_key": K1_PEM})  # no alg set: before, this failed only at the first token request
    assert err.value.context.get("field") == "private_key" and "secp256k1" in str(err.value)


def test_good_values_still_pass() -> None:
    s = read(
        {
            "timeout": "30",
            "allowed_hosts": ["files.example.org:8443", "https://[2001:db8::1]:9443", "cdn.example.org"],
            "alg": "es384",
            "allow_insecure_http": "false",
        }
    )
    assert s.timeout == 30.0 and s.alg == "ES384" and len(s.allowed_hosts) == 3


def test_the_readme_table_is_the_field_table() -> None:
    assert readme_table() in README.read_text(), (
        "README.rst's connection table differs from connection_fields.readme_table(); paste its output:\n"
        + readme_table()
    )


def test_the_form_and_the_checks_come_from_one_table() -> None:
    from airflow_provider_smart.get_provider_info import get_provider_info

    form = get_provider_info()["connection-types"][0]["conn-fields"]
    assert list(form) == [rule.name for rule in EXTRA_FIELDS]
    assert form["timeout"]["schema"]["minimum"] == 0.1 and form["timeout"]["schema"]["maximum"] == 3600
    documented = re.findall(r"^extra ``(\w+)``", README.read_text(), re.M)
    assert documented == list(form)


def test_a_discovered_token_endpoint_that_is_a_file_url_is_a_bad_document() -> None:
    from airflow_provider_smart.auth.discovery import SmartConfiguration
    from airflow_provider_smart.exceptions import DiscoveryError

    with pytest.raises(DiscoveryError, match=r"not a valid SMART configuration.*token_endpoint") as err:
        SmartConfiguration.from_dict({"token_endpoint": "file:///etc/passwd"}, BASE)
    assert "could not reach" not in str(err.value)
