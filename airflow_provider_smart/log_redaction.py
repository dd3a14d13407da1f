"""Secrets out of third-party log lines, filtered at the logger that emits them.

urllib3 logs every request line at DEBUG (``"GET /file?X-Amz-Signature=... HTTP/1.1" 200``), every
redirect at INFO and every retry with its URL; the sandbox's access log does the same. A pre-signed
URL's query is a credential, and so is a token some servers take in the query (``access_token=``). Our
own log lines redact URLs where they are written; these loggers are not ours, so a filter on each of
them rewrites the record before any handler (Airflow's task log, a DEBUG console) sees it.
"""

from __future__ import annotations

import logging
import re

# A query string (up to whitespace or a quote): dropped whole, as redact_url() drops it.
_QUERY = re.compile(r"\?[^\s\"'<>]+")
# Credentials after an auth scheme, as in an Authorization header echoed in a message.
_AUTH = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{4,}")
# ``user:password@`` in a URL.
_USERINFO = re.compile(r"(?<=//)[^/\s@]+@")
_TOKEN_FIELD = re.compile(r"(?i)\b(access_token|refresh_token|id_token|client_secret|client_assertion)=[^&\s\"']+")

# The loggers of the HTTP stack that print URLs: urllib3's pool (request lines at DEBUG), pool manager
# (redirects), retry (URLs being retried), connection and response; requests' own.
THIRD_PARTY_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.util.retry",
    "urllib3.connection",
    "urllib3.response",
    "requests",
)


def redact_text(text: str) -> str:
    """``text`` with query strings, credentials after ``Bearer``/``Basic`` and URL passwords removed."""
    text = _TOKEN_FIELD.sub(lambda m: f"{m.group(1)}=***", text)
    text = _QUERY.sub("?...", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _USERINFO.sub("***@", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact_text` (its arguments are merged in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's own error reporting
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()


def install(names: tuple[str, ...] = THIRD_PARTY_LOGGERS) -> None:
    """Add the redacting filter to each named logger (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
