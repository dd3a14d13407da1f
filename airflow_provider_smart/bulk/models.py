"""The Bulk Data client's data: what to export, what the server produced, and what we downloaded.

Everything here is plain dataclasses with ``to_dict()`` methods that return JSON-safe dicts, so
results can travel through Airflow XCom or a log line unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from airflow_provider_smart.bulk.urls import is_http_url, redact_url, resolve
from airflow_provider_smart.exceptions import BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")

NDJSON = "application/fhir+ndjson"
MANIFEST_LISTS = ("output", "deleted", "error")
TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")  # a FHIR resource type name, as safe in a file name


def as_list(value: Any) -> list[str]:
    """A list of strings from None, a comma-separated string, or any iterable."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def as_filter_list(value: Any) -> list[str]:
    """``_typeFilter`` queries: a query may itself contain commas (``code=a,b``), so a string is one query."""
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


@dataclass
class ExportRequest:
    """What to export. ``method="auto"`` uses POST when ``patients`` is given (``patient`` is POST-only).

    ``since``/``until`` take FHIR instants (``2024-01-01T00:00:00Z``) or ``datetime`` objects (naive ones
    are taken as UTC). List fields also accept a comma-separated string. ``extra_parameters``: parameters
    outside the spec, sent as given (Microsoft's ``_container``, ``_maxCount``, ``includeHistory``).
    """

    level: Literal["system", "patient", "group"] | str = "system"
    group_id: str | None = None
    resource_types: list[str] = field(default_factory=list)
    since: str | datetime | None = None
    until: str | datetime | None = None
    type_filters: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    include_associated_data: list[str] = field(default_factory=list)
    output_format: str = NDJSON
    organize_output_by: str | None = None
    allow_partial_manifests: bool | None = None
    method: Literal["auto", "GET", "POST"] | str = "auto"
    lenient: bool = False
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resource_types = as_list(self.resource_types)
        self.type_filters = as_filter_list(self.type_filters)
        self.elements = as_list(self.elements)
        self.patients = as_list(self.patients)
        self.include_associated_data = as_list(self.include_associated_data)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("since", "until"):
            if isinstance(data[key], datetime):
                data[key] = data[key].isoformat()
        if not data["extra_parameters"]:
            del data["extra_parameters"]  # absent when unused: an export's identity stays what it was
        return data


def _parse_count(value: Any, where: str) -> int | None:
    """``count`` is a JSON number per spec; accept a numeric string too, and ignore anything else."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    log.warning("Ignoring the unreadable count %r of %s: its line count will not be checked.", value, where)
    return None


def _parse_bool(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return default


def malformed(reason: str, url: str | None) -> BulkExportError:
    return BulkExportError(
        f"The server's export manifest is malformed: {reason}. The export cannot be downloaded; "
        "check the server, or kick off a new export.",
        url=url,
    )


@dataclass
class ManifestFile:
    """One file of a manifest's ``output``, ``deleted`` or ``error`` list (``url`` made absolute)."""

    type: str | None
    url: str
    count: int | None = None
    extension: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, base_url: str | None, where: str) -> ManifestFile:
        if not isinstance(data, dict):
            raise malformed(f"{where} is not an object", base_url)
        url = data.get("url")
        if not isinstance(url, str) or not url.strip():
            raise malformed(f"{where} has no url", base_url)
        url = url.strip()
        if not is_http_url(url):
            if "://" in url or base_url is None:
                raise malformed(f"{where} has a url that is not http(s): {redact_url(url)[:100]!r}", base_url)
            url = resolve(base_url, url)
            log.warning("The manifest's %s has a relative url: resolved to %s.", where, redact_url(url))
        rtype = data.get("type")
        if rtype is not None and not isinstance(rtype, str):
            raise malformed(f"{where} has a type that is not a string: {rtype!r}", base_url)
        return cls(
            type=rtype or None,
            url=url,
            count=_parse_count(data.get("count"), where),
            extension=data.get("extension"),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.raw.items() if k not in ("type", "url", "count", "extension")}
        data.update({"type": self.type, "url": self.url})
        if self.count is not None:
            data["count"] = self.count
        if self.extension is not None:
            data["extension"] = self.extension
        return data


