"""Bulk Data kick-off parameters: reading them (GET query / POST ``Parameters``) and validating them.

``_typeFilter`` supports a small but real subset of FHIR search: ``_id``, equality on string fields
(``status``, ``gender``, ``birthdate``...), token fields (``code``, ``category``, ``clinical-status``,
``class``, ``type`` as ``system|code``, ``|code``, ``code`` or ``system|``) and patient references
(``subject``/``patient``). Parameters of one query are ANDed, comma-separated values and repeated
queries for the same type are ORed. Anything else is rejected (400) or, with ``Prefer: handling=lenient``,
ignored with a warning in the manifest's ``error`` file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from airflow_provider_smart.testing.common import Request, parse_instant
from airflow_provider_smart.testing.data import RESOURCE_TYPES, Dataset

OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
SINGLE_VALUED = frozenset({"_outputFormat", "_since", "_until", "organizeOutputBy", "allowPartialManifests"})
KNOWN_PARAMS = SINGLE_VALUED | {"_type", "_elements", "_typeFilter", "patient", "includeAssociatedData"}
ASSOCIATED_DATA = frozenset({"LatestProvenanceResources", "RelevantProvenanceResources"})
_QUERY_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]*\?)")
_REF = ("reference", "subject")
# search parameter -> (kind, resource element)
SEARCH_PARAMS: dict[str, dict[str, tuple[str, str]]] = {
    "Patient": {"gender": ("string", "gender"), "birthdate": ("string", "birthDate")},
    "Observation": {
        "status": ("string", "status"),
        "code": ("token", "code"),
        "category": ("token", "category"),
        "subject": _REF,
        "patient": _REF,
    },
    "Condition": {
        "code": ("token", "code"),
        "category": ("token", "category"),
        "clinical-status": ("token", "clinicalStatus"),
        "subject": _REF,
        "patient": _REF,
    },
    "Encounter": {
        "status": ("string", "status"),
        "class": ("token", "class"),
        "type": ("token", "type"),
        "subject": _REF,
        "patient": _REF,
    },
}
for _params in SEARCH_PARAMS.values():
    _params["_id"] = ("string", "id")
    _params.update({element: (kind, element) for kind, element in list(_params.values()) if kind == "string"})


class KickoffError(Exception):
    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics


@dataclass
class Condition:
    kind: str  # string | token | reference
    element: str
    values: list[str]

    def matches(self, resource: dict[str, Any]) -> bool:
        value = resource.get(self.element)
        if self.kind == "string":
            return isinstance(value, str) and value in self.values
        if self.kind == "reference":
            ref = value.get("reference") if isinstance(value, dict) else None
            return any(ref in (v, f"Patient/{v}") for v in self.values)
        codings: list[dict[str, Any]] = []
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict):
                codings.extend(concept.get("coding", [concept]))
        return any(_token_matches(token, coding) for token in self.values for coding in codings)


def _token_matches(token: str, coding: dict[str, Any]) -> bool:
    if "|" not in token:
        return coding.get("code") == token
    system, code = token.split("|", 1)
    if system and coding.get("system") != system:
        return False
    if not system and coding.get("system"):
        return False
    return not code or coding.get("code") == code


@dataclass
class ExportParams:
    raw: dict[str, list[str]]
    output_format: str = "application/fhir+ndjson"
    since_ms: int | None = None
    until_ms: int | None = None
    types: list[str] = field(default_factory=list)
    type_filters: dict[str, list[list[Condition]]] = field(default_factory=dict)  # OR of ANDs
    elements: dict[str | None, set[str]] = field(default_factory=dict)  # None = every type
    patients: list[int] | None = None
    warnings: list[str] = field(default_factory=list)

    def keep(self, rtype: str, resource: dict[str, Any]) -> bool:
        filters = self.type_filters.get(rtype)
        return not filters or any(all(c.matches(resource) for c in query) for query in filters)

    def elements_for(self, rtype: str) -> set[str]:
        return self.elements.get(None, set()) | self.elements.get(rtype, set())


# -- reading ----------------------------------------------------------------------------------------


def read_query(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params:
        params.setdefault(key, []).append(value)
    return params


def read_parameters(request: Request) -> dict[str, list[str]]:
    """Parameters of a POST kick-off: the ``Parameters`` body merged with any query parameters."""
    params = read_query(request)
    if not request.body.strip():
        return params
    content_type = request.header("content-type").split(";")[0].strip().lower()
    if content_type not in ("application/fhir+json", "application/json"):
        raise KickoffError(400, "invalid", "a POST kick-off body must be a FHIR Parameters resource")
    try:
        body = json.loads(request.body)
    except ValueError:
        raise KickoffError(400, "invalid", "the POST body is not valid JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise KickoffError(400, "invalid", "the POST body must be a FHIR Parameters resource")
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        value = _parameter_value(parameter) if name else None
        if not isinstance(name, str) or value is None:
            raise KickoffError(400, "invalid", f"Parameters entry {parameter!r} has no name or usable value")
        params.setdefault(name, []).append(value)
    return params


def _parameter_value(parameter: dict[str, Any]) -> str | None:
    for key, value in parameter.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        if isinstance(value, dict):  # valueReference / valueCoding
            found = value.get("reference") or value.get("code")
            return found if isinstance(found, str) else None
    return None


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


# -- validation -------------------------------------------------------------------------------------


def parse_export_params(
    raw: dict[str, list[str]],
    *,
    level: str,
    method: str,
    lenient: bool,
    dataset: Dataset,
    now_ms: int,
) -> ExportParams:
    result = ExportParams(raw)

    def reject(diagnostics: str, *, lenient_ok: bool = True) -> None:
        if lenient and lenient_ok:
            result.warnings.append(f"ignored: {diagnostics}")
        else:
            raise KickoffError(400, "not-supported" if lenient_ok else "invalid", diagnostics)

    for name in raw:
        if name not in KNOWN_PARAMS:
            reject(f"unsupported kick-off parameter {name!r}")
    for name in SINGLE_VALUED & raw.keys():
        if len(raw[name]) > 1:
            raise KickoffError(400, "invalid", f"{name} may appear only once")
    single = {name: raw[name][0] for name in SINGLE_VALUED & raw.keys()}

    output_format = single.get("_outputFormat", "application/fhir+ndjson")
    if output_format not in OUTPUT_FORMATS:
        raise KickoffError(400, "not-supported", f"_outputFormat {output_format!r} is not supported")
    result.output_format = output_format
    result.since_ms = _instant(single, "_since")
    result.until_ms = _instant(single, "_until")
    if result.since_ms is not None and result.since_ms > now_ms:
        raise KickoffError(400, "invalid", "_since is in the future")
    if "organizeOutputBy" in single:
        reject("organizeOutputBy is not supported")
    if single.get("allowPartialManifests", "true") not in ("true", "false"):
        raise KickoffError(400, "invalid", "allowPartialManifests must be true or false")
    for value in _split(raw.get("includeAssociatedData", [])):
        if value not in ASSOCIATED_DATA and not value.startswith("_"):
            reject(f"includeAssociatedData value {value!r} is not supported")

    types = _split(raw.get("_type", [])) or list(RESOURCE_TYPES)
    for rtype in [t for t in types if t not in RESOURCE_TYPES]:
        reject(f"resource type {rtype!r} is not supported by this server")
        types.remove(rtype)
    result.types = list(dict.fromkeys(types))
    if "patient" in raw:
        if method != "POST":
            raise KickoffError(400, "invalid", "the patient parameter requires a POST kick-off")
        if level == "system":
            raise KickoffError(400, "invalid", "the patient parameter is not allowed at the system level")
        result.patients = _patients(raw["patient"], dataset, result.warnings)
    _type_filters(raw.get("_typeFilter", []), result, reject)
    for element in _split(raw.get("_elements", [])):
        rtype, dot, name = element.rpartition(".")
        if dot and rtype not in RESOURCE_TYPES:
            reject(f"_elements entry {element!r} names an unsupported resource type")
            continue
        result.elements.setdefault(rtype or None, set()).add(name)
    return result


def _instant(single: dict[str, str], name: str) -> int | None:
    if name not in single:
        return None
    try:
        return parse_instant(single[name])
    except ValueError:
        raise KickoffError(400, "invalid", f"{name} {single[name]!r} is not a FHIR instant (with timezone)") from None


def _patients(values: list[str], dataset: Dataset, warnings: list[str]) -> list[int]:
    found: set[int] = set()
    for value in _split(values):
        parts = value.rstrip("/").split("/")
        rtype, rid = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", value)
        if rtype != "Patient":
            raise KickoffError(400, "invalid", f"patient {value!r} must be a reference like Patient/<id>")
        parsed = dataset.parse_id("Patient", rid)
        if parsed is None:
            warnings.append(f"patient {value!r} is unknown and was skipped")
        else:
            found.add(parsed[0])
    return sorted(found)


def _type_filters(values: list[str], result: ExportParams, reject: Any) -> None:
    broken: set[str] = set()
    for value in values:
        if "?" not in value and "%3f" in value.lower():
            value = unquote(value)  # a pre-encoded v2-style list
        for query in _QUERY_SPLIT.split(value):
            rtype, question, search = query.partition("?")
            if not question or rtype not in RESOURCE_TYPES:
                reject(f"_typeFilter {query!r} must look like <SupportedType>?<search>")
                continue
            conditions: list[Condition] = []
            for pair in search.split("&"):
                name, equals, text = pair.partition("=")
                spec = SEARCH_PARAMS[rtype].get(unquote(name))
                if spec is None or not equals:
                    reject(f"_typeFilter {query!r}: search parameter {name!r} is not supported")
                    broken.add(rtype)
                    break
                conditions.append(Condition(spec[0], spec[1], unquote(text).split(",")))
            else:
                result.type_filters.setdefault(rtype, []).append(conditions)
    for rtype in broken:  # lenient: ignoring one OR-branch would narrow the result, so drop them all
        result.type_filters.pop(rtype, None)
