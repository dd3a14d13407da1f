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


class BulkDownloadError(BulkExportError):
    """An output file could not be fetched, or failed its checks; ``context["url"]`` names it."""

    kind = "smart.bulk_export.download"