@dataclass
class ExportManifest:
    """The complete-status body. ``error`` also holds STU4's ``outcome`` entries; ``raw`` keeps every key."""

    transaction_time: str | None
    request: str | None
    requires_access_token: bool
    output: list[ManifestFile] = field(default_factory=list)
    deleted: list[ManifestFile] = field(default_factory=list)
    error: list[ManifestFile] = field(default_factory=list)
    extension: Any = None
    link: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    status_url: str | None = None  # where it was fetched from (not part of the server's body)

    @classmethod
    def from_json(cls, data: Any, base_url: str | None = None) -> ExportManifest:
        """Validate and read a manifest; relative file URLs are resolved against ``base_url``.

        Raises :class:`BulkExportError` naming what is wrong when the body is not a JSON object, has
        no ``output`` list, or lists a file without a usable http(s) ``url``.
        """
        if isinstance(data, bytes | str):
            import json

            try:
                data = json.loads(data)
            except ValueError:
                raise malformed("the body is not JSON", base_url) from None
        if not isinstance(data, dict):
            raise malformed(f"the body is a JSON {type(data).__name__}, not an object", base_url)
        if not isinstance(data.get("output"), list):
            raise malformed("it has no 'output' list", base_url)
        lists: dict[str, list[ManifestFile]] = {}
        for key in (*MANIFEST_LISTS, "outcome"):
            entries = data.get(key)
            if entries is None:
                entries = []  # 'error' is missing on old HAPI; 'deleted' is optional
            if not isinstance(entries, list):
                raise malformed(f"'{key}' is not a list", base_url)
            lists[key] = [ManifestFile.from_json(e, base_url, f"{key}[{i}]") for i, e in enumerate(entries)]
        links = data.get("link")
        return cls(
            transaction_time=data.get("transactionTime"),
            request=data.get("request"),
            # Missing on HAPI < 6.2, whose Binary downloads do need the token: default to sending it
            # (it still only ever goes to trusted origins).
            requires_access_token=_parse_bool(data.get("requiresAccessToken"), True),
            output=lists["output"],
            deleted=lists["deleted"],
            error=lists["error"] + lists["outcome"],  # STU4 renamed 'error' to 'outcome'
            extension=data.get("extension"),
            link=[x for x in links if isinstance(x, dict)] if isinstance(links, list) else [],
            raw=data,
            status_url=base_url,
        )

    def next_link(self) -> str | None:
        for link in self.link:
            if link.get("relation") == "next" and isinstance(link.get("url"), str):
                return link["url"]
        return None

    def merged_with(self, page: ExportManifest) -> ExportManifest:
        """This manifest plus a further page's files (a file listed twice is kept once)."""
        seen = {f.url for f in (*self.output, *self.deleted, *self.error)}

        def new(files: list[ManifestFile]) -> list[ManifestFile]:
            fresh = [f for f in files if f.url not in seen]
            seen.update(f.url for f in fresh)
            return fresh

        output = self.output + new(page.output)
        deleted = self.deleted + new(page.deleted)
        error = self.error + new(page.error)
        raw = dict(self.raw)
        raw.update(
            output=[f.to_dict() for f in output],
            deleted=[f.to_dict() for f in deleted],
            error=[f.to_dict() for f in error],
        )
        raw.pop("outcome", None)
        raw.pop("link", None)  # every page is merged in: nothing is left to follow
        return ExportManifest(
            transaction_time=self.transaction_time,
            request=self.request,
            requires_access_token=self.requires_access_token,
            output=output,
            deleted=deleted,
            error=error,
            extension=self.extension,
            link=self.link + page.link,
            raw=raw,
            status_url=self.status_url,
        )

    @property
    def files(self) -> list[tuple[str, ManifestFile]]:
        """Every file as ``(kind, file)``, in manifest order: output, deleted, then error."""
        return [(kind, f) for kind in MANIFEST_LISTS for f in getattr(self, kind)]

    def to_dict(self) -> dict[str, Any]:
        """A spec-shaped manifest (camelCase keys); ``ExportManifest.from_json`` reads it back."""
        data: dict[str, Any] = {
            "transactionTime": self.transaction_time,
            "request": self.request,
            "requiresAccessToken": self.requires_access_token,
            "output": [f.to_dict() for f in self.output],
            "deleted": [f.to_dict() for f in self.deleted],
            "error": [f.to_dict() for f in self.error],
        }
        if self.extension is not None:
            data["extension"] = self.extension
        if self.link:
            data["link"] = self.link
        return data


@dataclass
class StatusResult:
    """One status poll: ``in_progress`` (``progress``, ``retry_after``) or ``complete`` (``manifest``)."""

    state: Literal["in_progress", "complete"]
    progress: str | None = None
    retry_after: float | None = None
    manifest: ExportManifest | None = None

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "progress": self.progress,
            "retry_after": self.retry_after,
            "manifest": self.manifest.to_dict() if self.manifest else None,
        }


UNFRAMED_POLICIES = ("refetch", "mark", "refetch_and_mark", "fail")


