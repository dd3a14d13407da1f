"""App Launch over real HTTP: authorize (PKCE), code exchange, SmartClient refresh and rotation."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_smart.auth import (
    FileTokenStore,
    InMemoryTokenStore,
    SmartAuthError,
    SmartClient,
    build_authorize_url,
    code_challenge_s256,
    discover_smart_configuration,
    exchange_code,
    generate_code_verifier,
    generate_state,
    refresh_access_token,
)
from airflow_provider_smart.exceptions import TokenStoreError

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect's Location
LAUNCH_SCOPES = "launch launch/patient openid fhirUser offline_access user/*.rs patient/*.rs"


@pytest.fixture
def launch_sandbox(es384: Any) -> Any:
    from airflow_provider_smart.testing import SmartSandbox

    with SmartSandbox(patients=5, resources_per_patient=2) as sb:
        sb.register_client("public-app", public=True, scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT])
        sb.register_client("secret-app", client_secret="app-secret", scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT])
        sb.register_client("jwt-app", jwks=es384.jwks, scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT])
        yield sb


def authorize(sb: Any, client_id: str, scope: str, launch: str | None = None) -> tuple[Any, str, str]:
    """Drive the authorize endpoint like a browser; return (smart_config, code, verifier)."""
    config = discover_smart_configuration(sb.url)
    verifier, state = generate_code_verifier(), generate_state()
    url = build_authorize_url(
        smart_config=config,
        client_id=client_id,
        redirect_uri=REDIRECT,
        scope=scope,
        state=state,
        code_challenge=code_challenge_s256(verifier),
        launch=launch,
    )
    response = requests.get(url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    params = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    assert params["state"] == state
    return config, params["code"], verifier


def test_standalone_launch_public_client(launch_sandbox: Any) -> None:
    config, code, verifier = authorize(
        launch_sandbox, "public-app", "launch/patient openid fhirUser offline_access patient/*.rs"
    )
    tokens = exchange_code(
        smart_config=config, client_id="public-app", redirect_uri=REDIRECT, code=code, code_verifier=verifier
    )
    assert tokens.token_type.lower() == "bearer" and tokens.refresh_token
    assert tokens.patient == launch_sandbox.launch_context["patient"]
    assert tokens.fhir_user and tokens.fhir_user.endswith(launch_sandbox.launch_context["fhirUser"])
    assert tokens.access_token not in repr(tokens) and tokens.refresh_token not in repr(tokens)


def test_ehr_launch_carries_patient_and_encounter(launch_sandbox: Any) -> None:
    launch = launch_sandbox.create_ehr_launch(patient="pat-0002")
    config, code, verifier = authorize(launch_sandbox, "secret-app", "launch openid fhirUser user/*.rs", launch=launch)
    tokens = exchange_code(
        smart_config=config,
        client_id="secret-app",
        client_secret="app-secret",
        redirect_uri=REDIRECT,
        code=code,
        code_verifier=verifier,
    )
    assert tokens.patient == "pat-0002"
    assert tokens.encounter and tokens.fhir_context
    assert tokens.need_patient_banner is not None and tokens.smart_style_url


def test_asymmetric_client_code_exchange(launch_sandbox: Any, es384: Any) -> None:
    config, code, verifier = authorize(launch_sandbox, "jwt-app", "openid fhirUser offline_access user/*.rs")
    tokens = exchange_code(
        smart_config=config,
        client_id="jwt-app",
        private_key=es384.pem,
        kid=es384.kid,
        redirect_uri=REDIRECT,
        code=code,
        code_verifier=verifier,
    )
    assert tokens.refresh_token and "user/*.rs" in tokens.scope


def test_wrong_verifier_and_reused_code_are_invalid_grant(launch_sandbox: Any) -> None:
    config, code, verifier = authorize(launch_sandbox, "public-app", "offline_access user/*.rs")
    with pytest.raises(SmartAuthError) as err:
        exchange_code(
            smart_config=config,
            client_id="public-app",
            redirect_uri=REDIRECT,
            code=code,
            code_verifier=generate_code_verifier(),
        )
    assert err.value.error == "invalid_grant"
    exchange_code(smart_config=config, client_id="public-app", redirect_uri=REDIRECT, code=code, code_verifier=verifier)
    with pytest.raises(SmartAuthError) as err:
        exchange_code(
            smart_config=config, client_id="public-app", redirect_uri=REDIRECT, code=code, code_verifier=verifier
        )
    assert err.value.error == "invalid_grant"


def smart_client(sb: Any, **kwargs: Any) -> tuple[SmartClient, Any]:
    config, code, verifier = authorize(sb, "public-app", "launch/patient offline_access user/*.rs")
    tokens = exchange_code(
        smart_config=config, client_id="public-app", redirect_uri=REDIRECT, code=code, code_verifier=verifier
    )
    return SmartClient(smart_config=config, client_id="public-app", tokens=tokens, **kwargs), tokens


def test_smart_client_refreshes_before_expiry_and_keeps_rotated_token(launch_sandbox: Any) -> None:
    launch_sandbox.token_lifetime = 3
    client, tokens = smart_client(launch_sandbox, expiry_skew=2)
    assert client.patient_id == launch_sandbox.launch_context["patient"]
    session = requests.Session()
    session.auth = client
    assert session.get(f"{launch_sandbox.url}/Patient").status_code == 200
    assert launch_sandbox.refresh_requests == 0
    time.sleep(1.7)  # an explicit expiry_skew is capped at half the lifetime: 1.5 s here
    assert session.get(f"{launch_sandbox.url}/Patient").status_code == 200
    assert launch_sandbox.refresh_requests == 1
    rotated = client.tokens.refresh_token
    assert rotated and rotated != tokens.refresh_token
    assert client.patient_id == launch_sandbox.launch_context["patient"]  # context survives refreshes
    with pytest.raises(SmartAuthError) as err:  # the old refresh token was discarded by the server
        refresh_access_token(
            smart_config=client.smart_configuration, client_id="public-app", refresh_token=tokens.refresh_token
        )
    assert err.value.error == "invalid_grant"


def test_smart_client_refreshes_on_401(launch_sandbox: Any) -> None:
    client, _ = smart_client(launch_sandbox)
    session = requests.Session()
    session.auth = client
    session.get(f"{launch_sandbox.url}/Patient").raise_for_status()
    launch_sandbox.expire_tokens()
    response = session.get(f"{launch_sandbox.url}/Patient")
    assert response.status_code == 200 and [r.status_code for r in response.history] == [401]
    assert launch_sandbox.refresh_requests == 1


def test_concurrent_refresh_makes_one_request(launch_sandbox: Any) -> None:
    client, _ = smart_client(launch_sandbox)
    client.invalidate()
    barrier = threading.Barrier(8)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(client.get_token().access_token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(results)) == 1
    assert launch_sandbox.refresh_requests == 1


def test_revoked_refresh_token_surfaces_invalid_grant(launch_sandbox: Any) -> None:
    client, _ = smart_client(launch_sandbox)
    client.invalidate()
    launch_sandbox.revoke_refresh_tokens()
    with pytest.raises(SmartAuthError) as err:
        client.get_token()
    assert err.value.error == "invalid_grant"
    assert "re-authorise" in str(err.value)


def test_rotation_persists_in_file_store_across_processes(launch_sandbox: Any, tmp_path: Path) -> None:
    store_path = tmp_path / "tokens.json"
    client, tokens = smart_client(launch_sandbox, token_store=FileTokenStore(store_path), store_key="k")
    client.invalidate()
    client.get_token()  # refresh #1, rotates the refresh token and persists it
    script = textwrap.dedent(
        f"""
        from airflow_provider_smart.auth import FileTokenStore, SmartClient, StoredToken
        seed = StoredToken(access_token="", expires_at=0.0, refresh_token={tokens.refresh_token!r})
        client = SmartClient(client_id="public-app", fhir_base_url={launch_sandbox.url!r}, tokens=seed,
                             token_store=FileTokenStore({str(store_path)!r}), store_key="k")
        client.invalidate()
        print(client.get_token().scope)
        """
    )
    # A second process, seeded with the ORIGINAL refresh token like a connection would be: it must use
    # the rotated one from the store; the original was burnt by refresh #1.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "user/*.rs" in out.stdout
    assert launch_sandbox.refresh_requests == 2


def test_two_processes_refreshing_at_once_do_not_burn_the_token(launch_sandbox: Any, tmp_path: Path) -> None:
    store_path = tmp_path / "tokens.json"
    client, _ = smart_client(launch_sandbox, token_store=FileTokenStore(store_path), store_key="k")
    client.invalidate()
    script = textwrap.dedent(
        f"""
        from airflow_provider_smart.auth import FileTokenStore, SmartClient, StoredToken
        client = SmartClient(client_id="public-app", fhir_base_url={launch_sandbox.url!r},
                             token_store=FileTokenStore({str(store_path)!r}), store_key="k")
        for _ in range(3):
            client.get_token()
            client.invalidate()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    # Every refresh used the latest rotated token (a burnt one would be invalid_grant); a process that
    # finds a token another one just refreshed uses it instead of refreshing, hence "at most 9".
    assert [e for e in launch_sandbox.token_log if e.get("error")] == []
    assert 3 <= launch_sandbox.refresh_requests <= 9


