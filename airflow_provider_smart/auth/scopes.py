"""SMART scopes: build them, parse them, compare v1 and v2 forms.

Grammar (SMART App Launch 2.x): ``( patient | user | system ) "/" ( Type | "*" ) "." perms [ "?" query ]``
where v2 ``perms`` is an in-order subset of ``cruds`` and v1 ``perms`` is ``read``, ``write`` or ``*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from airflow_provider_smart.exceptions import SmartConfigError

OPENID = "openid"
FHIR_USER = "fhirUser"
OFFLINE_ACCESS = "offline_access"
ONLINE_ACCESS = "online_access"

CONTEXTS = ("patient", "user", "system")
V2_ORDER = "cruds"
V1_TO_V2 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>[A-Za-z]+)/(?P<resource>\*|[A-Z][A-Za-z]*)\.(?P<perms>[^?]+)(?:\?(?P<q>.*))?$"
)


def _normalise_perms(perms: str | Iterable[str]) -> str:
    """Return v2 permissions in canonical ``cruds`` order; ``"*"`` means all of them."""
    letters = [perms] if isinstance(perms, str) else list(perms)
    joined = "".join(letters)
    if joined in ("*", "cruds*"):
        return V2_ORDER
    if joined in V1_TO_V2:
        return V1_TO_V2[joined]
    unknown = sorted(set(joined) - set(V2_ORDER))
    if unknown or not joined:
        raise SmartConfigError(
            f"Invalid scope permissions {joined!r}: use letters from 'cruds' (c=create r=read u=update "
            "d=delete s=search), '*', or v1 'read'/'write'.",
            field="scope",
        )
    return "".join(ch for ch in V2_ORDER if ch in joined)


def resource_scope(
    context: str,
    resource: str,
    perms: str | Iterable[str] = "rs",
    query: dict[str, str] | None = None,
) -> str:
    """Build a v2 resource scope, e.g. ``resource_scope("system", "Observation", "rs")``."""
    if context not in CONTEXTS:
        raise SmartConfigError(f"Unknown scope context {context!r}: use one of {', '.join(CONTEXTS)}.")
    if resource != "*" and not re.fullmatch(r"[A-Z][A-Za-z]*", resource):
        raise SmartConfigError(f"Invalid FHIR resource type {resource!r} in scope (e.g. 'Patient' or '*').")
    scope = f"{context}/{resource}.{_normalise_perms(perms)}"
    if query:
        scope += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return scope


def build_scopes(scopes: Iterable[str | None]) -> str:
    """Join scopes with single spaces, dropping blanks and duplicates but keeping order."""
    seen: dict[str, None] = {}
    for scope in scopes:
        for part in (scope or "").split():
            seen.setdefault(part, None)
    return " ".join(seen)


@dataclass(frozen=True)
class ParsedScope:
    """A scope as a typed object; ``kind`` is ``resource``, ``launch``, ``identity``, ``access`` or ``other``."""

    raw: str
    kind: str
    context: str | None = None
    resource: str | None = None
    permissions: str | None = None  # v2 letters in canonical order
    query: dict[str, str] = field(default_factory=dict)
    version: int | None = None  # 1 or 2 for resource scopes

    def to_v2(self) -> str:
        """The v2 spelling of this scope (v1 ``.read`` -> ``.rs``); non-resource scopes are unchanged."""
        if self.kind != "resource":
            return self.raw
        return resource_scope(self.context or "", self.resource or "", self.permissions or "", self.query or None)

    def covers(self, context: str, resource: str, perms: str = "rs") -> bool:
        """Whether this scope grants ``perms`` on ``resource`` in ``context`` (ignoring query restrictions)."""
        if self.kind != "resource" or self.context != context:
            return False
        if self.resource not in ("*", resource):
            return False
        return set(_normalise_perms(perms)) <= set(self.permissions or "")


def parse_scope(scope: str) -> ParsedScope:
    """Parse one scope string. Raises ``SmartConfigError`` for a malformed resource scope."""
    scope = scope.strip()
    if not scope or " " in scope:
        raise SmartConfigError(f"parse_scope takes one scope, got {scope!r}; split a scope string first.")
    if scope in (OPENID, FHIR_USER, "profile"):
        return ParsedScope(raw=scope, kind="identity")
    if scope in (OFFLINE_ACCESS, ONLINE_ACCESS):
        return ParsedScope(raw=scope, kind="access")
    if scope == "launch" or scope.startswith("launch/"):
        return ParsedScope(raw=scope, kind="launch", context=scope.partition("/")[2] or None)
    match = _RESOURCE_SCOPE.match(scope)
    if not match:
        if "/" in scope and "." in scope:
            raise SmartConfigError(f"Malformed resource scope {scope!r}: expected context/Type.perms.", field="scope")
        return ParsedScope(raw=scope, kind="other")
    context, resource, perms = match["context"], match["resource"], match["perms"]
    if context not in CONTEXTS:
        raise SmartConfigError(
            f"Unknown scope context {context!r} in {scope!r}: use patient, user or system.", field="scope"
        )
    if perms in V1_TO_V2:
        version, letters = 1, V1_TO_V2[perms]
    else:
        if not re.fullmatch(r"c?r?u?d?s?", perms) or not perms:
            raise SmartConfigError(
                f"Invalid scope {scope!r}: permissions must be an in-order subset of 'cruds' (e.g. .rs), "
                "or v1 .read/.write/.*",
                field="scope",
            )
        version, letters = 2, perms
    query = dict(parse_qsl(match["q"], keep_blank_values=True)) if match["q"] else {}
    return ParsedScope(
        raw=scope,
        kind="resource",
        context=context,
        resource=resource,
        permissions=letters,
        query=query,
        version=version,
    )


def parse_scopes(scopes: str | Iterable[str] | None) -> list[ParsedScope]:
    parts = scopes.split() if isinstance(scopes, str) else list(scopes or [])
    return [parse_scope(s) for s in parts]


def missing_scopes(granted: str | None, required: Iterable[str]) -> list[str]:
    """The ``required`` scopes that ``granted`` does not cover, comparing v1 and v2 forms as equal."""
    granted_parsed = parse_scopes(granted)
    granted_raw = {s.raw for s in granted_parsed}
    missing = []
    for want in required:
        parsed = parse_scope(want)
        if parsed.kind != "resource":
            if parsed.raw not in granted_raw:
                missing.append(want)
            continue
        ok = any(
            g.covers(parsed.context or "", parsed.resource or "", parsed.permissions or "")
            and (not parsed.query or g.query in ({}, parsed.query))
            for g in granted_parsed
        )
        if not ok:
            missing.append(want)
    return missing
