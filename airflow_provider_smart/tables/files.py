"""Reaching the export's files and the tables' folders on a local disk or any pathlib-like object store.

Local paths stay plain :class:`~pathlib.Path` objects; anything else (Airflow's ``ObjectStoragePath``) is
reached through its fsspec filesystem, which pyarrow and the Delta writer are handed here.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

COPY_CHUNK = 1 << 20


def is_local(path: Any) -> bool:
    """A local path; an ``ObjectStoragePath`` is a ``pathlib.Path`` under universal-pathlib 0.2 (Airflow <= 3.1)."""
    from airflow_provider_smart.bulk.storage import is_local_path

    return is_local_path(path)


def arrow_filesystem(path: Any) -> tuple[Any, str]:
    """``(pyarrow filesystem, path string)`` for ``path``: pyarrow reads and writes datasets through it."""
    import pyarrow.fs as pafs

    if is_local(path):
        return pafs.LocalFileSystem(), str(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(path.fs)), str(path.path)


def object_uri(path: Any) -> str:
    """A URI without Airflow's ``conn_id@`` (what delta-rs, readers and OpenLineage name it by)."""
    if is_local(path):
        return str(path)
    return f"{path.protocol}://{str(path.path).lstrip('/')}"


def local_copy(source: Any, local_dir: Path, name: str) -> Path:
    """``source`` itself when it is on this disk, else a streamed copy in ``local_dir``."""
    if is_local(source):
        return Path(source)
    target = local_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
    return target


def upload(local: Path, target: Any) -> None:
    """Put a finished local file at ``target``: a rename on the same disk, one PUT on an object store
    (an object appears whole or not at all)."""
    if is_local(target):
        from airflow_provider_smart.bulk.storage import replace

        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.part"
        shutil.copyfile(local, partial)
        replace(partial, target)
        return
    with local.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)


def remove_tree(path: Any) -> None:
    """Delete a folder and everything under it (best effort: leftovers are only staging)."""
    with contextlib.suppress(FileNotFoundError, OSError):
        if is_local(path):
            shutil.rmtree(path)
        elif path.exists():
            path.fs.rm(str(path.path), recursive=True)


def list_names(path: Any) -> list[str]:
    """The names directly under a folder (none when it does not exist)."""
    if not path.exists():
        return []
    return sorted(p.name for p in path.iterdir())
