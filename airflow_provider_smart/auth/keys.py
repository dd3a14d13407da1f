"""Signing keys: load a PEM, pick the JOSE algorithm, generate a key pair and its public JWKS."""

from __future__ import annotations

import json
import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from airflow_provider_smart.exceptions import SmartConfigError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

RSA_ALGS = ("RS384", "RS256", "RS512", "PS384", "PS256", "PS512")
EC_ALGS_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# SMART says clients SHALL support RS384 and ES384; we prefer those, then what else PyJWT signs.
PREFERRED_ALGS = ("ES384", "RS384", "ES256", "RS256", "PS384", "ES512", "RS512", "PS256", "PS512")
SUPPORTED_ALGS = frozenset(PREFERRED_ALGS)


def load_private_key(key: str | bytes | PrivateKey, *, field: str = "private_key") -> PrivateKey:
    """Parse a PEM private key (PKCS#8, PKCS#1 or SEC1), or pass a key object through."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    if isinstance(key, str):
        key = key.strip().encode()
    key = repair_pem(key)
    if not key:
        raise SmartConfigError(f"{field} is empty: paste the PEM private key (-----BEGIN PRIVATE KEY-----...).")
    if b"-----BEGIN" not in key:
        raise SmartConfigError(
            f"{field} is not a PEM private key: it must start with '-----BEGIN PRIVATE KEY-----' "
            "(or RSA/EC PRIVATE KEY). If you pasted it into a single-line field, its line breaks were lost; "
            "use the multiline 'Private key' field or a Key file path.",
            field=field,
        )
    try:
        loaded = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        # The parser's message never echoes the key material.
        raise SmartConfigError(
            f"{field} could not be parsed as an unencrypted PEM private key ({type(exc).__name__}). "
            "Check that it is complete and not password-protected.",
            field=field,
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SmartConfigError(f"{field} must be an RSA or EC key, not {type(loaded).__name__}.", field=field)
    return loaded


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def repair_pem(key: bytes) -> bytes:
    """Undo what single-line fields do to a PEM: literal ``\\n`` escapes, or line breaks turned to spaces.

    Only the base64 body is rewrapped (64 columns); a key that is not PEM-shaped is returned as is.
    """
    match = _PEM.search(key)
    if match is None or (b"\\" not in key and b"\n" in match.group(2).strip()):
        return key  # not PEM, or already has real line breaks and no escapes
    label, body = match.group(1), match.group(2)
    body = body.replace(b"\\r", b"").replace(b"\\n", b"")
    if b":" in body:  # an encrypted legacy PEM (Proc-Type:...) cannot be rebuilt safely; leave it
        return key
    body = re.sub(rb"\s+", b"", body)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN " + label + b"-----\n" + b"\n".join(lines) + b"\n-----END " + label + b"-----\n"


def algs_for_key(key: PrivateKey) -> tuple[str, ...]:
    """The JOSE algorithms this key can sign with, best first."""
    if isinstance(key, rsa.RSAPrivateKey):
        return RSA_ALGS
    alg = EC_ALGS_BY_CURVE.get(key.curve.name)
    if alg is None:
        raise SmartConfigError(
            f"private_key: its EC curve {key.curve.name} is not usable for JWT signing (use P-384 or P-256).",
            field="private_key",
        )
    return (alg,)


def choose_alg(key: PrivateKey, requested: str | None = None, server_algs: list[str] | None = None) -> str:
    """Validate ``requested`` against the key, or pick the best alg the key and the server share."""
    usable = algs_for_key(key)
    kind = "RSA" if isinstance(key, rsa.RSAPrivateKey) else f"EC ({key.curve.name})"
    if requested:
        requested = requested.upper()
        if requested not in SUPPORTED_ALGS:
            raise SmartConfigError(
                f"alg {requested!r} is not supported; use one of {', '.join(PREFERRED_ALGS)}.", field="alg"
            )
        if requested not in usable:
            raise SmartConfigError(
                f"alg {requested} does not match the private key, which is {kind}; "
                f"this key signs with {', '.join(usable)}.",
                field="alg",
            )
        return requested
    if server_algs:
        for alg in usable:
            if alg in server_algs:
                return alg
    return usable[0] if not isinstance(key, rsa.RSAPrivateKey) else "RS384"


def generate_private_key(alg: str = "ES384") -> PrivateKey:
    alg = alg.upper()
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    curves = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
    if alg not in curves:
        raise SmartConfigError(f"Cannot generate a key for alg {alg!r}; use ES384 or RS384.", field="alg")
    return ec.generate_private_key(curves[alg])


def private_key_to_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_jwk(key: PrivateKey, *, kid: str, alg: str | None = None) -> dict[str, Any]:
    """The public half of ``key`` as a JWK with ``kid``, ``alg`` and ``key_ops: ["verify"]``."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if isinstance(key, rsa.RSAPrivateKey):
        text = RSAAlgorithm.to_jwk(key.public_key())
    else:
        text = ECAlgorithm.to_jwk(key.public_key())
    jwk: dict[str, Any] = json.loads(text)
    jwk.update({"kid": kid, "alg": alg or choose_alg(key), "use": "sig", "key_ops": ["verify"]})
    return jwk


def public_jwks(key: PrivateKey, *, kid: str, alg: str | None = None) -> dict[str, Any]:
    return {"keys": [public_jwk(key, kid=kid, alg=alg)]}
