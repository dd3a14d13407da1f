"""Persistent token stores. In Airflow every task is a new process: rotated refresh tokens must live
somewhere that outlives it.

* :class:`FileTokenStore`: a JSON file (mode 0600, atomic replace) with a lock file, so processes on one
  machine never refresh at the same time and never burn a refresh token.

The Airflow Variable store lives with the Airflow adapters
(:mod:`airflow_provider_smart.hooks.token_stores`): this package imports nothing from Airflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_smart.auth.tokens import StoredToken
from airflow_provider_smart.exceptions import TokenStoreError


class FileTokenStore:
    """Tokens in one JSON file; safe for threads and for processes sharing the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._local = threading.local()
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def lock(self, key: str = "") -> Iterator[None]:
        """An exclusive lock across processes (flock) and threads; re-entrant within a thread."""
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._local.fd = fd
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
                if self._local.depth == 0:
                    fcntl.flock(self._local.fd, fcntl.LOCK_UN)
                    os.close(self._local.fd)

    def _read(self) -> dict[str, Any]:
        """The file's tokens; a file that cannot be read or parsed is an error naming it, never ``{}``.

        (Treating it as empty would let the next write replace it, losing any refresh token it held.)
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise TokenStoreError(
                f"Token store file {self.path} cannot be read ({reason}); check its permissions.",
                store=str(self.path),
            ) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            position = f"line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "?"
            raise TokenStoreError(
                f"Token store file {self.path} is not valid JSON ({position}). Restore it from a backup, or "
                "move it aside and re-authorise (airflow-smart authorize) if it held a refresh token.",
                store=str(self.path),
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise TokenStoreError(
                f"Token store file {self.path} is not a JSON object of tokens (found {type(data).__name__}); "
                "move it aside and re-authorise if it held a refresh token.",
                store=str(self.path),
            )
        return data

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)  # mkstemp already creates 0600; be explicit, the file holds secrets
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> StoredToken | None:
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return StoredToken.from_dict(entry)
        except TypeError:
            raise TokenStoreError(
                f"Token store file {self.path}: the entry for {key!r} is not a token; move the file aside.",
                store=str(self.path),
            ) from None

    def set(self, key: str, token: StoredToken) -> None:
        with self.lock(key):
            data = self._read()
            data[key] = token.to_dict()
            self._write(data)

    def delete(self, key: str) -> None:
        with self.lock(key):
            data = self._read()
            if data.pop(key, None) is not None:
                self._write(data)

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"
