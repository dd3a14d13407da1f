"""The disk fills at any single write while an export lands: whatever happens, no unlisted or empty file
is ever left beside a ``manifest.json``, and the next try lands the export cleanly."""

from __future__ import annotations

import contextlib
import errno
import json
import pathlib
from typing import Any

import pytest

from airflow_provider_smart.bulk import ExportRequest, ExportWorkflow

REQUEST = ExportRequest(resource_types=["Patient"])


def ndjson(tag: str, n: int) -> bytes:
    return b"".join(json.dumps({"resourceType": "Patient", "id": f"{tag}-{i}"}).encode() + b"\n" for i in range(n))


class FullDisk:
    """Makes the ``fail_at``-th file opened for writing fail its first write with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str = "write") -> None:
        self.opened = 0
        self.where = where
        self.fail_at: int | None = None
        real_open = pathlib.Path.open
        disk = self

        class Full:
            def __init__(self, handle: Any) -> None:
                self.handle = handle

            def write(self, data: Any) -> int:
                if disk.where == "write":
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self.handle.write(data[: len(data) // 2])  # buffered: the error comes at close

            def close(self) -> None:
                self.handle.close()
                if disk.where == "close":
                    raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name: str) -> Any:
                return getattr(self.handle, name)

            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.close()

        def open_(path: pathlib.Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_open(path, mode, *args, **kwargs)
            if any(m in mode for m in "wax"):
                disk.opened += 1
                if disk.opened == disk.fail_at:
                    return Full(handle)
            return handle

        monkeypatch.setattr(pathlib.Path, "open", open_)


def land(client: Any, dest: Any) -> None:
    workflow = ExportWorkflow(client, dest, REQUEST.to_dict(), run_id="run-1", delete_on_success=False)
    started = workflow.start(REQUEST)
    workflow.land(started.status_url, client.poll(started.status_url).manifest)


def unlisted_beside_manifest(dest: pathlib.Path) -> list[str]:
    """Files beside a manifest.json that it does not list, and empty files; [] without a manifest."""
    manifest = dest / "manifest.json"
    if not manifest.exists():
        return []
    summary = json.loads(manifest.read_text())["summary"]
    listed = {e["path"] for kind in ("output", "deleted", "error") for e in summary[kind]} | {str(manifest)}
    found = [p for p in dest.rglob("*") if p.is_file() or p.is_symlink()]
    return sorted(str(p) for p in found if str(p) not in listed or p.stat().st_size == 0)


@pytest.mark.parametrize("where", ["write", "close"])
def test_a_full_disk_at_any_write_leaves_nothing_unlisted_and_the_retry_lands(
    hostile, plain_client, tmp_path, monkeypatch, where: str
) -> None:
    """A guard for local disks: every write there was already safe against ENOSPC."""
    hostile.files.update(a1=hostile.Body(ndjson("a", 5)), a2=hostile.Body(ndjson("b", 3)))
    disk = FullDisk(monkeypatch, where)
    land(plain_client(hostile), tmp_path / "count")  # how many files one landing writes
    writes = disk.opened
    assert writes >= 6  # lease, state, two files, two records, manifest...
    for fail_at in range(1, writes + 1):
        dest = tmp_path / str(fail_at)
        disk.opened, disk.fail_at = 0, fail_at
        with contextlib.suppress(Exception):  # the try may fail: what it leaves is what is checked
            land(plain_client(hostile), dest)
        assert unlisted_beside_manifest(dest) == [], f"disk full at write {fail_at}"
        disk.fail_at = None
        land(plain_client(hostile), dest)  # the retry
        assert unlisted_beside_manifest(dest) == [], f"after the retry of a full disk at write {fail_at}"
        assert (dest / "Patient.1.ndjson").read_bytes() == ndjson("a", 5)
        assert sorted(p.name for p in dest.iterdir()) == ["Patient.1.ndjson", "Patient.2.ndjson", "manifest.json"]


def test_a_try_that_died_right_after_writing_manifest_json_is_tidied_by_the_next(
    hostile, plain_client, tmp_path, monkeypatch
) -> None:
    from airflow_provider_smart.bulk.storage import LandedFiles

    hostile.files.update(a1=hostile.Body(ndjson("a", 5)), a2=hostile.Body(ndjson("b", 3)))
    real_clear = LandedFiles.clear

    def died(self: Any) -> None:
        raise KeyboardInterrupt  # the worker was killed between manifest.json and the cleanup

    monkeypatch.setattr(LandedFiles, "clear", died)
    with pytest.raises(KeyboardInterrupt):
        land(plain_client(hostile), tmp_path)
    assert (tmp_path / "manifest.json").exists() and (tmp_path / ".smart-files").exists()
    (tmp_path / ".Patient.3.ndjson.deadhost-1-0000.part").write_bytes(b"")  # and a dead zombie's leftover
    monkeypatch.setattr(LandedFiles, "clear", real_clear)
    workflow = ExportWorkflow(plain_client(hostile), tmp_path, REQUEST.to_dict(), run_id="run-1")
    assert workflow.completed_summary() is not None  # the retry finds the export landed...
    assert unlisted_beside_manifest(tmp_path) == []  # ...and leaves nothing beside its manifest
