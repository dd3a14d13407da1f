"""Vendor profiles: what each EHR's Bulk Data server needs from a client, as data plus small hooks.

A :class:`VendorProfile` says how to encode kick-off parameters, which headers to add, which scopes the
server wants, how often to poll, whether the server holds one export at a time (and refuses reruns
within a window), which spec features it ignores and whether it reports deletions. The client, the
workflow and the operators ask the profile; nothing outside this module tests a vendor's name.

The profile is chosen from the server's CapabilityStatement (``software.name``, ``publisher``) and SMART
configuration (:func:`detect_profile`), or named in the connection (extra ``vendor``). Each quirk's
source is in :data:`PROFILES` (``sources``) and in the README's "Vendors" table.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_smart.bulk.kickoff import KickoffRequest, build_kickoff
from airflow_provider_smart.bulk.protocol import Response, ServerProfile, answered_error, kickoff_error
from airflow_provider_smart.bulk.retry import RetryPolicy
from airflow_provider_smart.exceptions import BulkExportError, ExportWindowError, SmartConfigError

if TYPE_CHECKING:
    import requests

    from airflow_provider_smart.bulk.models import ExportRequest

log = logging.getLogger("airflow_provider_smart.bulk")

AUTO = "auto"
GENERIC = "generic"
ListEncoding = Literal["comma", "repeat"]
# Spec features a server may silently ignore (reported in the summary when they were asked for).
FEATURES = ("_type", "_typeFilter", "_elements", "patient", "lenient", "POST", "_since")


def _no_headers(client_id: str) -> dict[str, str]:
    return {}


def _group_read(request: ExportRequest) -> list[str]:
    return ["system/Group.read"] if request.level == "group" else []


def _read_scope_per_type(request: ExportRequest) -> list[str]:
    return [f"system/{rtype}.read" for rtype in request.resource_types]


def _no_scopes(request: ExportRequest) -> list[str]:
    return []


@dataclass(frozen=True)
class VendorProfile(ServerProfile):
    """What one vendor's server needs. Every field has the spec's (``generic``) behaviour as default.

    A :class:`~airflow_provider_smart.bulk.protocol.ServerProfile`: the transport-free protocol asks it
    how to build the kick-off, which headers to send, how to word a refusal and how often to poll, for the
    sync client and the async trigger alike. ``min_poll_interval`` (inherited) is the vendor's cadence.

    :param name: the profile's name (connection extra ``vendor``).
    :param title: the vendor, for people.
    :param list_encoding: how a GET kick-off sends several values of ``_type``, ``_elements`` and
        ``includeAssociatedData``: ``"comma"`` (one comma-joined value, the spec's form) or ``"repeat"``.
    :param type_filter_encoding: ``"repeat"`` (one ``_typeFilter`` per query: Bulk Data STU3's form, which
        STU2 allows too) or ``"comma"`` (STU2's comma-separated list, each query's own commas sent as ``%2C``).
    :param kickoff_headers: static headers of the kick-off request (HAPI: ``Cache-Control: no-cache``).
    :param client_headers: hook: headers of every Bulk Data request, given the client id (Epic-Client-ID).
    :param extra_scopes: hook: scopes the server wants on top of the types' read scopes, given the request.
    :param type_scopes: hook: the scopes the token must carry for the request (Cerner: one per type).
    :param levels: the export levels the server offers.
    :param max_retry_after: cap on a server's ``Retry-After`` while polling (seconds).
    :param single_slot: one export in progress at a time per client (and Group / tenant): re-attach to
        ours before a kick-off instead of starting a second one.
    :param slot_per_group: the slot is per client and Group (Epic), not per client (Cerner: per tenant).
    :param request_window: seconds during which the server refuses the same export again.
    :param window_refusal: a regular expression matching the server's "too recently" refusal text.
    :param ignores: spec features the server accepts but ignores (see :data:`FEATURES`).
    :param reports_deletions: whether the manifest's ``deleted`` is ever filled.
    :param accepts_post: whether a POST ``Parameters`` body is read (else ``method="auto"`` uses GET).
    :param delete_may_404: a DELETE may answer 404 although the export existed (jobs are reaped).
    :param sources: where each quirk is documented, quirk -> source.
    :param client_id: the SMART client id, bound by the client (for ``client_headers``).
    """

    name: str = GENERIC
    title: str = "Any Bulk Data server (the spec as written)"
    list_encoding: ListEncoding = "comma"
    type_filter_encoding: ListEncoding = "repeat"
    kickoff_headers: Mapping[str, str] = field(default_factory=dict)
    client_headers: Callable[[str], dict[str, str]] = _no_headers
    extra_scopes: Callable[[ExportRequest], list[str]] = _no_scopes
    type_scopes: Callable[[ExportRequest], list[str]] = _no_scopes
    levels: tuple[str, ...] = ("system", "patient", "group")
    max_retry_after: float = 3600.0
    single_slot: bool = False
    slot_per_group: bool = False
    request_window: float | None = None
    window_refusal: str | None = None
    ignores: frozenset[str] = frozenset()
    reports_deletions: bool = True
    accepts_post: bool = True
    delete_may_404: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)
    matches: tuple[str, ...] = ()  # regexes over CapabilityStatement software.name / publisher
    smart_matches: tuple[str, ...] = ()  # regexes over the SMART configuration's endpoint URLs
    client_id: str = ""

    def headers(self, client_id: str | None = None) -> dict[str, str]:
        """Headers of every Bulk Data request to this server."""
        return dict(self.client_headers(self.client_id if client_id is None else client_id))

    # -- the protocol seam (bulk/protocol.ServerProfile) ---------------------------------------------
    def kickoff(self, request: ExportRequest, fhir_base_url: str) -> KickoffRequest:
        if request.level not in self.levels:
            log.warning(
                "%s offers %s exports only; this %s-level kick-off will likely be refused (check the connection's "
                "vendor, or export a Group).",
                self.title,
                "/".join(self.levels),
                request.level,
            )
        return build_kickoff(
            request,
            fhir_base_url,
            comma_join_repeats=self.comma_join_repeats,
            profile=self,
            client_id=self.client_id,
        )

    def status_headers(self) -> dict[str, str]:
        return {**super().status_headers(), **self.headers()}

    def cancel_headers(self) -> dict[str, str]:
        return {**super().cancel_headers(), **self.headers()}

    def retry_after(self, response: Response, retry: RetryPolicy) -> float | None:
        wait = super().retry_after(response, retry)
        return None if wait is None else min(wait, self.max_retry_after)

    def poll_delay(
        self, retry_after: float | None, polls: int, poll_interval: float, max_poll_interval: float
    ) -> float:
        floor = self.min_poll_interval
        return super().poll_delay(retry_after, polls, max(poll_interval, floor), max(max_poll_interval, floor))

    def kickoff_error(
        self, method: str, url: str, response: Response, request: ExportRequest | None = None
    ) -> BulkExportError:
        """A refused kick-off: the request window (Epic's "too recently") gets its own error saying when the
        export may run again; a 403 says which scopes this vendor is documented to need."""
        error = answered_error("{body}", response)
        if self.is_window_refusal(error.message):
            return self.window_error(method, url, response)
        return kickoff_error(method, url, response, scope_hint=self.scope_hint(request))

    def scope_hint(self, request: ExportRequest | None) -> str:
        wanted = self.required_scopes(request) if request is not None else []
        if wanted:
            return (
                f" This server ({self.title}) is documented to need {' '.join(wanted)}: add them to the "
                "connection's scope (extra 'scope') and have the server grant them."
            )
        group = " and system/Group.read" if request is not None and request.level == "group" else ""
        return (
            " The server may need more than read access for $export (Medplum refuses system/*.read and accepts "
            f"system/*.cruds or system/*.*), or read scopes for each exported type{group}. Change the "
            "connection's scope (extra 'scope') and have the server grant it."
        )

    def window_error(self, method: str, url: str, response: Response) -> ExportWindowError:
        base = answered_error("{body}", response)
        window = self.request_window
        not_before = time.time() + window if window else None
        when = (
            f" It may run again by {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(not_before))} at the latest "
            f"({window / 3600:.0f} h window, counted by the server from the earlier kick-off)."
            if not_before and window
            else ""
        )
        return ExportWindowError(
            f"Kick-off {method} {url} was refused because the same export ran too recently (HTTP "
            f"{response.status}: {base.message}).{when} Schedule it no more often than the server's window, or "
            "re-attach to the earlier export's status URL.",
            status=response.status,
            url=url,
            outcome=base.context.get("outcome"),
            not_before=not_before,
        )

    def required_scopes(self, request: ExportRequest) -> list[str]:
        """Scopes the server is documented to need for ``request`` beyond a plain ``system/*.read``."""
        return list(dict.fromkeys([*self.type_scopes(request), *self.extra_scopes(request)]))

    def is_window_refusal(self, text: str) -> bool:
        return bool(self.window_refusal and re.search(self.window_refusal, text, re.IGNORECASE))

    def __repr__(self) -> str:
        return f"VendorProfile({self.name!r})"


def _epic_client_id(client_id: str) -> dict[str, str]:
    return {"Epic-Client-ID": client_id} if client_id else {}


DAY = 24 * 3600.0
PROFILES: dict[str, VendorProfile] = {
    p.name: p
    for p in (
        VendorProfile(),
        VendorProfile(
            name="epic",
            title="Epic",
            type_filter_encoding="comma",
            client_headers=_epic_client_id,
            extra_scopes=_group_read,
            levels=("group",),
            min_poll_interval=60.0,
            max_retry_after=3600.0,
            single_slot=True,
            slot_per_group=True,
            request_window=DAY,
            window_refusal=r"too recently",
            ignores=frozenset({"_since", "_typeFilter"}),
            sources={
                "Group export only": "smart-fetch docs/exporting.md",
                "one export per client and Group: re-attach, DELETE after landing": "smart-fetch bulk_utils.py; "
                "cumulus-etl PR#390",
                "'requested this Group too recently' within 24 h": "cumulus-etl docs/vendors/epic.md",
                "Epic-Client-ID header": "fhir.epic.com oauth2 NonOauth_Epic-Client-ID-Header; cumulus-fhir-support",
                "no meta.lastUpdated: _since unreliable; _typeFilter not implemented (2023)": "smart-fetch "
                "docs/since.md; cumulus-etl docs/vendors/epic.md",
                "_typeFilter comma-joined, inner commas as %2C": "smart-fetch bulk_utils.py combine_filters",
            },
            matches=(r"^epic\b", r"epic systems"),
            smart_matches=(r"\bepic\b", r"interconnect"),
        ),
        VendorProfile(
            name="cerner",
            title="Oracle Health / Cerner Millennium",
            type_filter_encoding="comma",
            type_scopes=_read_scope_per_type,
            levels=("group",),
            min_poll_interval=600.0,
            max_retry_after=1800.0,
            single_slot=True,
            ignores=frozenset({"_elements", "patient"}),
            sources={
                "repeated parameters rejected: comma-joined": "smart-fetch bulk_utils.py; cumulus-etl bulk_export.py",
                "one export in progress per client and tenant: re-attach": "docs.oracle.com mfbda "
                "op-group-group_id-export-get",
                "token needs system/<Type>.read for every exported type": "Oracle kick-off page; "
                "cerner/fhir.cerner.com PR#899",
                "Retry-After up to 5 h, asks for polls every 10-30 min": "cerner/fhir.cerner.com PR#899; "
                "bulk-data-client PR#14",
                "_elements and patient unsupported": "Oracle kick-off page",
                "307 to a file store, no token on the redirect": "cerner/fhir.cerner.com PR#899",
            },
            matches=(r"^cerner", r"oracle health", r"millennium"),
            smart_matches=(r"cerner\.com", r"oraclecloud\.com"),
        ),
        VendorProfile(
            name="hapi",
            title="HAPI FHIR",
            kickoff_headers={"Cache-Control": "no-cache"},
            delete_may_404=True,
            sources={
                "reuses a cached job for an identical request unless Cache-Control: no-cache": "hapi-fhir PR#2463, "
                "#4247, #7320",
                "files expire after 2 h: manifest re-read when links expire": "fhir-data-pipes PR#1082",
                "DELETE may answer 404 (job reaped)": "smart-fetch bulk_utils.py; hapi-fhir#6841",
            },
            matches=(r"\bhapi\b",),
        ),
        VendorProfile(
            name="ecw",
            title="eClinicalWorks",
            extra_scopes=lambda request: ["system/Group.read"],
            max_retry_after=7200.0,
            levels=("group",),
            sources={
                "system/Group.read needed for bulk": "app2.doordoc.com/docs/backend (third-party eCW guide)",
                "Retry-After 7200 on Group status: read as given, waited out, never a failure": (
                    "onc-certification-g10-test-kit#420"
                ),
                "300 s tokens, no refresh token: renewed before expiry": "app2.doordoc.com/docs/backend",
            },
            matches=(r"eclinicalworks", r"\becw\b", r"healow"),
            smart_matches=(r"eclinicalworks", r"healow", r"ecwcloud"),
        ),
        VendorProfile(
            name="athena",
            title="athenahealth",
            levels=("group",),
            min_poll_interval=60.0,
            single_slot=True,
            sources={
                "Group export only, one Group per practice (a-1.c-<practiceId>)": "docs.athenahealth.com "
                "fhir-bulk-export-workflow",
                "poll at most once a minute; concurrent jobs limited": "apis.io athena rate-limit profile "
                "(secondary, not verified)",
            },
            matches=(r"athena",),
            smart_matches=(r"athenahealth",),
        ),
        VendorProfile(
            name="medplum",
            title="Medplum",
            list_encoding="comma",
            ignores=frozenset({"_typeFilter", "_elements", "patient", "lenient", "POST"}),
            reports_deletions=False,
            accepts_post=False,
            sources={
                "repeated _type keeps the first value only: comma-joined": "observed, Medplum 5.0.10 (local)",
                "POST Parameters body ignored: GET kick-off": "observed, Medplum 5.0.10 (local)",
                "_typeFilter, _elements, patient, handling=lenient ignored": "observed, Medplum 5.0.10 (local)",
                "deleted never filled": "medplum/medplum#10479",
                "pre-signed file URLs re-signed on every poll": "observed, Medplum 5.0.10 (local)",
                "token endpoint 429 without Retry-After: backoff": "observed, Medplum 5.0.10 (local)",
            },
            matches=(r"medplum",),
            smart_matches=(r"medplum",),
        ),
        VendorProfile(
            name="microsoft",
            title="Microsoft FHIR Server / Azure Health Data Services",
            sources={
                "_container picks the storage container: pass it as an extra parameter": "MicrosoftDocs azure-docs "
                "export-data.md",
                "opaque 500s: OperationOutcome text shown": "microsoft/fhir-server#2919, #1794",
                "Group/Patient exports may repeat resources": "learn.microsoft.com export-data",
            },
            matches=(r"microsoft", r"azure"),
            smart_matches=(r"azurehealthcareapis\.com", r"login\.microsoftonline\.com"),
        ),
    )
}


def vendor_of(profile: ServerProfile | None) -> VendorProfile:
    """``profile`` as a vendor profile (a plain ``ServerProfile`` is treated as ``generic``)."""
    return profile if isinstance(profile, VendorProfile) else PROFILES[GENERIC]


def bound_profile(name: str | None, client_id: str) -> VendorProfile:
    """The profile called ``name`` (``generic`` for None/auto) with ``client_id`` bound (for its headers)."""
    profile = profile_named(name) or PROFILES[GENERIC]
    return replace(profile, client_id=client_id)


def profile_named(name: str | None) -> VendorProfile | None:
    """The profile called ``name`` (case-insensitive); None for ``"auto"``/empty (detect it)."""
    key = (name or AUTO).strip().lower()
    if key == AUTO:
        return None
    aliases = {"oracle": "cerner", "oracle-health": "cerner", "eclinicalworks": "ecw", "athenahealth": "athena"}
    key = aliases.get(key, key)
    if key not in PROFILES:
        raise SmartConfigError(
            f"vendor {name!r} is unknown: use 'auto' or one of {', '.join(sorted(PROFILES))}.", field="vendor"
        )
    return PROFILES[key]


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def detect_profile(
    capability_statement: Mapping[str, Any] | None, smart_configuration: Mapping[str, Any] | None = None
) -> VendorProfile:
    """The vendor profile these server documents point to; ``generic`` when nothing matches.

    The CapabilityStatement's ``software.name`` and ``publisher`` decide first (what cumulus-fhir-support
    reads); the SMART configuration's endpoint URLs and issuer second.
    """
    statement = capability_statement or {}
    software: Mapping[str, Any] = statement.get("software") or {}
    implementation: Mapping[str, Any] = statement.get("implementation") or {}
    software = software if isinstance(software, Mapping) else {}
    implementation = implementation if isinstance(implementation, Mapping) else {}
    names = [
        _text(software.get("name")),
        _text(statement.get("publisher")),
        _text(statement.get("name")),
        _text(implementation.get("description")),
    ]
    for text in filter(None, names):
        for profile in PROFILES.values():
            if any(re.search(pattern, text, re.IGNORECASE) for pattern in profile.matches):
                return profile
    config = smart_configuration or {}
    urls = " ".join(
        _text(config.get(key))
        for key in ("token_endpoint", "authorization_endpoint", "issuer", "jwks_uri", "management_endpoint")
    )
    for profile in PROFILES.values():
        if urls and any(re.search(pattern, urls, re.IGNORECASE) for pattern in profile.smart_matches):
            return profile
    return PROFILES[GENERIC]


def fetch_capability_statement(session: requests.Session, fhir_base_url: str, timeout: float) -> dict[str, Any] | None:
    """``GET [base]/metadata``, or None when it cannot be read (detection then falls back to generic)."""
    url = fhir_base_url.rstrip("/") + "/metadata"
    try:
        response = session.get(url, headers={"Accept": "application/fhir+json"}, timeout=timeout)
        data = response.json() if response.status_code == 200 else None
    except Exception as exc:
        log.warning("Could not read %s to detect the server's vendor (%s): using the generic profile.", url, exc)
        return None
    return data if isinstance(data, dict) else None


def resolve_profile(
    name: str | None,
    *,
    session: requests.Session | None = None,
    fhir_base_url: str = "",
    smart_configuration: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> VendorProfile:
    """The profile named ``name``, or (``"auto"``) the one detected from ``/metadata`` and the SMART configuration."""
    named = profile_named(name)
    if named is not None:
        return named
    statement = fetch_capability_statement(session, fhir_base_url, timeout) if session is not None else None
    profile = detect_profile(statement, smart_configuration)
    log.info("Server vendor profile: %s (%s).", profile.name, profile.title)
    return profile


__all__ = [
    "AUTO",
    "FEATURES",
    "GENERIC",
    "PROFILES",
    "VendorProfile",
    "bound_profile",
    "detect_profile",
    "profile_named",
    "resolve_profile",
    "vendor_of",
]
