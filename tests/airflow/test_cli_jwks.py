"""``airflow-smart jwks``: a JWK Set you host, and a rotation by overlap that the sandbox follows by its jku."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_smart.cli import main
from airflow_provider_smart.exceptions import SmartAuthError
from airflow_provider_smart.testing.local_http import static_files


def token(conn_id: str = "smart_default") -> Any:
    from airflow.models.connection import Connection

    from airflow_provider_smart.hooks.smart import SmartHook

    hook = SmartHook(conn_id, connection=Connection.get_connection_from_secrets(conn_id))
    return hook.get_token(force_refresh=True)


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(["jwks", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_rotation_by_overlap_against_a_server_fetching_the_jku(
    sandbox_factory, es384, smart_conn, tmp_path, capsys, monkeypatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    with static_files(site) as origin:
        jku = f"{origin}/smart/jwks.json"
        sb = sandbox_factory(clients={"jku-client": {"jwks_url": jku, "scopes": "system/*.rs"}})
        conn = {"private_key": es384.pem, "kid": es384.kid, "jku": jku}
        smart_conn(raw={"conn_type": "smart", "host": sb.url, "login": "jku-client", "extra": conn})
        with pytest.raises(SmartAuthError, match="could not fetch the client's JWK Set"):
            token()  # nothing published yet: the server cannot verify anything

        assert cli(capsys, "publish", "--to", str(site / "smart" / "jwks.json"))[0] == 0
        assert token().scope == "system/*.rs" and sb.jwks_fetches == [jku]
        assert sb.token_log[-1]["ok"]

        code, out, _ = cli(
            capsys,
            "rotate",
            "--to",
            str(site / "smart" / "jwks.json"),
            "--out",
            str(tmp_path / "next"),
            "--kid",
            "key-2",
        )
        published = json.loads((site / "smart" / "jwks.json").read_text())
        assert code == 0 and [k["kid"] for k in published["keys"]] == [es384.kid, "key-2"]
        assert all("d" not in k for k in published["keys"])  # public halves only
        assert (tmp_path / "next" / "private_key.pem").stat().st_mode & 0o777 == 0o600
        assert token().scope  # the current key still works while both are published

        code, out, err = cli(
            capsys, "switch", "--key-file", str(tmp_path / "next" / "private_key.pem"), "--kid", "key-2"
        )
        assert code == 0, err
        assert "The server accepts kid key-2" in out and "PRIVATE KEY" not in out + err
        switched = json.loads(out.strip().splitlines()[-1])  # an env-var connection: the JSON to store
        assert switched["extra"]["kid"] == "key-2" and "private_key" not in switched["extra"]
        monkeypatch.setenv("AIRFLOW_CONN_SMART_DEFAULT", json.dumps(switched))
        assert token().scope and sb.token_log[-1]["ok"]

        sb.jwks_cache_seconds = 0  # the grace period is over: the server's cache has expired too
        code, out, _ = cli(capsys, "retire", "--to", str(site / "smart" / "jwks.json"), "--kid", es384.kid)
        assert code == 0 and [k["kid"] for k in json.loads((site / "smart" / "jwks.json").read_text())["keys"]] == [
            "key-2"
        ]
        assert token().scope  # the new key
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMART_DEFAULT",
            json.dumps({"conn_type": "smart", "host": sb.url, "login": "jku-client", "extra": conn}),
        )
        with pytest.raises(SmartAuthError, match="kid 'es-key-1' is not in the client's registered JWKS"):
            token()  # the retired key no longer verifies


def test_switch_refuses_a_key_that_is_not_published(sandbox_factory, es384, smart_conn, tmp_path, capsys) -> None:
    site = tmp_path / "site"
    site.mkdir()
    with static_files(site) as origin:
        jku = f"{origin}/jwks.json"
        sb = sandbox_factory(clients={"jku-client": {"jwks_url": jku, "scopes": "system/*.rs"}})
        smart_conn(
            raw={
                "conn_type": "smart",
                "host": sb.url,
                "login": "jku-client",
                "extra": {"private_key": es384.pem, "kid": es384.kid, "jku": jku},
            }
        )
        assert cli(capsys, "publish", "--to", str(site / "jwks.json"))[0] == 0
        main(["keygen", "--kid", "key-2", "--out", str(tmp_path / "next")])
        capsys.readouterr()
        code, out, err = cli(
            capsys, "switch", "--key-file", str(tmp_path / "next" / "private_key.pem"), "--kid", "key-2"
        )
        assert code == 1 and "not switched" in err and "'key-2' is not in the JWK Set" in err and out == ""


def test_the_sandbox_checks_the_jku_header_and_fetches_loopback_only(sandbox_factory, es384) -> None:
    sb = sandbox_factory()
    with pytest.raises(ValueError, match="loopback"):
        sb.register_client("far", jwks_url="https://keys.example.org/jwks.json")
    from airflow_provider_smart.auth import BackendServicesAuth

    sb.register_client("plain", jwks=es384.jwks, scopes="system/*.rs")
    auth = BackendServicesAuth(
        client_id="plain",
        private_key=es384.pem,
        kid=es384.kid,
        fhir_base_url=sb.url,
        scope="system/*.rs",
        jku="http://127.0.0.1:1/other.json",
    )
    with pytest.raises(SmartAuthError, match="jku does not match"):
        auth.get_token()


def test_show_prints_the_public_jwk_set(smart_conn, es384, capsys) -> None:
    code, out, _ = cli(capsys, "show")
    assert code == 0 and json.loads(out) == {"keys": [{**es384.jwks["keys"][0], "alg": "ES384"}]}


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["publish"], "--to"),
        (["publish", "--to", "DIR/"], "--to"),
        (["publish", "--conn-id", "missing_conn", "--to", "x.json"], "--conn-id"),
        (["rotate", "--to", "x.json", "--out", "next", "--kid", "es-key-1"], "--kid"),
        (["rotate", "--to", "x.json", "--out", "FILE", "--kid", "k2"], "--out"),
        (["rotate", "--to", "x.json", "--out", "next", "--kid", "k2", "--alg", "HS256"], "--alg"),
        (["switch", "--key-file", "nope.pem", "--kid", "k2"], "--key-file"),
        (["switch", "--key-file", "FILE", "--kid", "k2"], "--key-file"),
        (["retire", "--to", "x.json", "--kid", "k9"], "--to"),
        (["frobnicate"], "jwks_command"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(smart_conn, tmp_path, capsys, monkeypatch, args, argument) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    (tmp_path / "FILE").write_text("not a key")
    with pytest.raises(SystemExit) as exit_info:
        main(["jwks", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(errors) == 1 and argument in errors[0], err


def test_retiring_the_key_in_use_is_refused(smart_conn, es384, tmp_path, capsys) -> None:
    doc = tmp_path / "jwks.json"
    assert cli(capsys, "publish", "--to", str(doc))[0] == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["jwks", "retire", "--to", str(doc), "--kid", es384.kid])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --kid" in err and "switch the connection" in err


def test_switch_updates_a_connection_in_the_metadata_db(airflow_db, sandbox_factory, es384, tmp_path, capsys) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    site = tmp_path / "site"
    site.mkdir()
    with static_files(site) as origin:
        jku = f"{origin}/jwks.json"
        sb = sandbox_factory(clients={"jku-client": {"jwks_url": jku, "scopes": "system/*.rs"}})
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "smart_jku_db").delete()
            extra = {"private_key": es384.pem, "kid": es384.kid, "jku": jku, "scope": "system/*.rs"}
            session.add(
                Connection(
                    conn_id="smart_jku_db", conn_type="smart", host=sb.url, login="jku-client", extra=json.dumps(extra)
                )
            )
        document = str(site / "jwks.json")
        assert (
            cli(
                capsys,
                "rotate",
                "--conn-id",
                "smart_jku_db",
                "--to",
                document,
                "--out",
                str(tmp_path / "k2"),
                "--kid",
                "key-2",
            )[0]
            == 0
        )
        code, out, err = cli(
            capsys,
            "switch",
            "--conn-id",
            "smart_jku_db",
            "--kid",
            "key-2",
            "--key-file",
            str(tmp_path / "k2" / "private_key.pem"),
        )
        assert code == 0 and "Connection 'smart_jku_db' now signs with kid key-2" in out, err
        with create_session() as session:
            stored = session.query(Connection).filter(Connection.conn_id == "smart_jku_db").one().extra_dejson
        assert stored["kid"] == "key-2" and "private_key" not in stored and stored["jku"] == jku
        assert stored["key_file"] == str((tmp_path / "k2" / "private_key.pem").resolve())
        assert token("smart_jku_db").scope == "system/*.rs"


def test_publish_to_object_storage(smart_conn, es384, capsys) -> None:
    """Any ObjectStoragePath URI works as --to (memory:// stands in for s3://, which make e2e runs on moto)."""
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_smart.compat import ObjectStoragePath, attach_store

    attach_store("memory", fs=MemoryFileSystem())
    assert cli(capsys, "publish", "--to", "memory://public-keys/smart/jwks.json")[0] == 0
    published = json.loads(ObjectStoragePath("memory://public-keys/smart/jwks.json").read_text())
    assert [k["kid"] for k in published["keys"]] == [es384.kid] and "d" not in published["keys"][0]
    assert not [p for p in ObjectStoragePath("memory://public-keys/smart").iterdir() if p.name.endswith(".part")]
