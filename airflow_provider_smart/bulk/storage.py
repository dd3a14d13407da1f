"""Destinations: a local directory or any pathlib-like object (Airflow's ``ObjectStoragePath``).

Only ``/``, ``open``, ``exists``, ``mkdir``, ``replace``/``rename``, ``unlink`` and ``stat`` are used, so
anything that offers them works. Turning a URI such as ``s3://conn@bucket/x`` into such an object is the
Airflow adapter's job; this module never imports Airflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_smart.bulk.urls import file_identity
from airflow_provider_smart.exceptions import BulkExportError

try:
    import fcntl
except ImportError:  # Windows: no flock; the lease is written and read back as on object stores
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("airflow_provider_smart.bulk")


def as_destination(destination: Any) -> Any:
    """A ``Path`` for a plain path or a ``file:`` URI; a pathlib-like object is used as it is."""
    if isinstance(destination, str):
        if destination[:5].lower() == "file:":
            return _file_uri_path(destination)
        if "://" in destination:
            raise BulkExportError(
                f"destination {destination!r} is a URI: pass an ObjectStoragePath (or another pathlib-like "
                "object) for object storage, or a local directory path."
            )
        return Path(destination).expanduser()
    if hasattr(destination, "open") and hasattr(destination, "__truediv__"):
        return destination
    return Path(os.fspath(destination))


def is_local_path(path: Any) -> bool:
    """A path on this machine's file system, where ``os.open``, fsync and ``O_EXCL`` apply.

    Not every ``pathlib.Path`` is one: under universal-pathlib 0.2 (Airflow 3.1 and older) Airflow's
    ``ObjectStoragePath`` subclasses ``pathlib.Path`` even for ``s3://``. Such classes have a file system
    (``fs``); it is looked up on the class, since reading it on the object would reach the connection.
    """
    return isinstance(path, Path) and not hasattr(type(path), "fs")


def _file_uri_path(uri: str) -> Path:
    """The local directory a ``file:`` URI names (RFC 8089): ``file:///abs``, ``file://localhost/abs`` or
    ``file:/abs``. Anything else (another host, a relative ``file:path``) is refused: it would otherwise
    land under the worker's working directory, where nobody would look for it."""
    parts = urlsplit(uri)
    host = (parts.netloc or "").lower()
    path = unquote(parts.path)
    if host not in ("", "localhost") or not path.startswith("/") or parts.query or parts.fragment:
        raise BulkExportError(
            f"destination {uri!r} is not a local file URI this worker can write: use file:///absolute/path "
            "(or file://localhost/absolute/path), or a plain absolute path. A relative file:path or another "
            "host's file://host/path would land somewhere nobody looks.",
            destination=uri,
        )
    return Path(path)


def attempt_id() -> str:
    """A name part unique to this attempt: two attempts (a zombie task and its retry) never share a file."""
    host = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. directories cannot be opened on Windows: nothing more we can do
    try:
        os.fsync(fd)
        if not directory and hasattr(os, "posix_fadvise"):
            # On disk now: its pages can leave the page cache (as rsync --drop-cache does), so an export
            # of hundreds of GB does not push the worker's other files out of memory, and the next file
            # reuses the memory just freed (see benchmarks/README.md, "Landed files leave the page cache").
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        log.debug("fsync of %s failed", path, exc_info=True)
    finally:
        os.close(fd)


def replace(part: Any, final: Any) -> None:
    """Move a finished temporary file to its final name (atomic and overwriting on local disks).

    On a local disk the file's data reach the disk before the rename, and the rename before we go
    on (fsync of the file, then of its directory): after a power cut, a file under its final name is
    whole. Object stores publish an object whole on close, so there is nothing to sync there.
    """
    if is_local_path(part):
        _fsync_path(part)
        part.replace(final)
        _fsync_path(final.parent, directory=True)
        return
    try:
        part.replace(final)
    except (AttributeError, NotImplementedError):
        part.rename(final)


def discard(path: Any) -> None:
    """Delete a temporary file; cleanup never hides the error that made it necessary."""
    try:
        path.unlink()  # not exists() first: that follows a symbolic link, and misses a dangling one
    except FileNotFoundError:
        pass
    except Exception:
        log.debug("Could not delete the partial file %s.", path, exc_info=True)


PARTIAL = re.compile(r"\..+\.part")  # what replace() renames from: never a file a reader should trust
KIND_DIRS = ("deleted", "error")


