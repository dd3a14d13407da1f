from __future__ import annotations

import jwt
import pytest

from airflow_provider_smart.auth.keys import (
    choose_alg,
    generate_private_key,
    load_private_key,
    private_key_to_pem,
    public_jwks,
)
from airflow_provider_smart.exceptions import SmartConfigError


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_generated_key_round_trips_and_verifies_against_its_jwk(alg: str) -> None:
    key = load_private_key(private_key_to_pem(generate_private_key(alg)))
    jwk = public_jwks(key, kid="k", alg=alg)["keys"][0]
    assert jwk["kid"] == "k" and jwk["alg"] == alg and "d" not in jwk
    token = jwt.encode({"a": 1}, key, algorithm=alg)
    assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg]) == {"a": 1}


def test_choose_alg_prefers_smart_required_algs() -> None:
    ec = generate_private_key("ES384")
    rsa = generate_private_key("RS384")
    assert choose_alg(ec) == "ES384"
    assert choose_alg(rsa) == "RS384"
    assert choose_alg(rsa, None, ["RS256", "ES384"]) == "RS256"
    assert choose_alg(rsa, None, ["RS384", "RS256"]) == "RS384"
    with pytest.raises(SmartConfigError, match="EC"):
        choose_alg(ec, "RS384")
