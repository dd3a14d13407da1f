"""Where each manifest file lands, and how files are split into batches (e.g. Airflow mapped tasks).

A file's local name is never taken from the server as is: only a resource type matching
``^[A-Za-z][A-Za-z0-9]{0,63}$`` is used verbatim, and the rest of the name is ours
(``<Type>.<n>.ndjson`` with ``deleted/`` and ``error/`` subfolders). So a manifest listing a type
such as ``../../x`` cannot make us write outside the destination.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from airflow_provider_smart.bulk.models import MANIFEST_LISTS, TYPE_NAME, ExportManifest
from airflow_provider_smart.bulk.storage import url_key
from airflow_provider_smart.bulk.urls import file_identity, redact_url
from airflow_provider_smart.exceptions import BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")

KINDS = MANIFEST_LISTS
SAFE_PATH = re.compile(r"(?:(deleted|error)/)?([A-Za-z][A-Za-z0-9_]{0,79})\.([1-9][0-9]{0,8})\.ndjson")
_DIGITS = re.compile(r"(\d+)")
UNTYPED = "output"  # STU3 organizeOutputBy files carry no type: they mix types


def safe_type_name(rtype: str | None) -> str:
    """``rtype`` if it is a plain resource type name, else a safe stand-in (logged as a warning)."""
    if rtype is None or rtype == "":
        return UNTYPED
    if TYPE_NAME.fullmatch(rtype):
        return rtype
    letters = re.sub(r"[^A-Za-z0-9]", "", rtype)[:48]
    safe = f"invalid_{letters}" if letters else "invalid"
    log.warning(
        "The manifest lists a file of type %r, which is not a resource type name: saving it as %s.*",
        rtype,
        safe,
    )
    return safe


def relative_path(kind: str, name: str, n: int) -> str:
    return f"{name}.{n}.ndjson" if kind == "output" else f"{kind}/{name}.{n}.ndjson"


def _natural_order(url: str) -> list[Any]:
    """Numbers inside a URL compare as numbers (``Observation.2`` before ``Observation.10``), so a server
    that names its files ``<Type>.<n>.ndjson`` gets the same numbers here."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(url)]


def plan_files(manifest: ExportManifest) -> list[dict[str, Any]]:
    """Every file of ``manifest`` as a JSON-safe dict ``{"kind", "type", "url", "key", "count", "path"}``.

    ``path`` is relative to the destination: ``<Type>.<n>.ndjson``, ``deleted/<Type>.<n>.ndjson`` or
    ``error/<Type>.<n>.ndjson``, ``n`` counting from 1 per kind and type in the order of the files'
    URLs (numbers in them compared as numbers), not of the manifest: a server that lists files in
    another order on each read still gets the same names, so mapped batches (each reading the manifest
    again) and whole downloads agree. ``key`` names the URL without revealing it. A URL listed twice is
    planned once.
    """
    seen: set[str] = set()
    unique = []
    for kind, f in manifest.files:
        identity = file_identity(f.url)  # a re-signed URL is still the same file
        if identity in seen:
            log.warning("The manifest lists %s twice: downloading it once.", redact_url(f.url))
            continue
        seen.add(identity)
        unique.append((kind, f))
    names = {f.url: safe_type_name(f.type) for _, f in unique}
    numbers: dict[str, int] = {}
    by_name: dict[tuple[str, str], list[str]] = {}
    for kind, f in unique:
        by_name.setdefault((kind, names[f.url]), []).append(f.url)
    for urls in by_name.values():
        ordered = sorted(urls, key=lambda url: _natural_order(file_identity(url)))
        numbers.update({url: n for n, url in enumerate(ordered, 1)})
    return [
        {
            "kind": kind,
            "type": f.type,
            "url": f.url,
            "key": url_key(f.url),
            "count": f.count,
            "path": relative_path(kind, names[f.url], numbers[f.url]),
        }
        for kind, f in unique
    ]


def check_entry(entry: Any) -> tuple[str, str]:
    """Validate a planned entry (it may come back from XCom); return its ``(kind, path)``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise BulkExportError(
            f"Not a planned file entry (a dict with kind, type, url, count, path): {entry!r:.200}",
        )
    kind, path = entry.get("kind", "output"), entry.get("path")
    match = SAFE_PATH.fullmatch(path) if isinstance(path, str) else None
    if kind not in KINDS or match is None or (match.group(1) or "output") != kind or not isinstance(path, str):
        raise BulkExportError(
            f"Refusing to download {entry['url']} to {path!r}: planned paths look like '<Type>.<n>.ndjson' "
            "(or deleted/..., error/...) and match their kind. Build entries with plan_files().",
            url=entry["url"],
        )
    return kind, path


def batch(
    entries: list[dict[str, Any]],
    n_batches: int | None = None,
    *,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Split planned entries into batches; never returns an empty batch.

    ``n_batches`` (or its alias ``max_batches``): at most that many batches, balanced by the manifest
    ``count`` (largest first onto the lightest batch). ``batch_size`` alone: consecutive chunks of that
    many files; with ``max_batches`` too, the chunk count is capped and balanced instead. Entries keep
    their manifest order inside each batch.
    """
    limit = n_batches if n_batches is not None else max_batches
    if limit is None and batch_size is None:
        raise ValueError("batch() needs n_batches, max_batches or batch_size.")
    if (limit is not None and limit < 1) or (batch_size is not None and batch_size < 1):
        raise ValueError("n_batches, max_batches and batch_size must be at least 1.")
    if not entries:
        return []
    if limit is None:
        assert batch_size is not None
        return [entries[i : i + batch_size] for i in range(0, len(entries), batch_size)]
    n = limit if batch_size is None else min(limit, math.ceil(len(entries) / batch_size))
    n = min(n, len(entries))
    buckets: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n

    def weight(i: int) -> int:
        count = entries[i].get("count")
        return count if isinstance(count, int) and count > 0 else 1

    for i in sorted(range(len(entries)), key=lambda i: (-weight(i), i)):
        lightest = min(range(n), key=lambda b: (loads[b], len(buckets[b]), b))
        buckets[lightest].append(i)
        loads[lightest] += weight(i)
    return [[entries[i] for i in sorted(bucket)] for bucket in buckets]


def plan_batches(manifest: ExportManifest, status_url: str, max_batches: int) -> list[dict[str, Any]]:
    """The manifest's files in at most ``max_batches`` batches ``{"status_url", "keys", "paths", "count"}``.

    Batches name files by their URL's ``key`` (and planned path): they travel through XCom, which must
    never hold file URLs (pre-signed ones are capabilities), and each download re-reads the manifest for
    fresh links and finds its files by key, whatever order that read lists them in.
    """
    return [
        {
            "status_url": status_url,
            "keys": [f["key"] for f in files],
            "paths": [f["path"] for f in files],
            "count": sum(f["count"] or 0 for f in files),
        }
        for files in batch(plan_files(manifest), max_batches=max_batches)
    ]