def sweep_partials(destination: Any) -> int:
    """Delete the temporary files (``.<name>.<attempt>.part``) a dead attempt left; returns how many.

    Call it only while holding the destination's lease: then no live attempt is writing any of them.
    Symbolic links are removed, never followed; nothing outside the destination is touched.
    """
    removed = 0
    for directory in (destination, *(destination / kind for kind in KIND_DIRS)):
        iterdir = getattr(directory, "iterdir", None)
        try:
            if iterdir is None or not directory.exists() or _is_link(directory):
                continue
            entries = list(iterdir())
        except (OSError, NotImplementedError):
            continue
        for path in entries:
            if PARTIAL.fullmatch(path.name):
                discard(path)
                removed += 1
    return removed


def _is_link(path: Any) -> bool:
    is_symlink = getattr(path, "is_symlink", None)
    try:
        return bool(is_symlink()) if callable(is_symlink) else False
    except OSError:
        return False


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


def write_json_atomically(path: Any, data: dict[str, Any], *, writer: str = "") -> None:
    """Readers see the old content or the new, never half of it. ``writer`` names the temporary file
    (``.<name>.<writer>.part``) where several attempts may write ``path`` at once (a lease)."""
    partial = path.parent / (f".{path.name}.{writer}.part" if writer else f".{path.name}.part")
    try:
        with partial.open("w") as handle:
            json.dump(data, handle, indent=2, default=str)
        replace(partial, path)
    except BaseException:
        discard(partial)  # a full disk leaves no half-written temporary file behind
        raise


def url_key(url: str) -> str:
    """A stable, non-secret name for a file URL (pre-signed URLs are capabilities: never in XCom).

    Made from the URL's :func:`~airflow_provider_smart.bulk.urls.file_identity`: a file keeps its key
    when the server signs its URL anew.
    """
    return hashlib.sha256(file_identity(url).encode()).hexdigest()[:24]


RECORDS_DIR = ".smart-files"


class LandedFiles:
    """Which export each landed file belongs to: one small record per file, written after its rename.

    A file counts as "already downloaded" only when its record names the same export (status URL)
    and the same file URL; anything else is another export's file and is replaced. One record per file
    (not one shared list) lets mapped download tasks write concurrently, on object stores too.
    """

    def __init__(self, destination: Any, status_url: str, transaction_time: str | None) -> None:
        self.destination = destination
        self.status_url = status_url
        self.transaction_time = transaction_time
        self.root = destination / RECORDS_DIR

    def _record_path(self, rel: str) -> Any:
        return self.root / (rel.replace("/", "__") + ".json")

    def lookup(self, rel: str) -> dict[str, Any] | None:
        try:
            record = read_json(self._record_path(rel))
        except (OSError, ValueError):
            return None
        return record

    def owns(self, rel: str, url: str) -> dict[str, Any] | None:
        """The record of ``rel`` if it holds ``url`` of this export, else None."""
        record = self.lookup(rel)
        if record and record.get("status_url") == self.status_url and record.get("key") == url_key(url):
            return record
        return None

    def record(
        self,
        rel: str,
        url: str,
        lines: int | None,
        size: int | None,
        count_mismatch: bool,
        *,
        unverified: str | None = None,
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "path": rel,
            "key": url_key(url),
            "status_url": self.status_url,
            "transaction_time": self.transaction_time,
            "lines": lines,
            "bytes": size,
            "count_mismatch": count_mismatch,
            "unverified": unverified,
        }
        with self._record_path(rel).open("w") as handle:
            json.dump(data, handle)

    def clear(self) -> None:
        """Delete every record (once ``manifest.json`` is written, it speaks for the files)."""
        iterdir = getattr(self.root, "iterdir", None)
        if not self.root.exists() or iterdir is None:
            return
        for path in list(iterdir()):
            discard(path)
        with contextlib.suppress(OSError, NotImplementedError, AttributeError):
            self.root.rmdir()

    def sweep_other_exports(self) -> int:
        """Delete the files (and records) another export left here; returns how many."""
        iterdir = getattr(self.root, "iterdir", None)
        if not self.root.exists() or iterdir is None:
            return 0
        removed = 0
        for path in list(iterdir()):
            try:
                record = read_json(path)
            except (OSError, ValueError):
                record = None
            if record and record.get("status_url") == self.status_url:
                continue
            rel = (record or {}).get("path")
            if isinstance(rel, str) and ".." not in rel and not rel.startswith("/"):
                discard(self.destination / rel)
                removed += 1
            discard(path)
        return removed


LEASE_FILE = ".smart-export.lease"
LEASE_STALE_AFTER = 300.0  # seconds without a heartbeat after which a lease may be taken over
LEASE_HEARTBEAT = 30.0


