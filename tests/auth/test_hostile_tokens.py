"""Issue 8 items 16 and 17 (tokens): short-lived and nonsensical lifetimes, oversized error descriptions,
corrupt token-store files, and private keys pasted with literal ``\\n`` escapes. Real HTTP, sandbox server.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import tokens_from_threads

from airflow_provider_smart.auth import BackendServicesAuth, FileTokenStore, StoredToken, load_private_key
from airflow_provider_smart.exceptions import SmartAuthError, SmartConfigError, TokenStoreError
from airflow_provider_smart.testing import SmartSandbox


def make_auth(sb: Any, key: Any, **kwargs: Any) -> BackendServicesAuth:
    return BackendServicesAuth(
        client_id="es-client", private_key=key.pem, kid=key.kid, fhir_base_url=sb.url, scope="system/*.rs", **kwargs
    )


@pytest.fixture
def short_sandbox(es384: Any) -> Any:
    with SmartSandbox(patients=2, resources_per_patient=1, token_lifetime=4) as sb:
        sb.register_client("es-client", jwks=es384.jwks, scopes="system/*.rs")
        yield sb


# --- item 16: the renewal margin fits the lifetime --------------------------------------------------
def test_eight_threads_with_four_second_tokens_mint_once(short_sandbox: Any, es384: Any) -> None:
    tokens = tokens_from_threads(make_auth(short_sandbox, es384))
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert short_sandbox.token_requests == 1


def test_eight_auth_objects_of_one_connection_asking_at_once_mint_once(short_sandbox: Any, es384: Any) -> None:
    # What N hooks (or N triggers' sessions) of one connection are: separate auths over the process's store.
    from airflow_provider_smart.auth import InMemoryTokenStore

    store = InMemoryTokenStore()
    auths = [make_auth(short_sandbox, es384, token_store=store) for _ in range(8)]
    barrier = threading.Barrier(len(auths))
    tokens: list[str] = []

    def worker(auth: BackendServicesAuth) -> None:
        barrier.wait()
        tokens.append(auth.get_token().access_token)

    started = [threading.Thread(target=worker, args=(auth,)) for auth in auths]
    for t in started:
        t.start()
    for t in started:
        t.join()
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert short_sandbox.token_requests == 1  # was up to 8: a lock per auth object


def test_token_count_is_duration_over_lifetime_plus_one(es384: Any) -> None:
    with SmartSandbox(patients=2, resources_per_patient=1, token_lifetime=2) as sb:
        sb.register_client("es-client", jwks=es384.jwks, scopes="system/*.rs")
        session = requests.Session()
        session.auth = make_auth(sb, es384)
        started = time.monotonic()
        requests_made = 0
        while time.monotonic() - started < 4.5:
            assert session.get(f"{sb.url}/Patient").status_code == 200
            requests_made += 1
            time.sleep(0.05)
        assert requests_made > 30
        assert sb.token_requests <= 4  # 4.5 s / 2 s + 1, not one per request


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (None, 300),  # missing
        (0, 60),
        (-30, 60),
        (float("nan"), 60),
        ("soon", 60),
        (True, 60),
        ({"n": 1}, 60),
        (1e308, 86400),
        (float("inf"), 86400),
        (0.001, 1),
        ("120", 120),
    ],
)
def test_nonsensical_expires_in_is_clamped_with_a_warning(
    sandbox: Any, es384: Any, caplog: pytest.LogCaptureFixture, expires_in: Any, lifetime: float
) -> None:
    sandbox.token_response_patch = {"expires_in": expires_in}
    auth = make_auth(sandbox, es384)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_smart"):
        token = auth.get_token()
    assert token.lifetime == lifetime
    assert abs(token.expires_in() - lifetime) < 5
    if expires_in != "120":
        assert any("expires_in" in r.getMessage() for r in caplog.records)
    if lifetime > 1:
        assert auth.get_token() is token  # no token per request
        assert sandbox.token_requests == 1


# --- item 17: oversized descriptions, corrupt stores, mangled keys ----------------------------------
def test_oversized_error_description_is_truncated(sandbox: Any, es384: Any) -> None:
    sandbox.add_fault("token", status=400, body={"error": "invalid_client", "error_description": "A" * 200_000})
    with pytest.raises(SmartAuthError) as err:
        make_auth(sandbox, es384).get_token()
    assert len(str(err.value)) < 800
    assert "more characters" in str(err.value)
    assert len(err.value.error_description or "") < 400


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{not json", r"not valid JSON \(line 1"), ("[1, 2]", "not a JSON object of tokens"), (b"\xff\xfe", "cannot be")],
)
def test_corrupt_token_store_file_is_named(
    tmp_path: Path, sandbox: Any, es384: Any, content: str | bytes, needle: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    auth = make_auth(sandbox, es384, token_store=FileTokenStore(path))
    with pytest.raises(TokenStoreError, match=needle) as err:
        auth.get_token()
    assert str(path) in str(err.value)
    assert err.value.kind == "smart.token_store"
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # not overwritten


def test_file_store_round_trips_the_lifetime(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "t.json")
    store.set("k", StoredToken(access_token="a", expires_at=time.time() + 10, lifetime=10.0))
    assert store.get("k").lifetime == 10.0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda pem: pem.replace("\n", "\\n"),  # pasted into a JSON string by hand
        lambda pem: pem.replace("\n", "\\r\\n"),
        lambda pem: pem.replace("\n", " "),  # a single-line field turned line breaks into spaces
    ],
    ids=["escaped-n", "escaped-crlf", "spaces"],
)
def test_private_key_with_mangled_line_breaks_is_repaired(sandbox: Any, es384: Any, mangle: Any) -> None:
    mangled = mangle(es384.pem)
    assert "\n" not in mangled.strip()
    load_private_key(mangled)
    auth = BackendServicesAuth(
        client_id="es-client", private_key=mangled, kid=es384.kid, fhir_base_url=sandbox.url, scope="system/*.rs"
    )
    assert auth.get_token().access_token  # the sandbox verified the signature


def test_truncated_key_is_still_named_precisely() -> None:
    with pytest.raises(SmartConfigError, match="could not be parsed") as err:
        load_private_key("-----BEGIN PRIVATE KEY-----\\nMIGkAgEBBDA\\n-----END PRIVATE KEY-----")
    assert "MIGkAgEBBDA" not in str(err.value)