@dataclass(frozen=True)
class DownloadOptions:
    """How files are downloaded and checked; one object travels from the operator to each file.

    :param max_concurrent_downloads: files downloaded at the same time.
    :param check_counts: compare each file's line count with the manifest ``count``; a file that
        disagrees is downloaded a second time, and kept (with a warning, listed in ``count_mismatches``)
        when both complete copies agree with each other.
    :param strict_counts: fail such a file instead of keeping it.
    :param check_resource_types: also check every line's ``resourceType`` (costs throughput: the scan
        holds Python's GIL; see benchmarks/).
    :param skip_existing: keep files already under their final name (they were checked before the rename).
    :param min_download_rate: bytes/s a file must average over every ``min_rate_window`` seconds, else the
        attempt is abandoned and the file retried as a transient failure (a server dripping bytes just
        under the read timeout would otherwise hold it for hours); 0 disables the check.
    :param min_rate_window: seconds over which ``min_download_rate`` is averaged.
    :param unframed_bodies: what to do with a body nothing proves complete: no ``Content-Length``, not
        chunked (ended by the server closing the connection; a gzip trailer only proves its member whole)
        and no manifest ``count`` that matches. ``"refetch"`` (default): download it again and land it when
        two copies agree in length and SHA-256; ``"mark"``: land the first copy, listed in the summary's
        ``unverified`` with a warning; ``"refetch_and_mark"``: both; ``"fail"``: refuse such files.
    """

    max_concurrent_downloads: int = 4
    check_counts: bool = True
    strict_counts: bool = False
    check_resource_types: bool = False
    skip_existing: bool = True
    min_download_rate: float = 4096.0  # with the window: reads of CHUNK_SIZE, progress judged per read
    min_rate_window: float = 128.0
    unframed_bodies: str = "refetch"

    def __post_init__(self) -> None:
        if self.unframed_bodies not in UNFRAMED_POLICIES:
            raise BulkExportError(
                f"unframed_bodies must be one of {', '.join(UNFRAMED_POLICIES)}, not {self.unframed_bodies!r}."
            )
        if self.max_concurrent_downloads < 1:
            raise BulkExportError(
                f"max_concurrent_downloads must be at least 1, not {self.max_concurrent_downloads!r}."
            )
        if not (self.min_download_rate >= 0 and self.min_rate_window > 0):  # also refuses NaN
            raise BulkExportError(
                f"min_download_rate must be >= 0 and min_rate_window > 0, not {self.min_download_rate!r} "
                f"and {self.min_rate_window!r}."
            )


@dataclass
class FileReport:
    """One file of a download. ``skipped``: already there, complete and checked, from an earlier run.

    ``path`` is the full destination path (``str`` of the path object); for a skipped file ``lines``
    is the manifest ``count`` (the file was only given its name after passing that check).
    """

    kind: str
    type: str | None
    url: str
    path: str
    count: int | None
    lines: int | None
    bytes: int | None
    skipped: bool = False
    seconds: float = 0.0
    attempts: int = 0
    count_mismatch: bool = False  # kept although ``lines`` != ``count`` (two copies agreed)
    unverified: str | None = None  # why nothing proved this file complete (see ``unframed_bodies``)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DownloadReport:
    """All files of a download, plus what the export's error files said.

    ``error_issues``: the fatal/error issues found in the ``error`` files; ``warnings``: warning and
    information issues, and the client's own warnings (e.g. a type name that had to be sanitised).
    Each is a ``{"severity", "code", "diagnostics"}`` dict; the lists are capped, the totals are not.
    """

    files: list[FileReport] = field(default_factory=list)
    error_issues: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    error_issue_count: int = 0
    warning_count: int = 0
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(f.bytes or 0 for f in self.files)

    @property
    def lines(self) -> int:
        return sum(f.lines or 0 for f in self.files)

    @property
    def count_mismatches(self) -> list[dict[str, Any]]:
        """Files kept although their line count differs from the manifest's ``count``."""
        return [
            {"path": f.path, "type": f.type, "count": f.count, "lines": f.lines} for f in self.files if f.count_mismatch
        ]

    @property
    def unverified(self) -> list[dict[str, Any]]:
        """Files landed although nothing proved them complete (``unframed_bodies="mark"``)."""
        return [
            {"path": f.path, "type": f.type, "url": redact_url(f.url), "reason": f.unverified}
            for f in self.files
            if f.unverified
        ]

    def totals(self) -> dict[str, Any]:
        skipped = sum(1 for f in self.files if f.skipped)
        return {
            "files": len(self.files),
            "downloaded": len(self.files) - skipped,
            "skipped": skipped,
            "bytes": self.bytes,
            "lines": self.lines,
            "error_issues": self.error_issue_count,
            "warnings": self.warning_count,
            "count_mismatches": sum(1 for f in self.files if f.count_mismatch),
            "unverified": sum(1 for f in self.files if f.unverified),
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": [f.to_dict() for f in self.files],
            "totals": self.totals(),
            "error_issues": list(self.error_issues),
            "warnings": list(self.warnings),
            "count_mismatches": self.count_mismatches,
            "unverified": self.unverified,
        }
