"""OpenID Connect ``id_token`` signing for the sandbox: one RS256 key, generated on first use."""

from __future__ import annotations

import threading
import time
from typing import Any

ID_TOKEN_ALG = "RS256"


class IdTokenSigner:
    """Signs ``id_token`` JWTs and publishes the public key as a JWK Set (``/auth/jwks``)."""

    def __init__(self, kid: str = "sandbox-id-token-1") -> None:
        self.kid = kid
        self._key: Any = None
        self._lock = threading.Lock()

    def _private_key(self) -> Any:
        with self._lock:
            if self._key is None:  # lazily: key generation and the crypto imports take a while
                from cryptography.hazmat.primitives.asymmetric import rsa

                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    def jwks(self) -> dict[str, Any]:
        from jwt.algorithms import RSAAlgorithm

        jwk = RSAAlgorithm.to_jwk(self._private_key().public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": ID_TOKEN_ALG, "use": "sig"}]}

    def sign(
        self, *, issuer: str, subject: str, audience: str, lifetime: int, extra: dict[str, Any] | None = None
    ) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + lifetime, **(extra or {})}
        return jwt.encode(claims, self._private_key(), algorithm=ID_TOKEN_ALG, headers={"kid": self.kid})
