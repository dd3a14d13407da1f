"""FHIR ``OperationOutcome`` helpers: readable messages, and the transient-vs-fatal decision."""

from __future__ import annotations

import json
from typing import Any

# The R4 IssueType "transient" family: the Bulk Data spec says a server SHOULD use one of these on a
# status error that does not mean the export failed, so the client retries later.
TRANSIENT_ISSUE_CODES = frozenset(
    {"transient", "throttled", "timeout", "lock-error", "exception", "incomplete", "no-store"}
)
ERROR_SEVERITIES = frozenset({"fatal", "error"})
MAX_BODY_TEXT = 300


def parse_outcome(data: Any) -> dict[str, Any] | None:
    """``data`` (dict, str or bytes) as an OperationOutcome dict, or None if it is not one."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def issues(outcome: dict[str, Any] | None) -> list[dict[str, Any]]:
    found = (outcome or {}).get("issue")
    return [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []


def issue_text(issue: dict[str, Any]) -> str:
    """The human part of an issue: ``diagnostics``, else ``details.text``, else its code."""
    details = issue.get("details")
    text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
    return str(text or issue.get("code") or "no details")


def outcome_text(outcome: dict[str, Any] | None) -> str:
    parts = [f"{i.get('severity', '?')} {i.get('code', '?')}: {issue_text(i)}" for i in issues(outcome)]
    return "; ".join(parts)


def is_transient(outcome: dict[str, Any] | None) -> bool:
    """True only if there are issues and ALL of them carry a transient-family code."""
    found = issues(outcome)
    return bool(found) and all(str(i.get("code", "")).lower() in TRANSIENT_ISSUE_CODES for i in found)


def body_text(content: bytes) -> str:
    """A short, printable description of an error body: the OperationOutcome, or its first characters."""
    outcome = parse_outcome(content)
    if outcome is not None:
        return outcome_text(outcome) or "an OperationOutcome without issues"
    text = content.decode("utf-8", "replace").strip()
    if not text:
        return "empty body"
    return text[:MAX_BODY_TEXT] + ("..." if len(text) > MAX_BODY_TEXT else "")


def classify_issue(issue: dict[str, Any]) -> dict[str, str]:
    """The JSON-safe summary of one issue that reports carry."""
    return {
        "severity": str(issue.get("severity") or "unknown").lower(),
        "code": str(issue.get("code") or "unknown"),
        "diagnostics": issue_text(issue),
    }
