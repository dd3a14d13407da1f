"""URL helpers of the Bulk Data client (origins and redaction live in :mod:`airflow_provider_smart.origins`)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from airflow_provider_smart.origins import OriginPolicy, is_http_url, origin_of, redact_url

__all__ = ["OriginPolicy", "file_identity", "is_http_url", "origin_of", "redact_url", "resolve"]

# Query parameters that sign a URL or bound its life, not name the file: AWS S3 (SigV2 and SigV4),
# CloudFront, Google Cloud Storage, Azure SAS, and the bare Expires/Signature pairs servers such as
# Medplum hand out anew on every status poll.
_SIGNING_PARAM = re.compile(
    r"(x-amz-.*|awsaccesskeyid|signature|expires|key-pair-id|policy|x-goog-.*|googleaccessid"
    r"|sig|se|st|sp|sv|sr|ss|srt|spr|skoid|sktid|skt|ske|sks|skv|sdd|token|nonce)",
    re.IGNORECASE,
)


def resolve(base: str, url: str) -> str:
    """``url`` made absolute against ``base`` (servers such as IBM's sent relative manifest URLs)."""
    return urljoin(base, url)


def file_identity(url: str) -> str:
    """``url`` without the query parameters that only sign it or bound its life (``Expires``,
    ``Signature``, ``X-Amz-*``, SAS ``sig``/``se``...): what a file is, however often it is re-signed.

    Two reads of one manifest may hand out differently signed URLs for the same file (Medplum re-signs
    them on every status poll); a file's identity must not change with them, or a retry downloads
    everything again.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.query:
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SIGNING_PARAM.fullmatch(k)]
    return urlunsplit(parts._replace(query=urlencode(kept), fragment=""))
