"""A landed Bulk Data export as the tables step reads it: its files by kind and type, and what it covers.

Built from the export operators' summary (their XCom) or from the destination folder (its ``manifest.json``,
written last, so an export without it is incomplete and refused). Works on any destination the export
writes to: a local directory or a pathlib-like object such as Airflow's ``ObjectStoragePath``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_smart.bulk.storage import as_destination, read_json
from airflow_provider_smart.exceptions import TablesError

MANIFEST_FILE = "manifest.json"
# Where the export lands a file (bulk.plan.SAFE_PATH): the tail of a summary path, whatever the root.
LANDED_TAIL = re.compile(r"(?:(?:deleted|error)/)?[A-Za-z][A-Za-z0-9_]{0,79}\.[1-9][0-9]{0,8}\.ndjson$")


@dataclass(frozen=True)
class LandedFile:
    """One NDJSON file of the export: ``path`` relative to the export's folder."""

    type: str
    path: str
    bytes: int = 0
    lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path, "bytes": self.bytes, "lines": self.lines}


@dataclass
class LandedExport:
    """What one landed export holds. ``since``: the export's ``_since`` (None: a full export).
    ``deletions_not_reported``: the export found its server never fills ``deleted`` (Medplum), so an
    empty ``deleted`` proves nothing."""

    root: Any
    location: str
    transaction_time: str | None
    request: str | None
    since: str | None
    output: list[LandedFile] = field(default_factory=list)
    deleted: list[LandedFile] = field(default_factory=list)
    deletions_not_reported: bool = False

    @property
    def incremental(self) -> bool:
        return self.since is not None

    def types(self) -> set[str]:
        return {f.type for f in self.output}

    @classmethod
    def open(cls, export: Any, resolve: Any = None) -> LandedExport:
        """From a summary dict (the export operators' XCom) or a folder (a path, URI or path object).

        ``resolve`` turns a URI string into a path object (the Airflow adapter passes ObjectStoragePath).
        """
        resolve = resolve or as_destination
        if isinstance(export, dict):
            destination = export.get("destination")
            if not destination:
                raise TablesError(
                    "The export summary has no 'destination': pass the export operator's return value "
                    "(e.g. export=export_task.output) or the folder the export landed in."
                )
            return cls.from_summary(resolve(str(destination)), export)
        if isinstance(export, str) and export.strip().startswith("{"):
            return cls.open(json.loads(export), resolve)  # a summary rendered into a string by a template
        root = resolve(export) if isinstance(export, str) else as_destination(export)
        manifest = read_json(root / MANIFEST_FILE)
        if manifest is None or not isinstance(manifest.get("summary"), dict):
            raise TablesError(
                f"{root} holds no completed export: its {MANIFEST_FILE} (written last, once every file landed) "
                "is missing. Point export= at the folder the export operator landed, after it succeeded.",
                export=str(root),
            )
        return cls.from_summary(root, manifest["summary"])

    @classmethod
    def from_summary(cls, root: Any, summary: dict[str, Any]) -> LandedExport:
        location = str(summary.get("destination") or root)
        request = summary.get("request")
        return cls(
            root=root,
            location=location,
            transaction_time=summary.get("transaction_time"),
            request=request,
            since=summary.get("since") or since_of(request),
            output=[_landed(e, location, "output") for e in summary.get("output") or []],
            deleted=[_landed(e, location, "deleted") for e in summary.get("deleted") or []],
            deletions_not_reported=bool(summary.get("deletions_not_reported")),
        )


def since_of(request: Any) -> str | None:
    """The ``_since`` of a kick-off URL, or None: for summaries that do not record ``since`` (landed by
    a status URL, or before it was recorded); after a POST kick-off the URL has no parameters."""
    if not isinstance(request, str):
        return None
    for key, value in parse_qsl(urlsplit(request).query):
        if key == "_since" and value:
            return value
    return None


def _landed(entry: dict[str, Any], location: str, kind: str) -> LandedFile:
    path = str(entry.get("path") or "")
    root = location.rstrip("/") + "/"
    relative = path[len(root) :] if path.startswith(root) else path
    if not LANDED_TAIL.fullmatch(relative):
        tail = LANDED_TAIL.search(path)
        if tail is None:
            raise TablesError(
                f"The export summary lists a {kind} file {path!r} that is not a landed export file "
                "(<Type>.<n>.ndjson); was the summary edited?",
                export=location,
            )
        relative = tail.group(0)
    return LandedFile(
        type=str(entry.get("type") or ""),
        path=relative,
        bytes=int(entry.get("bytes") or 0),
        lines=int(entry.get("lines") or entry.get("count") or 0),
    )