class DestinationLease:
    """An exclusive lease on a destination: owner, host, pid, heartbeat; a stale one is taken over.

    On a local disk every look at the lease and every change to it happens under an exclusive ``flock``
    of the destination directory (no extra file is left beside ``manifest.json``): read, decide, write is
    one step, so two attempts racing for a free or stale lease never both win. Object stores have no such
    primitive, so there the lease is written and read back (last writer wins a race, which the heartbeat
    narrows). The heartbeat and :meth:`renaming` check ownership first: an attempt frozen past its lease
    (a stopped VM, a long GC pause) that wakes up after another took over never writes over the new
    owner's lease or renames a file into its destination. Taking the lease also proves the destination
    writable, before anything is started on the server.
    """

    def __init__(self, destination: Any, owner: str, *, stale_after: float = LEASE_STALE_AFTER) -> None:
        self.destination = destination
        self.path = destination / LEASE_FILE
        self.owner = owner
        self.stale_after = stale_after
        self.me = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt_id()}
        self.lost: str | None = None  # why this attempt no longer holds the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()  # flock is per open file: threads of one attempt queue here

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across processes on a local disk (``flock`` of the directory); a no-op elsewhere."""
        if not is_local_path(self.destination) or fcntl is None:
            yield
            return
        with self._thread_lock:
            fd = os.open(self.destination, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _body(self) -> dict[str, Any]:
        return {**self.me, "heartbeat": time.time()}

    def _write(self) -> None:
        write_json_atomically(self.path, self._body(), writer=str(self.me["attempt"]))

    def _current(self) -> dict[str, Any] | None:
        try:
            return read_json(self.path)
        except (OSError, ValueError):
            return None

    def _held_by_other(self) -> dict[str, Any] | None:
        current = self._current()
        if not current or current.get("attempt") == self.me["attempt"]:
            return None
        try:
            age = time.time() - float(current.get("heartbeat") or 0)
        except (TypeError, ValueError):
            age = float("inf")
        if age > self.stale_after:
            log.warning(
                "Taking over the lease on %s from %s (host %s, pid %s): no heartbeat for %.0f s.",
                self.destination,
                current.get("owner"),
                current.get("host"),
                current.get("pid"),
                age,
            )
            return None
        return {**current, "age": age}

    def acquire(self) -> None:
        try:
            self.destination.mkdir(parents=True, exist_ok=True)
            with self._locked():
                other = self._held_by_other()
                if other is None:
                    self._write()
                    if not is_local_path(self.destination):
                        other = self._held_by_other()  # read back: did another attempt write at the same time?
        except OSError as exc:
            raise BulkExportError(
                f"Cannot write to the destination {self.destination} ({type(exc).__name__}: {exc}); nothing "
                "was started on the server. Fix its permissions or free space, or choose another destination.",
                destination=str(self.destination),
            ) from None
        if other is not None:
            raise BulkExportError(
                f"The destination {self.destination} is in use by {other.get('owner')} (host {other.get('host')}, "
                f"pid {other.get('pid')}, last heartbeat {other['age']:.0f} s ago). Two attempts must not write "
                f"one destination: wait for it to finish; if it is dead, its lease expires after "
                f"{self.stale_after:.0f} s without a heartbeat (or delete {LEASE_FILE}).",
                destination=str(self.destination),
            )
        self._start_heartbeat()

    def _still_mine(self) -> bool:
        current = self._current()
        if current is not None and current.get("attempt") == self.me["attempt"]:
            return True
        holder = (current or {}).get("owner") or "nobody"
        self.lost = f"the lease on {self.destination} was taken over by {holder} (this attempt stalled past it)"
        return False

    @contextlib.contextmanager
    def renaming(self) -> Iterator[None]:
        """Hold the lock while a file is renamed into the destination, after checking it is still ours."""
        with self._locked():
            if self.lost or not self._still_mine():
                raise BulkExportError(
                    f"Not writing into {self.destination}: {self.lost}. Another attempt owns it now; this one "
                    "stops without touching its files.",
                    destination=str(self.destination),
                )
            yield

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(LEASE_HEARTBEAT):
                with contextlib.suppress(Exception), self._locked():
                    if not self._still_mine():
                        log.error("Stopping: %s.", self.lost)
                        return
                    self._write()

        self._thread = threading.Thread(target=beat, daemon=True, name="smart-lease-heartbeat")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with self._locked():
                current = self._current()
                if current and current.get("attempt") == self.me["attempt"]:
                    self.path.unlink()
        except OSError:
            log.debug("Could not release the lease %s", self.path, exc_info=True)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()
