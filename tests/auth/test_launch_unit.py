"""App Launch pieces that need no server: PKCE, state, authorize URLs, token stores."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_smart.auth import (
    DiscoveryError,
    FileTokenStore,
    SmartConfiguration,
    StoredToken,
    build_authorize_post,
    build_authorize_url,
    code_challenge_s256,
    generate_code_verifier,
    generate_state,
)

BASE = "https://ehr.example.org/fhir/r4"
CONFIG = SmartConfiguration(
    token_endpoint="https://ehr.example.org/oauth/token",
    authorization_endpoint="https://ehr.example.org/oauth/authorize",
    fhir_base_url=BASE,
    capabilities=["launch-standalone", "launch-ehr", "authorize-post"],
)


def test_rfc7636_appendix_b_vector() -> None:
    assert (
        code_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_code_verifier_shape_and_uniqueness() -> None:
    verifiers = {generate_code_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for v in verifiers:
        assert 43 <= len(v) <= 128
        assert re.fullmatch(r"[A-Za-z0-9\-._~]+", v)
    assert len(generate_code_verifier(128)) == 128
    with pytest.raises(ValueError):
        generate_code_verifier(42)


def test_state_has_at_least_122_bits() -> None:
    state = generate_state()
    assert len(state) * 6 >= 122
    assert state != generate_state()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_standalone_authorize_url() -> None:
    url = build_authorize_url(
        smart_config=CONFIG,
        client_id="app",
        redirect_uri="http://127.0.0.1:8765/callback",
        scope="launch/patient openid fhirUser offline_access patient/*.rs",
        state="st",
        code_challenge="ch",
    )
    assert url.startswith("https://ehr.example.org/oauth/authorize?")
    assert query(url) == {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "scope": "launch/patient openid fhirUser offline_access patient/*.rs",
        "state": "st",
        "aud": BASE,
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


def test_ehr_launch_authorize_url_carries_launch() -> None:
    url = build_authorize_url(
        smart_config=CONFIG,
        client_id="app",
        redirect_uri="https://app/cb",
        scope="launch openid",
        state="s",
        code_challenge="c",
        launch="xyz123",
    )
    assert query(url)["launch"] == "xyz123"
    assert query(url)["aud"] == BASE


def test_authorize_post_form() -> None:
    url, form = build_authorize_post(
        smart_config=CONFIG,
        client_id="app",
        redirect_uri="https://app/cb",
        scope="x " * 500,
        state="s",
        code_challenge="c",
    )
    assert url == CONFIG.authorization_endpoint and form["aud"] == BASE and form["code_challenge_method"] == "S256"


def test_backend_only_server_has_no_authorize_url() -> None:
    backend_only = SmartConfiguration(token_endpoint="https://x/token", fhir_base_url=BASE)
    with pytest.raises(DiscoveryError, match="no authorization_endpoint"):
        build_authorize_url(
            smart_config=backend_only,
            client_id="a",
            redirect_uri="https://a/cb",
            scope="s",
            state="s",
            code_challenge="c",
        )
    with pytest.raises(DiscoveryError, match="authorize-post"):
        build_authorize_post(
            smart_config=backend_only, client_id="a", redirect_uri="r", scope="s", state="s", code_challenge="c"
        )


def test_file_store_is_private_atomic_and_shared_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    store.set("k", StoredToken(access_token="a1", refresh_token="r1", expires_at=1.0))
    assert path.stat().st_mode & 0o777 == 0o600
    script = textwrap.dedent(
        f"""
        from airflow_provider_smart.auth.stores import FileTokenStore
        from airflow_provider_smart.auth.tokens import StoredToken
        store = FileTokenStore({str(path)!r})
        token = store.get("k")
        assert token.refresh_token == "r1", token
        store.set("k", StoredToken(access_token="a2", refresh_token="r2", expires_at=2.0))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert store.get("k").refresh_token == "r2"
    assert not list(tmp_path.glob(".tokens.json.*"))  # no temporary file left behind
    store.delete("k")
    assert store.get("k") is None