# --- issue 8 item 7: a rotated refresh token is never silently lost ---------------------------------
class RefusingStore(InMemoryTokenStore):
    """A store whose writes fail on cue, like a full disk or a refused Variable write."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.attempts = 0

    def set(self, key: str, token: Any) -> None:
        if self.refuse:
            self.attempts += 1
            raise OSError(errno.ENOSPC, "No space left on device", "/var/tokens.json")
        super().set(key, token)


def test_rotated_refresh_token_survives_a_refused_store_write(
    launch_sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusingStore()
    client, _ = smart_client(launch_sandbox, token_store=store)
    session = requests.Session()
    session.auth = client
    session.get(f"{launch_sandbox.url}/Patient").raise_for_status()  # first refresh, saved
    saved = store.get(client.store_key)
    assert saved is not None and saved.refresh_token

    store.refuse = True
    launch_sandbox.expire_tokens()
    with caplog.at_level(logging.WARNING):
        assert session.get(f"{launch_sandbox.url}/Patient").status_code == 200  # the process keeps working
    rotated = client.tokens.refresh_token
    assert rotated != saved.refresh_token  # the server rotated it; only this process has the new one
    assert store.attempts >= 3  # the write was retried
    assert client.unsaved
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "only valid one" in errors[0].getMessage()
    assert "re-authorised" in errors[0].getMessage() and "No space left" in errors[0].getMessage()
    assert all(rotated not in r.getMessage() and saved.refresh_token not in r.getMessage() for r in caplog.records)

    # The next refresh uses the in-memory token (the store's copy was discarded by the server).
    launch_sandbox.expire_tokens()
    assert session.get(f"{launch_sandbox.url}/Patient").status_code == 200
    newest = client.tokens.refresh_token
    assert newest != rotated

    with pytest.raises(TokenStoreError, match="only valid one") as err:
        client.ensure_saved()  # what a task calls before it ends: a clear failure, not a silent loss
    assert err.value.kind == "smart.token_store" and err.value.context["unsaved"] is True
    assert newest not in str(err.value)

    store.refuse = False
    client.ensure_saved()
    assert not client.unsaved
    assert store.get(client.store_key).refresh_token == newest


def test_unsaved_access_token_without_refresh_token_is_only_a_warning(
    sandbox: Any, es384: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_smart.auth import BackendServicesAuth

    store = RefusingStore()
    store.refuse = True
    auth = BackendServicesAuth(
        client_id="es-client", private_key=es384.pem, kid=es384.kid, fhir_base_url=sandbox.url, token_store=store
    )
    with caplog.at_level(logging.WARNING):
        first = auth.get_token()
        assert auth.get_token() is first  # kept in memory: no token per request
    assert sandbox.token_requests == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
