"""A client's JWK Set as a document you host: publish the public keys, add the next key, retire the old one.

Epic (and the SMART spec, which "strongly prefers" it) wants backend clients to register a JWK Set URL
rather than upload a key. The server fetches that URL (the ``jku``) to verify our assertions, caching
it for a while. So a key is rotated by overlap, never by swap:

1. :func:`add_keys` the next key beside the current one and publish: the server can verify either;
2. switch the connection to the next key (:func:`check_published` first: it must be in the document);
3. after a grace period (the server's JWKS cache, the longest task still holding the old connection),
   :func:`retire_keys` the old kid and publish again.

The document is read and written through any pathlib-like destination (a local path, Airflow's
``ObjectStoragePath`` for ``s3://`` ...), replaced atomically. Only public members ever go in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from airflow_provider_smart.auth.keys import load_private_key, public_jwk
from airflow_provider_smart.exceptions import SmartConfigError

PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def key_jwk(private_key_pem: str, kid: str, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of a PEM private key, with ``kid``, ``alg``, ``use: sig``, ``key_ops: [verify]``."""
    if not kid:
        raise SmartConfigError("A key published in a JWK Set needs its kid.", field="kid")
    return public_jwk(load_private_key(private_key_pem), kid=kid, alg=alg)


def _checked(document: Any, where: str) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SmartConfigError(f"{where} is not a JWK Set (a JSON object with a 'keys' list).")
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not jwk.get("kid") or jwk.get("kty") not in ("RSA", "EC"):
            raise SmartConfigError(f"{where} holds a key without a kid, or not an RSA or EC key.")
        if PRIVATE_MEMBERS & set(jwk):
            raise SmartConfigError(f"{where} holds private key material (kid {jwk['kid']!r}); never publish it.")
    return document


def read_jwks(path: Any) -> dict[str, Any] | None:
    """The JWK Set at ``path``, or None when there is none yet."""
    if not path.exists():
        return None
    with path.open("rb") as handle:
        raw = handle.read()
    try:
        document = json.loads(raw)
    except ValueError:
        raise SmartConfigError(f"{path} exists but is not JSON; fix or remove it before publishing.") from None
    return _checked(document, str(path))


def write_jwks(path: Any, document: dict[str, Any]) -> None:
    """Replace the document at ``path`` atomically (readers see the old set or the new one)."""
    from airflow_provider_smart.bulk.storage import replace

    _checked(document, "The JWK Set to publish")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    partial = parent / f".{path.name}.part"
    with partial.open("wb") as handle:
        handle.write((json.dumps(document, indent=2) + "\n").encode())
    replace(partial, path)


def add_keys(document: dict[str, Any] | None, keys: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``document`` with ``keys`` added; a key with a kid already there replaces it. Nothing is dropped."""
    current = list((document or {}).get("keys") or [])
    for jwk in keys:
        public = {k: v for k, v in jwk.items() if k not in PRIVATE_MEMBERS}
        current = [k for k in current if k.get("kid") != public["kid"]] + [public]
    return _checked({**(document or {}), "keys": current}, "The JWK Set")


def retire_keys(document: dict[str, Any], kids: Iterable[str], *, in_use: str | None = None) -> dict[str, Any]:
    """``document`` without the keys ``kids``; refuses to retire ``in_use`` (the kid the connection signs
    with) or a kid that is not there, and to leave the set empty."""
    kids = set(kids)
    if in_use in kids:
        raise SmartConfigError(
            f"kid {in_use!r} is the key the connection signs with: switch the connection to the new key first."
        )
    present = {k.get("kid") for k in document.get("keys") or []}
    if missing := sorted(kids - present):
        listed = ", ".join(str(k) for k in sorted(present, key=str))
        raise SmartConfigError(f"kid(s) {', '.join(missing)} are not in the published JWK Set (it has {listed}).")
    keys = [k for k in document["keys"] if k.get("kid") not in kids]
    if not keys:
        raise SmartConfigError("Retiring these keys would leave the JWK Set empty: publish the next key first.")
    return {**document, "keys": keys}


def check_published(document: dict[str, Any], jwk: dict[str, Any], where: str) -> None:
    """Raise unless the published ``document`` holds ``jwk`` (same kid and the same public key)."""
    match = next((k for k in document.get("keys") or [] if k.get("kid") == jwk["kid"]), None)
    if match is None:
        raise SmartConfigError(
            f"kid {jwk['kid']!r} is not in the JWK Set at {where}: publish it (airflow-smart jwks rotate / publish) "
            "and let the server see it before switching the connection."
        )
    public = ("kty", "crv", "x", "y", "n", "e")
    if any(match.get(m) != jwk.get(m) for m in public):
        raise SmartConfigError(f"kid {jwk['kid']!r} at {where} is another key than this private key's public half.")


def fetch_jwks(url: str, *, verify: bool | str = True, timeout: float = 10.0) -> dict[str, Any]:
    """GET the JWK Set at ``url`` the way an authorization server does: no credentials, no redirects."""
    import requests

    from airflow_provider_smart.bulk.urls import redact_url

    try:
        response = requests.get(
            url, headers={"Accept": "application/json"}, timeout=timeout, verify=verify, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise SmartConfigError(f"The JWK Set URL {redact_url(url)} cannot be reached ({type(exc).__name__}).") from None
    if response.status_code != 200:
        raise SmartConfigError(
            f"The JWK Set URL {redact_url(url)} answered HTTP {response.status_code}; a server fetching it would "
            "fail every token request."
        )
    try:
        document = response.json()
    except ValueError:
        raise SmartConfigError(f"The JWK Set URL {redact_url(url)} did not answer JSON.") from None
    return _checked(document, f"The document at {redact_url(url)}")
