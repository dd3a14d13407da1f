"""Destinations: a local directory or any pathlib-like object (Airflow's ``ObjectStoragePath``).

Only ``/``, ``open``, ``exists``, ``mkdir``, ``replace``/``rename``, ``unlink`` and ``stat`` are used, so
anything that offers them works. Turning a URI such as ``s3://conn@bucket/x`` into such an object is the
Airflow adapter's job; this module never imports Airflow.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from airflow_provider_smart.exceptions import BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")


def as_destination(destination: Any) -> Any:
    """A ``Path`` for a plain path or a ``file://`` URI; a pathlib-like object is used as it is."""
    if isinstance(destination, str):
        if destination.startswith("file://"):
            return Path(destination[len("file://") :])
        if "://" in destination:
            raise BulkExportError(
                f"destination {destination!r} is a URI: pass an ObjectStoragePath (or another pathlib-like "
                "object) for object storage, or a local directory path."
            )
        return Path(destination).expanduser()
    if hasattr(destination, "open") and hasattr(destination, "__truediv__"):
        return destination
    return Path(os.fspath(destination))


def replace(part: Any, final: Any) -> None:
    """Move a finished temporary file to its final name (atomic and overwriting on local disks)."""
    try:
        part.replace(final)
    except (AttributeError, NotImplementedError):
        part.rename(final)


def discard(path: Any) -> None:
    """Delete a temporary file; cleanup never hides the error that made it necessary."""
    try:
        if path.exists():
            path.unlink()
    except Exception:
        log.debug("Could not delete the partial file %s.", path, exc_info=True)


def size_of(path: Any) -> int | None:
    try:
        return int(path.stat().st_size)
    except Exception:
        return None


def read_json(path: Any) -> dict[str, Any] | None:
    if not path.exists():
        return None
    with path.open("r") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else None


def write_json_atomically(path: Any, data: dict[str, Any]) -> None:
    """Readers see the old content or the new, never half of it."""
    partial = path.parent / f".{path.name}.part"
    with partial.open("w") as handle:
        json.dump(data, handle, indent=2, default=str)
    replace(partial, path)
