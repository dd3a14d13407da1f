"""The one table of a ``smart`` connection's fields: the form, the type and range checks, and the docs.

Each :class:`FieldRule` says how a field is labelled and described in the connection form
(``get_provider_info()``'s ``conn-fields``), what type and range its value must have when the connection
is read (:func:`check_extra`, used by ``connection.py``: from the form, the JSON or ``AIRFLOW_CONN_*``
alike), and what README.rst's connection table says about it (:func:`readme_table`; a test keeps the
README equal to it). Change a field here and all three follow.

Cheap to import (Airflow reads the form through ``get_provider_info``): standard library only.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.exceptions import SmartConfigError

AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post", "refresh_token")
ALGS = ("ES384", "RS384", "ES256", "RS256", "PS384", "ES512", "RS512", "PS256", "PS512")
REFRESH_SECTION = "Refresh token (App Launch) connections only"
TIMEOUT_RANGE = (0.1, 3600.0)  # seconds: under 0.1 nothing answers; over an hour a hung socket goes unnoticed


@dataclass(frozen=True)
class FieldRule:
    """One field. ``kind``: ``text``, ``choice`` (one of ``choices``), ``number`` (finite, within
    ``minimum``..``maximum``), ``flag`` (true/false), ``json`` (a JSON object, or its text), ``list`` (a
    comma-separated string or a list of strings). ``standard``: one of Airflow's own fields (host, login...),
    documented here but not an extra. ``doc``: the README's "Meaning" cell."""

    name: str
    label: str
    description: str
    doc: str
    kind: str = "text"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    alias: str | None = None
    secret: bool = False
    standard: bool = False
    form_format: str | None = None
    section: str | None = None
    extra_schema: dict[str, Any] = field(default_factory=dict)

    # -- the form ---------------------------------------------------------------------------------
    def form(self) -> dict[str, Any]:
        """The ``conn-fields`` entry of the connection form."""
        schema: dict[str, Any] = {"type": [self._json_type(), "null"]}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.default is not None:
            schema["default"] = self.default
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.form_format:
            schema["format"] = self.form_format
        if self.section:
            schema["section"] = self.section
        return {"label": self.label, "description": self.description, "schema": {**schema, **self.extra_schema}}

    def _json_type(self) -> str:
        return {"number": "number", "flag": "boolean"}.get(self.kind, "string")

    # -- the check --------------------------------------------------------------------------------
    def check(self, value: Any) -> Any:
        """``value`` if it has this field's type and range (numbers parsed from text), else a
        :class:`SmartConfigError` naming the field and the problem (never echoing a secret)."""
        if value is None or value == "":
            return value
        shown = "the value" if self.secret else repr(value)
        if self.kind == "number":
            return self._number(value, shown)
        if self.kind == "flag":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise self.error(f"must be true or false, not {shown}")
        if self.kind == "json":
            if isinstance(value, dict | str):
                return value  # parsed and checked by the field's own reader (headers: names, CR/LF)
            raise self.error(f"must be a JSON object, not {_type_name(value)}")
        if self.kind == "list":
            if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                return value
            raise self.error(f"must be a comma-separated string or a list of strings, not {_type_name(value)}")
        if not isinstance(value, str):
            hint = " (write the scopes space-separated in one string)" if isinstance(value, list) else ""
            raise self.error(f"must be text, not {_type_name(value)} {'' if self.secret else shown}".rstrip() + hint)
        if self.choices and value.strip() not in self.choices and value.strip().upper() not in self.choices:
            raise self.error(f"{shown} is unknown or not supported: use one of {', '.join(self.choices)}")
        return value

    def _number(self, value: Any, shown: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.error(f"must be a number, not {_type_name(value)} {shown}")
        try:
            number = float(value)
        except ValueError:
            raise self.error(f"must be a number, not {shown}") from None
        if not math.isfinite(number):
            raise self.error(f"must be a finite number, not {shown}")
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if not low <= number <= high:
            raise self.error(f"must be between {_num(low)} and {_num(high)}, not {shown}")
        return number

    def error(self, problem: str) -> SmartConfigError:
        where = self.name if self.standard else f"extra.{self.name}"
        return SmartConfigError(f"{where} ({self.label}) {problem}.", field=self.name)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _num(value: float) -> str:
    return f"{value:g}"


# Field order is form order: what every connection needs, then the Backend Services options, then the
# refresh-token (App Launch) fields in their own section. Airflow hides the value of any extra whose
# name contains a sensitive word (token, private_key, secret, password, ...), so only the secrets carry
# such names; the other fields' older names (private_key_path, token_url, token_store) are still read.
STANDARD_FIELDS = (
    FieldRule(
        "host",
        "FHIR base URL",
        "",
        "FHIR base URL, scheme and path included: ``https://fhir.example.org/r4``",
        standard=True,
    ),
    FieldRule(
        "port",
        "Port of the FHIR base URL",
        "",
        "Optional; when set it must be the base URL's port (443 for https). Set it for the Test button of "
        "Airflow 3.3.1/3.3.2 (see below)",
        standard=True,
    ),
    FieldRule("login", "Client ID", "", "Client id issued by the server", standard=True),
    FieldRule(
        "password",
        "Client secret",
        "",
        "Only for ``client_secret_basic`` / ``client_secret_post`` (and confidential refresh-token clients)",
        standard=True,
        secret=True,
    ),
)

EXTRA_FIELDS = (
    FieldRule(
        "auth_method",
        "Auth method",
        "private_key_jwt: SMART Backend Services, a signed JWT (the default). client_secret_basic / "
        "client_secret_post: a client secret in the Client secret field. refresh_token: a user-authorised "
        "App Launch; fill the section at the end (or run 'airflow-smart authorize --conn-id ...').",
        "``private_key_jwt`` (default), ``client_secret_basic``, ``client_secret_post``, ``refresh_token``",
        kind="choice",
        choices=AUTH_METHODS,
        default="private_key_jwt",
    ),
    FieldRule(
        "private_key",
        "Private key (PEM)",
        "The client's private key: RSA (2048 bits or more) or EC P-256/P-384. Paste it whole, line breaks "
        "included. Stored encrypted and shown as *** once saved.",
        "PEM private key: RSA (2048 bits or more) or EC P-256/P-384. A multiline field, so line breaks "
        "survive; masked by Airflow everywhere",
        secret=True,
        form_format="multiline",
    ),
    FieldRule(
        "key_file",
        "Key file",
        "Instead of pasting the key: the path of a PEM file. It is read wherever the connection is used: "
        "on the workers, and on the API server when you press Test.",
        "Path of a PEM file instead of ``private_key``. Read wherever the connection is used: the workers, "
        "and the API server when you press Test",
        alias="private_key_path",
    ),
    FieldRule(
        "kid",
        "Key ID (kid)",
        "The kid of this key in the JWK Set registered with the server.",
        "Key id of this key in the registered JWK Set (required with a key)",
    ),
    FieldRule(
        "alg",
        "Signing algorithm",
        "Empty: chosen from the key type and the algorithms the server advertises (ES384 or RS384 first).",
        "``ES384``, ``RS384``, ``ES256``, ``RS256``, ``PS384``, ``ES512``, ``RS512``, ``PS256`` or ``PS512``. "
        "Default: from the key type and the server's advertised algorithms",
        kind="choice",
        choices=ALGS,
    ),
    FieldRule(
        "scope",
        "Scope",
        "Space-separated scopes to request, e.g. system/Patient.rs system/Observation.rs. Empty: system/*.rs "
        "(read and search everything) for Backend Services and client secrets; for refresh_token, the scope "
        "granted at authorisation.",
        "Scopes to request, space separated (one string, not a list). Default ``system/*.rs`` (SMART v2: "
        "read and search everything) for Backend Services and client secrets; for ``refresh_token``, nothing "
        "is asked for, so the server keeps the scope granted at authorisation (the ``system/*.read`` older "
        "forms pre-filled is ignored there)",
    ),
    FieldRule(
        "oauth_url",
        "Token endpoint URL",
        "Empty: discovered from the server's .well-known/smart-configuration. Set it to skip that discovery.",
        "Token endpoint. Empty: discovered from ``.well-known/smart-configuration``; set, no discovery",
        alias="token_url",
        form_format="url",
    ),
    FieldRule(
        "jku",
        "JWKS URL (jku)",
        "Sent in the JWT header only when set; must be the JWKS URL registered for the client.",
        "JWKS URL sent in the assertion header (only when registered)",
    ),
    FieldRule(
        "allowed_hosts",
        "Hosts that may receive the token",
        "Comma-separated hosts (or origins) besides the FHIR server that may be sent the access token, "
        "e.g. a file server that requires it. Leave empty unless the server's docs say so.",
        "Other hosts (comma separated, or a list; ``host``, ``host:port``, ``[v6]:port`` or origins) that "
        "may be sent the token; each must parse, ports 1 to 65535",
        kind="list",
    ),
    FieldRule(
        "headers",
        "Extra headers (JSON)",
        'Static headers for every FHIR request, e.g. {"Epic-Client-ID": "..."}',
        'Static headers for every FHIR request, a JSON object, e.g. ``{"Epic-Client-ID": "..."}``',
        kind="json",
        form_format="json",
    ),
    FieldRule(
        "vendor",
        "Server vendor",
        "auto (default): detected from the server's /metadata and SMART configuration. Or name the profile "
        "whose workarounds to apply: epic, cerner, hapi, ecw, athena, medplum, microsoft, generic (the spec "
        "as written). See the README's Vendors table.",
        "``auto`` (default): the vendor profile is detected from the server's ``/metadata`` and SMART "
        "configuration; or ``epic``, ``cerner``, ``hapi``, ``ecw``, ``athena``, ``medplum``, ``microsoft``, "
        "``generic`` (see Vendors)",
        default="auto",
        extra_schema={"enum": ["auto", "generic", "epic", "cerner", "hapi", "ecw", "athena", "medplum", "microsoft"]},
    ),
    FieldRule(
        "verify",
        "Verify TLS",
        "true (default), false, or the path of a CA bundle.",
        "``true`` (default), ``false``, or a CA bundle path",
    ),
    FieldRule(
        "timeout",
        "Timeout (s)",
        "Per-request timeout in seconds (default 60).",
        f"Per-request timeout in seconds (default 60), a finite number from {_num(TIMEOUT_RANGE[0])} to "
        f"{_num(TIMEOUT_RANGE[1])}",
        kind="number",
        minimum=TIMEOUT_RANGE[0],
        maximum=TIMEOUT_RANGE[1],
    ),
    FieldRule(
        "allow_insecure_http",
        "Allow plain http (insecure)",
        "For test servers only: lets the token and credentials travel over plain http to a non-loopback "
        "host, or to http URLs of an https server. Leave off for real servers.",
        "``false`` (default). ``true`` lets credentials travel over plain http to a non-loopback host, or to "
        "http URLs an https server hands out: for test servers only",
        kind="flag",
    ),
    FieldRule(
        "refresh_token",
        "Refresh token",
        "refresh_token connections only: the offline_access refresh token ('airflow-smart authorize' "
        "writes it). Rotated tokens are kept in the rotation store below, not here.",
        "``refresh_token`` only (secret): the offline_access refresh token",
        secret=True,
        form_format="password",
        section=REFRESH_SECTION,
    ),
    FieldRule(
        "rotation_store",
        "Rotation store",
        "refresh_token connections only: where rotated tokens persist between tasks. Empty or variable: "
        "Airflow Variables (Fernet-encrypted, shared by workers, the API server and the CLI). "
        "file:/shared/path/tokens.json: a locked file every process can reach. memory: this process only.",
        "``refresh_token`` only: where rotated tokens persist: ``variable`` (default), ``file:/path``, ``memory``",
        alias="token_store",
        section=REFRESH_SECTION,
    ),
    FieldRule(
        "launch_scope",
        "Scopes to authorise",
        "refresh_token connections only: the scopes 'airflow-smart authorize --conn-id ...' asks the user for "
        "(default: openid fhirUser offline_access user/*.rs).",
        "``refresh_token`` only: what ``airflow-smart authorize --conn-id`` asks the user for",
        section=REFRESH_SECTION,
    ),
)

RULES = {rule.name: rule for rule in EXTRA_FIELDS}
EXTRA_ALIASES = {rule.name: rule.alias for rule in EXTRA_FIELDS if rule.alias}


def conn_fields() -> dict[str, Any]:
    """The form's ``conn-fields``, in form order."""
    return {rule.name: rule.form() for rule in EXTRA_FIELDS}


def check_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` (today's names) with every known field checked by type and range; numbers parsed."""
    return {name: RULES[name].check(value) if name in RULES else value for name, value in extra.items()}


# -- the README table -------------------------------------------------------------------------------
MEANING_WIDTH = 56


def readme_table() -> str:
    """README.rst's connection table, rendered from the rules (a test keeps the README equal to it)."""
    rows = [("Field (form label)", "Older name (alias)", "Meaning")]
    for rule in STANDARD_FIELDS:
        rows.append((f"{rule.name.capitalize()} ({rule.label})", "", rule.doc))
    for rule in EXTRA_FIELDS:
        secret = " (secret)" if rule.secret and rule.name != "refresh_token" else ""
        rows.append((f"extra ``{rule.name}``{secret}", f"``{rule.alias}``" if rule.alias else "", rule.doc))
    # Only the last column wraps: a continuation line of a simple table must leave the first one blank.
    widths = (max(len(r[0]) for r in rows), max(len(r[1]) for r in rows), MEANING_WIDTH)
    rule_line = "  ".join("=" * w for w in widths)
    out = [rule_line]
    for n, (name, alias, meaning) in enumerate(rows):
        lines = textwrap.wrap(meaning, MEANING_WIDTH, break_long_words=False, break_on_hyphens=False) or [""]
        for i, line in enumerate(lines):
            head = (name, alias) if i == 0 else ("", "")
            out.append(f"{head[0].ljust(widths[0])}  {head[1].ljust(widths[1])}  {line}".rstrip())
        if n == 0:
            out.append(rule_line)
    out.append(rule_line)
    return "\n".join(out)
