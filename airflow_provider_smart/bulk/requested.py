"""What was asked for against what the server produced: never land what was not requested.

Servers ignore kick-off parameters silently: Medplum keeps only the first repeated ``_type`` and ignores a
POST body, ``_typeFilter`` and ``_elements``; an export without a working ``_type`` there includes the
project's ClientApplication resources, secrets included. So output files of types nobody asked for are
dropped before download (and listed in the summary), and each parameter the server visibly ignored, or is
documented to ignore, is reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.bulk.models import ExportManifest, ManifestFile

if TYPE_CHECKING:
    from airflow_provider_smart.bulk.models import DownloadReport
    from airflow_provider_smart.bulk.protocol import ServerProfile
    from airflow_provider_smart.bulk.vendors import VendorProfile

log = logging.getLogger("airflow_provider_smart.bulk")

# Where a request dict (ExportRequest.to_dict()) names each spec feature, and how people call it.
_FEATURE_FIELDS = {
    "_type": "resource_types",
    "_typeFilter": "type_filters",
    "_elements": "elements",
    "patient": "patients",
    "_since": "since",
    "lenient": "lenient",
}
SUBSETTED = "SUBSETTED"


def requested_types(request: dict[str, Any] | None) -> list[str]:
    """The ``_type`` list of a request dict (``ExportRequest.to_dict()``); [] when every type was asked for."""
    types = (request or {}).get("resource_types") or []
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",")]
    return [str(t) for t in types if str(t).strip()]


def drop_unrequested(manifest: ExportManifest, types: list[str]) -> tuple[ExportManifest, list[dict[str, Any]]]:
    """``manifest`` without the output files of types not in ``types``, and what was dropped.

    ``deleted`` and ``error`` files stay (they are Bundles and OperationOutcomes about the request), and so
    do untyped files (STU3 ``organizeOutputBy``). No ``types`` means everything was asked for.
    """
    if not types:
        return manifest, []
    wanted = set(types)
    kept: list[ManifestFile] = []
    dropped: dict[str, dict[str, Any]] = {}
    for f in manifest.output:
        if f.type is None or f.type in wanted:
            kept.append(f)
            continue
        entry = dropped.setdefault(f.type, {"type": f.type, "files": 0, "count": 0})
        entry["files"] += 1
        entry["count"] += f.count or 0
    if not dropped:
        return manifest, []
    listed = sorted(dropped.values(), key=lambda d: d["type"])
    log.warning(
        "The server returned types that were not requested (it ignored _type): %s. They are not downloaded; "
        "see the summary's unrequested_types.",
        ", ".join(f"{d['type']} ({d['files']} file(s))" for d in listed),
    )
    raw = dict(manifest.raw)
    raw["output"] = [f.to_dict() for f in kept]
    return replace(manifest, output=kept, raw=raw), listed


def types_without_files(manifest: ExportManifest, types: list[str]) -> list[str]:
    """The requested ``types`` the manifest has no output file of, in the order asked.

    A server may simply hold none of them; but one that keeps only the first of repeated ``_type`` values
    (Medplum) answers a four-type export with one type's files and nothing else to show for it.
    """
    produced = {f.type for f in manifest.output}
    if None in produced:
        return []  # files not organised by type (STU3 organizeOutputBy): nothing to tell from the manifest
    missing = [t for t in types if t not in produced]
    if missing:
        log.warning(
            "No output file came back for requested type(s) %s. The server may hold none; if it should, it may "
            "have read only part of _type (some keep only the first of repeated values: send the spec's "
            "comma-joined form, comma_join_repeats=None). See the summary's types_without_files.",
            ", ".join(missing),
        )
    return missing


def sends_repeated_types(request: dict[str, Any] | None, profile: ServerProfile) -> bool:
    """Whether the kick-off of ``request`` sends each ``_type`` value as its own parameter: a POST always
    does (one ``Parameters`` entry per value); a GET when ``comma_join_repeats=False`` or the vendor's
    ``list_encoding`` repeats (see :func:`~airflow_provider_smart.bulk.kickoff.build_kickoff`)."""
    request = request or {}
    method = str(request.get("method") or "auto").strip().upper()
    if method == "POST" or (method == "AUTO" and request.get("patients")):
        return True
    if profile.comma_join_repeats is not None:
        return not profile.comma_join_repeats
    return getattr(profile, "list_encoding", "comma") == "repeat"


def ignored_parameters(
    request: dict[str, Any] | None,
    profile: VendorProfile,
    unrequested: list[dict[str, Any]],
    report: DownloadReport,
    destination: Any,
    *,
    without_files: list[str] | None = None,
    repeated_types: bool = False,
) -> list[dict[str, str]]:
    """The requested spec features the server ignored: seen in the files, or documented for its vendor.

    ``without_files``: requested types with no output file (:func:`types_without_files`);
    ``repeated_types``: the kick-off sent ``_type`` repeated rather than comma-joined (:func:`sends_repeated_types`).
    """
    request = request or {}
    found: list[dict[str, str]] = []

    def asked(feature: str) -> bool:
        return bool(request.get(_FEATURE_FIELDS[feature]))

    types = requested_types(request)
    if unrequested:
        found.append({"parameter": "_type", "evidence": "observed: the server returned types that were not requested"})
    elif repeated_types and len(types) > 1 and without_files == types[1:]:
        found.append(
            {"parameter": "_type", "evidence": "observed: only the first of the repeated _type values came back"}
        )
    elements = request.get("elements") or []
    if elements and _elements_ignored(report, destination):
        found.append({"parameter": "_elements", "evidence": "observed: resources came back without the SUBSETTED tag"})
    for feature in sorted(profile.ignores):
        if feature in _FEATURE_FIELDS and asked(feature) and not any(f["parameter"] == feature for f in found):
            found.append({"parameter": feature, "evidence": f"documented for {profile.title} (vendor profile)"})
    method = str(request.get("method") or "auto").upper()
    if "POST" in profile.ignores and method == "POST":
        found.append({"parameter": "POST body", "evidence": f"documented for {profile.title} (vendor profile)"})
    for item in found:
        log.warning(
            "The server ignored %s (%s): the landed data may hold more than was asked for.",
            item["parameter"],
            item["evidence"],
        )
    return found


def _elements_ignored(report: DownloadReport, destination: Any) -> bool:
    """True when the first resource of every output file lacks ``meta.tag`` SUBSETTED (the spec's marker)."""
    looked = False
    root = str(destination).rstrip("/") + "/"
    for f in report.files:
        if f.kind != "output" or not f.lines or not f.path.startswith(root):
            continue
        first = _first_resource(destination / f.path[len(root) :])
        if first is None:
            continue
        looked = True
        tags = (first.get("meta") or {}).get("tag") or []
        if any(isinstance(t, dict) and t.get("code") == SUBSETTED for t in tags):
            return False
    return looked


def _first_resource(path: Any) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            line = handle.readline(1 << 20)
        data = json.loads(line)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def deletion_warning(request: dict[str, Any] | None, profile: VendorProfile) -> str | None:
    """A warning when an incremental export's server is known never to report deletions."""
    if (request or {}).get("since") and not profile.reports_deletions:
        return (
            f"{profile.title} does not report deleted resources (the manifest's 'deleted' is always empty): "
            "incremental exports (since / since='auto') miss every deletion; reconcile with a periodic full export."
        )
    return None
