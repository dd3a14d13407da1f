"""Vendor-behaviour switches: make the sandbox misbehave the way a real EHR is documented to.

``SmartSandbox(quirks=VendorQuirks(...))`` or ``sb.quirks = VENDOR_QUIRKS["medplum"]``. Each switch is one
documented behaviour (sources in ``airflow_provider_smart.bulk.vendors`` and the README's "Vendors" table);
the presets combine them per vendor. The default (no switch on) is the spec as written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_provider_smart.testing.common import Request

LIST_PARAMS = ("_type", "_elements", "_typeFilter", "includeAssociatedData", "patient")


@dataclass
class VendorQuirks:
    """How the sandbox departs from the spec. Every default is the spec's behaviour.

    :param software_name: ``software.name`` of ``/metadata`` (vendor detection reads it).
    :param publisher: ``publisher`` of ``/metadata``.
    :param first_repeated_only: a repeated GET parameter keeps its first value (Medplum's ``_type``).
    :param reject_repeated: a repeated GET parameter is a 400 (Cerner).
    :param ignored_params: parameters accepted and silently ignored (Medplum: ``_typeFilter``...).
    :param ignore_post_body: a POST kick-off's ``Parameters`` body is ignored (Medplum).
    :param resign_urls: file URLs are pre-signed (``?Expires=&Signature=``) and signed anew on every
        manifest read (Medplum, S3-backed servers); :meth:`SmartSandbox.expire_signed_urls` voids them.
    :param single_slot: one export per client until it is deleted: another kick-off answers 429 (Epic, Cerner).
    :param request_window: seconds during which the same export (client, level, Group) is refused (Epic).
    :param required_header: a kick-off without this header is refused with 400 (Epic-Client-ID).
    :param reuse_jobs: an identical kick-off gets the existing job unless ``Cache-Control: no-cache`` (HAPI).
    :param report_deletions: False: the manifest's ``deleted`` stays empty (Medplum).
    :param forbidden_scopes: a token whose granted scope includes one of these gets 403 at kick-off
        (Medplum refuses ``system/*.read``).
    :param extra_params: parameters outside the spec the server accepts (Microsoft's ``_container``).
    """

    software_name: str = "SMART sandbox"
    publisher: str = "airflow-provider-smart"
    first_repeated_only: bool = False
    reject_repeated: bool = False
    ignored_params: frozenset[str] = frozenset()
    ignore_post_body: bool = False
    resign_urls: bool = False
    single_slot: bool = False
    request_window: float | None = None
    required_header: str | None = None
    reuse_jobs: bool = False
    report_deletions: bool = True
    forbidden_scopes: frozenset[str] = frozenset()
    extra_params: frozenset[str] = frozenset()
    _window: dict[tuple[str, str, str | None], float] = field(default_factory=dict, repr=False)

    def copy(self, **changes: Any) -> VendorQuirks:
        return replace(self, _window={}, **changes)

    def query(self, request: Request) -> dict[str, list[str]] | str:
        """The GET parameters as this server reads them, or the text of a 400 refusal."""
        params: dict[str, list[str]] = {}
        for key, value in request.query_params:
            params.setdefault(key, []).append(value)
        for name, values in params.items():
            if len(values) > 1 and self.reject_repeated:
                return f"Repeated parameter {name} is not supported; send one comma-separated value"
            if len(values) > 1 and self.first_repeated_only:
                params[name] = values[:1]
        return self.drop_ignored(params)

    def drop_ignored(self, params: dict[str, list[str]]) -> dict[str, list[str]]:
        """What the export reads: ignored parameters and accepted extras (handled elsewhere) left out."""
        return {k: v for k, v in params.items() if k not in self.ignored_params | self.extra_params}

    def window_refusal(self, client_id: str, level: str, group_id: str | None) -> str | None:
        """Epic's refusal text if the same export ran within the window; records this kick-off otherwise."""
        if self.request_window is None:
            return None
        key = (client_id, level, group_id)
        now = time.monotonic()
        last = self._window.get(key)
        if last is not None and now - last < self.request_window:
            return "Request not allowed: The Client requested this Group too recently."
        self._window[key] = now
        return None


VENDOR_QUIRKS: dict[str, VendorQuirks] = {
    "generic": VendorQuirks(),
    "epic": VendorQuirks(
        software_name="Epic",
        publisher="Epic Systems Corporation",
        single_slot=True,
        request_window=24 * 3600.0,
        required_header="Epic-Client-ID",
    ),
    "cerner": VendorQuirks(
        software_name="Millennium",
        publisher="Cerner",
        reject_repeated=True,
        single_slot=True,
        ignored_params=frozenset({"_elements"}),
    ),
    "hapi": VendorQuirks(software_name="HAPI FHIR Server", publisher="Not provided", reuse_jobs=True),
    "medplum": VendorQuirks(
        software_name="Medplum",
        publisher="Medplum",
        first_repeated_only=True,
        ignored_params=frozenset({"_typeFilter", "_elements", "patient"}),
        ignore_post_body=True,
        resign_urls=True,
        report_deletions=False,
        forbidden_scopes=frozenset({"system/*.read"}),
    ),
    "microsoft": VendorQuirks(
        software_name="Microsoft FHIR Server", publisher="Microsoft", extra_params=frozenset({"_container"})
    ),
    "athena": VendorQuirks(software_name="athenaFlex", publisher="athenahealth", single_slot=True),
    "ecw": VendorQuirks(software_name="eClinicalWorks FHIR", publisher="eClinicalWorks"),
}
