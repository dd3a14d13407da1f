"""Turning an :class:`ExportRequest` into the exact kick-off HTTP request (validated, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_smart.bulk.models import TYPE_NAME, ExportRequest
from airflow_provider_smart.exceptions import BulkExportError

if TYPE_CHECKING:
    from airflow_provider_smart.bulk.vendors import VendorProfile

FHIR_JSON = "application/fhir+json"
LEVELS = ("system", "patient", "group")
METHODS = ("auto", "GET", "POST")
# A FHIR date/dateTime/instant, partial forms included (servers differ in what they accept).
_INSTANT = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?")


@dataclass
class KickoffRequest:
    """The HTTP request a kick-off sends.

    ``params`` are the GET query pairs as the server reads them (decoded, in order, repeats allowed);
    ``query`` is the exact query string sent (list values comma-joined with literal commas, as the
    spec's examples write them); ``full_url`` is ``url`` with it.
    """

    method: str
    url: str
    headers: dict[str, str]
    params: list[tuple[str, str]] = field(default_factory=list)
    body: dict[str, Any] | None = None
    query: str = ""

    @property
    def full_url(self) -> str:
        return f"{self.url}?{self.query}" if self.query else self.url


def _fail(message: str) -> BulkExportError:
    return BulkExportError(f"Invalid export request: {message}")


def format_instant(value: str | datetime, name: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        text = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
        return text.replace("+00:00", "Z")
    text = str(value).strip()
    if not _INSTANT.fullmatch(text):
        raise _fail(f"{name}={text!r} is not a FHIR instant; use e.g. '2024-01-01T00:00:00Z'.")
    return text


def patient_reference(value: str) -> str:
    """``"123"`` -> ``"Patient/123"``; ``"Patient/123"`` and absolute Patient URLs are kept."""
    text = value.strip()
    if text.startswith("Patient/") or ("://" in text and "/Patient/" in text):
        return text
    if not text or "/" in text:
        raise _fail(f"patients entry {value!r} is not a Patient id or 'Patient/<id>' reference.")
    return f"Patient/{text}"


def validate(request: ExportRequest) -> str:
    """Check the request for mistakes the server would reject anyway; return the HTTP method to use."""
    if request.level not in LEVELS:
        raise _fail(f"level must be one of {', '.join(LEVELS)}, not {request.level!r}.")
    if request.level == "group" and not (request.group_id or "").strip():
        raise _fail("level='group' needs group_id (the id of the Group to export).")
    if request.level != "group" and request.group_id:
        raise _fail(f"group_id is only used with level='group' (level is {request.level!r}).")
    method = str(request.method or "auto").strip()
    method = "auto" if method.lower() == "auto" else method.upper()
    if method not in METHODS:
        raise _fail(f"method must be 'auto', 'GET' or 'POST', not {request.method!r}.")
    if request.patients and request.level == "system":
        raise _fail("the patient parameter cannot be used at system level; use level='patient' or 'group'.")
    if request.patients and method == "GET":
        raise _fail("the patient parameter is only allowed in a POST kick-off; use method='POST' or 'auto'.")
    for rtype in request.resource_types:
        if not TYPE_NAME.fullmatch(rtype):
            raise _fail(f"resource_types entry {rtype!r} is not a FHIR resource type name.")
    for query in request.type_filters:
        rtype, sep, rest = str(query).partition("?")
        if not sep or not rest or not TYPE_NAME.fullmatch(rtype):
            raise _fail(f"type_filters entry {query!r} must look like 'Observation?category=laboratory'.")
    if request.organize_output_by and not TYPE_NAME.fullmatch(request.organize_output_by):
        raise _fail(f"organize_output_by={request.organize_output_by!r} is not a resource type name.")
    if not (request.output_format or "").strip():
        raise _fail("output_format is empty; leave it at 'application/fhir+ndjson'.")
    for name in ("elements", "include_associated_data"):
        if any(not v.strip() for v in getattr(request, name)):
            raise _fail(f"{name} contains an empty value.")
    known = {"_outputFormat", "_since", "_until", "_type", "_elements", "_typeFilter", "patient"}
    known |= {"includeAssociatedData", "organizeOutputBy", "allowPartialManifests"}
    for key in request.extra_parameters or {}:
        if not str(key).strip() or str(key) in known:
            raise _fail(f"extra_parameters may not set {key!r}: use the request's own field for spec parameters.")
    if method == "auto":
        method = "POST" if request.patients else "GET"
    return method


def export_url(fhir_base_url: str, request: ExportRequest) -> str:
    """String-append, so a base with a path (``https://h/r4``) keeps it (``urljoin`` would drop ``r4``)."""
    base = fhir_base_url.rstrip("/")
    if request.level == "system":
        return f"{base}/$export"
    if request.level == "patient":
        return f"{base}/Patient/$export"
    return f"{base}/Group/{quote(str(request.group_id).strip(), safe='')}/$export"


def _values(request: ExportRequest) -> list[tuple[str, str, list[str]]]:
    """(parameter, FHIR value[x] type, values) in a stable order."""
    single = [
        ("_outputFormat", "valueString", [request.output_format.strip()]),
        ("_since", "valueInstant", [format_instant(request.since, "since")] if request.since else []),
        ("_until", "valueInstant", [format_instant(request.until, "until")] if request.until else []),
    ]
    repeated = [
        ("_type", "valueString", request.resource_types),
        ("_elements", "valueString", request.elements),
        ("_typeFilter", "valueString", [str(q) for q in request.type_filters]),
        ("includeAssociatedData", "valueCode", request.include_associated_data),
        (
            "organizeOutputBy",
            "valueString",
            [request.organize_output_by] if request.organize_output_by else [],
        ),
    ]
    flag = request.allow_partial_manifests
    tail = [("allowPartialManifests", "valueBoolean", [] if flag is None else ["true" if flag else "false"])]
    extra = [(str(k), "valueString", [str(v)]) for k, v in sorted((request.extra_parameters or {}).items())]
    return [*single, *repeated, *tail, *extra]


LIST_PARAMS = frozenset({"_type", "_elements", "includeAssociatedData"})


def encode_get_params(
    values: list[tuple[str, str, list[str]]], *, list_encoding: str, type_filter_encoding: str
) -> tuple[list[tuple[str, str]], str]:
    """The GET query: ``(pairs as the server decodes them, the exact query string)``.

    ``_type``, ``_elements`` and ``includeAssociatedData`` are "strings of comma-delimited" values in the
    Bulk Data spec (STU2 and STU3): ``list_encoding="comma"`` sends one value per parameter, joined with
    literal commas. ``_typeFilter`` is "a FHIR REST API query" per parameter in STU3 ("A client MAY
    repeat the ``_typeFilter`` parameter"; repeats are ORed), a form STU2 also allows, so by default
    (``type_filter_encoding="repeat"``) each query is its own parameter, sent verbatim. ``"comma"``
    sends STU2's "comma-separated list of FHIR REST API queries": a query's own commas (``code=a,b``)
    become ``%2C`` first, so the list separators stay unambiguous.
    """
    pairs: list[tuple[str, str]] = []
    wire: list[str] = []
    for name, _, vals in values:
        if not vals:
            continue
        if name == "_typeFilter":
            joined = type_filter_encoding == "comma"
            items = [v.replace(",", "%2C") for v in vals] if joined else vals
        else:
            joined = name in LIST_PARAMS and list_encoding == "comma"
            items = vals
        if joined:
            pairs.append((name, ",".join(items)))
            wire.append(f"{quote(name)}={','.join(quote(v, safe='') for v in items)}")
        else:
            pairs.extend((name, v) for v in items)
            wire.extend(f"{quote(name)}={quote(v, safe='')}" for v in items)
    return pairs, "&".join(wire)


def build_kickoff(
    request: ExportRequest,
    fhir_base_url: str,
    *,
    comma_join_repeats: bool | None = None,
    profile: VendorProfile | None = None,
    client_id: str = "",
) -> KickoffRequest:
    """The validated kick-off: URL, headers, and GET query pairs or a POST ``Parameters`` body.

    A GET sends list parameters in the spec's form (see :func:`encode_get_params`), or as the vendor
    ``profile`` wants them; ``comma_join_repeats=False`` repeats list parameters instead (``True``
    comma-joins ``_typeFilter`` too). POST always sends one parameter per value: STU4 forbids
    comma-joined values. The profile also adds its headers, and turns ``method="auto"`` into GET for a
    server that ignores POST bodies (unless ``patient`` needs POST).
    """
    method = validate(request)
    asked = str(request.method or "auto").strip().lower()
    if (
        profile is not None
        and not profile.accepts_post
        and method == "POST"
        and not request.patients
        and asked == "auto"
    ):
        method = "GET"
    url = export_url(fhir_base_url, request)
    prefer = "respond-async, handling=lenient" if request.lenient else "respond-async"
    headers = {"Accept": FHIR_JSON, "Prefer": prefer}
    if profile is not None:
        headers.update(profile.kickoff_headers)
        headers.update(profile.headers(client_id))
    values = _values(request)
    if method == "GET":
        list_encoding = profile.list_encoding if profile is not None else "comma"
        filter_encoding = profile.type_filter_encoding if profile is not None else "repeat"
        if comma_join_repeats is not None:
            list_encoding = "comma" if comma_join_repeats else "repeat"
            filter_encoding = "comma" if comma_join_repeats else "repeat"
        params, query = encode_get_params(values, list_encoding=list_encoding, type_filter_encoding=filter_encoding)
        return KickoffRequest("GET", url, headers, params=params, query=query)
    parameters: list[dict[str, Any]] = []
    for name, value_type, vals in values:
        for v in vals:
            value: Any = v == "true" if value_type == "valueBoolean" else v
            parameters.append({"name": name, value_type: value})
    for ref in request.patients:
        parameters.append({"name": "patient", "valueReference": {"reference": patient_reference(ref)}})
    headers["Content-Type"] = FHIR_JSON
    return KickoffRequest("POST", url, headers, body={"resourceType": "Parameters", "parameter": parameters})
