"""Parquet folders: one per view, each run a new version folder swapped into place by a pointer.

``<root>/<view>/v00000003/part-*.parquet`` holds version 3 whole; ``<root>/<view>/_current.json`` (written
last, atomically) names the current version, so a reader who follows it never sees half a run, and a run
that fails part-way leaves the pointer on the previous version. On a local disk ``<root>/<view>/current``
is also a symlink swapped atomically (``read_parquet('<root>/<view>/current/*.parquet')``). The version
before the current one is kept for readers still on it; older ones are deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from airflow_provider_smart.bulk.storage import read_json, write_json_atomically
from airflow_provider_smart.tables.changes import TableMeta, ViewChange
from airflow_provider_smart.tables.files import arrow_filesystem, is_local, list_names, object_uri, remove_tree

POINTER = "_current.json"
CURRENT_LINK = "current"
KEEP_VERSIONS = 2
ROWS_PER_FILE = 1_000_000


def version_folder(version: int) -> str:
    return f"v{version:08d}"


class ParquetSink:
    """Versioned Parquet folders under ``root`` (``<root>/<view>/``)."""

    format = "parquet"

    def __init__(self, root: Any) -> None:
        self.root = root

    def location(self, name: str) -> str:
        return object_uri(self.root / name)

    def _pointer(self, name: str) -> dict[str, Any] | None:
        return read_json(self.root / name / POINTER)

    def state(self, name: str) -> TableMeta | None:
        pointer = self._pointer(name)
        if pointer is None:
            return None
        return TableMeta(pointer.get("transaction_time"), str(pointer.get("run_key") or ""), pointer.get("since"))

    def commit(self, change: ViewChange) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        folder = self.root / change.name
        pointer = self._pointer(change.name)
        version = int(pointer["version"]) + 1 if pointer else 1
        target = folder / version_folder(version)
        remove_tree(target)  # a failed earlier attempt at this version left part of it
        schema = change.schema

        def batches() -> Iterator[Any]:
            if pointer is not None and not change.full:
                fs, base = arrow_filesystem(folder / str(pointer["folder"]))
                previous = ds.dataset(base, filesystem=fs, format="parquet")
                ids = pa.array(sorted(set(change.replaced_ids or [])), pa.string())
                keep = ~pc.is_in(pc.field(change.key_column), value_set=ids)
                for batch in previous.to_batches(filter=keep):
                    yield batch.cast(schema) if batch.schema != schema else batch
            yield from change.dataset().to_batches()

        fs, base = arrow_filesystem(target)
        ds.write_dataset(
            pa.RecordBatchReader.from_batches(schema, batches()),
            base,
            filesystem=fs,
            format="parquet",
            basename_template="part-{i}.parquet",
            max_rows_per_file=ROWS_PER_FILE,
            max_rows_per_group=min(ROWS_PER_FILE, 1 << 17),
            create_dir=True,
        )
        if not target.exists() or not list_names(target):
            import pyarrow.parquet as pq

            # No rows (the export has no resource of the view's type): one empty file keeps the schema.
            fs.create_dir(base, recursive=True)
            pq.write_table(schema.empty_table(), f"{base}/part-0.parquet", filesystem=fs)
        rows = ds.dataset(base, filesystem=fs, format="parquet").count_rows()
        record = {"version": version, "folder": version_folder(version), "rows": rows, **change.meta.to_dict()}
        write_json_atomically(folder / POINTER, record)
        if is_local(folder):
            link = folder / f".{CURRENT_LINK}.new"
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(version_folder(version), link)
            os.replace(link, folder / CURRENT_LINK)
        self._prune(folder, version)
        return {"location": object_uri(folder), "current": object_uri(target), "version": version, "rows": rows}

    def _prune(self, folder: Any, version: int) -> None:
        keep = {version_folder(v) for v in range(version - KEEP_VERSIONS + 1, version + 1)}
        for name in list_names(folder):
            if name.startswith("v") and name[1:].isdigit() and name not in keep:
                remove_tree(folder / name)


def current_folder(root: Any, name: str) -> Any:
    """The folder holding a view's current Parquet version (for readers), or None when there is none."""
    pointer = read_json(root / name / POINTER)
    return None if pointer is None else root / name / str(pointer["folder"])
