"""Structured errors of the SMART / Bulk Data client.

Every error carries a ``kind`` to match on and a ``context`` dict with the facts a caller needs
(HTTP status, RFC 6749 ``error`` code, the URL that failed...). ``to_dict()`` is JSON-safe and
redacts anything that looks like a secret, so it can go to a log line or an alerting system.

These classes do not subclass ``AirflowException``: the library works without Airflow, and
Airflow fails a task on any exception anyway.
"""

from __future__ import annotations

from typing import Any

SENSITIVE_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "private_key",
        "client_assertion",
        "assertion",
        "authorization",
        "password",
        "token",
        "code",
        "code_verifier",
    }
)
REDACTED = "***"


def redact(value: Any) -> Any:
    """Return a JSON-safe copy of ``value`` with secret-named keys replaced by ``***``."""
    if isinstance(value, dict):
        return {str(k): (REDACTED if str(k).lower() in SENSITIVE_KEYS and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class SmartError(Exception):
    """Base class of every error this package raises on purpose."""

    kind = "smart"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "context": redact(self.context)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class SmartConfigError(SmartError, ValueError):
    """A connection or argument is missing or malformed; the message names the field to fix."""

    kind = "smart.config"


class DiscoveryError(SmartError):
    """The server's SMART configuration could not be fetched or lacks what we need."""

    kind = "smart.discovery"


class SmartAuthError(SmartError):
    """The token endpoint refused us, or answered something we cannot use.

    ``context["error"]`` is the RFC 6749 error code (``invalid_client``, ``invalid_grant``,
    ``invalid_scope``...), or ``invalid_response`` when the answer was not a valid token response.
    """

    kind = "smart.auth"

    def __init__(
        self,
        message: str,
        *,
        error: str,
        error_description: str | None = None,
        status: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, error=error, error_description=error_description, status=status, **context)

    @property
    def error(self) -> str:
        return str(self.context["error"])

    @property
    def error_description(self) -> str | None:
        return self.context.get("error_description")

    @property
    def status(self) -> int | None:
        return self.context.get("status")


class SmartTransportError(SmartError):
    """The server could not be reached, or the connection broke (DNS, refused, TLS, timeout).

    ``context["url"]`` names the endpoint. Worth retrying later: nothing says the request was wrong.
    """

    kind = "smart.transport"


class TokenStoreError(SmartError):
    """A token store could not be read or written; ``context["store"]`` names it (a file, a Variable...).

    When a rotated refresh token could not be saved, ``context["unsaved"]`` is True: the running process
    holds the only valid copy, and the message says what to do.
    """

    kind = "smart.token_store"


class BulkExportError(SmartError):
    """A Bulk Data kick-off, status, manifest or file failed for good."""

    kind = "smart.bulk_export"

    @property
    def status(self) -> int | None:
        return self.context.get("status")


class ExportTimeoutError(BulkExportError):
    """The export did not complete within the caller's timeout; it may still be running on the server.

    ``context["status_url"]`` resumes it (``poll``/``wait``) or cancels it.
    """

    kind = "smart.bulk_export.timeout"


class ExportThrottledError(BulkExportError):
    """The server asked us to wait longer than this process may wait in place.

    ``context["retry_after"]`` is the wait in seconds and ``context["not_before"]`` the epoch time
    (wall clock) of the next allowed request: come back then, e.g. from a deferred Airflow task.
    """

    kind = "smart.bulk_export.throttled"

    @property
    def not_before(self) -> float:
        return float(self.context.get("not_before") or 0.0)


class ExportWindowError(BulkExportError):
    """The server refused the kick-off because the same export ran too recently (Epic's request window).

    ``context["not_before"]`` is the epoch time after which it may run again at the latest (None when
    the window is unknown).
    """

    kind = "smart.bulk_export.window"

    @property
    def not_before(self) -> float | None:
        value = self.context.get("not_before")
        return float(value) if value is not None else None


class BulkDownloadError(BulkExportError):
    """An output file could not be fetched, or failed its checks; ``context["url"]`` names it.

    ``report`` (a ``DownloadReport``) holds what did land when files were downloaded together (else None).
    """

    kind = "smart.bulk_export.download"

    def __init__(self, message: str, *, report: Any = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.report = report


class NdjsonCheckError(BulkExportError):
    """A file's content is not what the manifest announced (a wrong resourceType, a line that is not JSON)."""

    kind = "smart.bulk_export.content"


class NotNdjsonError(NdjsonCheckError):
    """A 200 answer whose body is not NDJSON at all (an HTML page, a JSON array...): never saved."""

    kind = "smart.bulk_export.content.not_ndjson"


class TruncatedFileError(NdjsonCheckError):
    """A body that ended before its last line did (cut mid-line, or a gzip stream without its trailer).

    Transient: the downloader retries the file.
    """

    kind = "smart.bulk_export.content.truncated"


class TablesError(SmartError):
    """Landed export files could not be turned into tables: no completed export where one was named, a table
    whose history does not fit the export (a skipped incremental run), an output that refused the write.

    The tables keep their previous version; the message says what to do.
    """

    kind = "smart.tables"


class ViewDefinitionError(SmartError, ValueError):
    """A SQL on FHIR ViewDefinition the spec says must be rejected, or one this engine cannot run.

    ``context["path"]`` is the JSON path of the offending part (``select[0].column[1].path``), and the
    message says what is wrong with it.
    """

    kind = "smart.view.definition"

    @property
    def path(self) -> str:
        return str(self.context.get("path") or "$")


class ViewRunError(SmartError):
    """A view could not be run over the data: a resource broke a rule only the data can show (a column
    without ``collection: true`` met several values, a ``where`` that gave a non-boolean), or DuckDB
    failed reading the files. ``context["view"]`` names the view.
    """

    kind = "smart.view.run"


_ERROR_CLASSES: tuple[type[SmartError], ...] = (
    SmartError,
    SmartConfigError,
    DiscoveryError,
    SmartAuthError,
    SmartTransportError,
    TokenStoreError,
    BulkExportError,
    ExportTimeoutError,
    ExportThrottledError,
    ExportWindowError,
    BulkDownloadError,
    NdjsonCheckError,
    NotNdjsonError,
    TruncatedFileError,
    TablesError,
    ViewDefinitionError,
    ViewRunError,
)


def error_from_dict(data: dict[str, Any]) -> SmartError:
    """Rebuild an error from :meth:`SmartError.to_dict` (e.g. a trigger's event), keeping its class.

    The context was redacted on the way out, so secrets do not come back; an unknown kind gives the
    nearest known ancestor (``smart.bulk_export.x`` → :class:`BulkExportError`).
    """
    kind = str(data.get("kind") or "smart")
    by_kind = {cls.kind: cls for cls in _ERROR_CLASSES}
    while kind not in by_kind and "." in kind:
        kind = kind.rsplit(".", 1)[0]
    cls = by_kind.get(kind, SmartError)
    error = cls.__new__(cls)
    SmartError.__init__(error, str(data.get("message") or ""), **dict(data.get("context") or {}))
    if isinstance(error, BulkDownloadError):
        error.report = None
    return error
