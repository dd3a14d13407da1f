"""``airflow-smart jwks``: host a connection's public keys as a JWK Set, and rotate them by overlap.

``show`` prints the connection's public JWK Set; ``publish`` adds the connection's key to the document
at ``--to`` (a local path, ``file://``, or an object store URI such as ``s3://aws_default@bucket/jwks.json``);
``rotate`` generates the next key and publishes it beside the current one; ``switch`` checks that the next
key is published at the JWK Set URL and accepted by the server, then points the connection at it;
``retire`` removes the old key once the grace period is over. See :mod:`airflow_provider_smart.auth.jwks`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from airflow_provider_smart.cli_args import (
    connection_settings,
    expose_storage_connection,
    guarded,
    load_connection,
    usage_error,
)


def register(sub: Any) -> None:
    jwks = sub.add_parser("jwks", help="publish a connection's public keys as a JWK Set; rotate keys by overlap")
    commands = jwks.add_subparsers(dest="jwks_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help)
        parser.add_argument("--conn-id", default="smart_default", help="the smart connection (default smart_default)")
        parser.set_defaults(handler=guarded(HANDLERS[name]), subparser=parser)
        return parser

    command("show", "print the public JWK Set of the connection's key")
    publish = command("publish", "add the connection's public key to the JWK Set document at --to")
    publish.add_argument("--to", required=True, metavar="DEST", help="the document: a path, file:// or s3://conn@b/key")
    rotate = command("rotate", "generate the next key and publish it beside the current one")
    rotate.add_argument("--to", required=True, metavar="DEST", help="the JWK Set document the server fetches")
    rotate.add_argument("--out", required=True, help="folder for the next key's private_key.pem (mode 0600)")
    rotate.add_argument("--kid", required=True, help="the next key's id (unique in the set)")
    rotate.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"], help="default ES384")
    rotate.add_argument("--force", action="store_true", help="overwrite an existing private_key.pem in --out")
    switch = command("switch", "point the connection at the next key, once it is published and accepted")
    switch.add_argument("--key-file", required=True, help="the next key's PEM file (from rotate)")
    switch.add_argument("--kid", required=True, help="the next key's id")
    switch.add_argument("--jwks-url", help="the JWK Set URL to check (default: the connection's jku)")
    retire = command("retire", "remove a key from the JWK Set document after the grace period")
    retire.add_argument("--to", required=True, metavar="DEST", help="the JWK Set document")
    retire.add_argument("--kid", required=True, action="append", help="a kid to remove (repeatable)")


def _settings(args: argparse.Namespace) -> tuple[Any, Any]:
    connection = load_connection(args, args.conn_id)
    settings = connection_settings(args, connection)
    if settings.auth_method != "private_key_jwt" or not settings.private_key:
        usage_error(
            args, "--conn-id", f"{args.conn_id!r} signs with no private key (auth method {settings.auth_method})"
        )
    return connection, settings


def _document(args: argparse.Namespace) -> Any:
    from airflow_provider_smart.bulk.storage import as_destination
    from airflow_provider_smart.operators._destination import resolve_destination

    expose_storage_connection(args.to)
    try:
        path = as_destination(resolve_destination(args.to))
        path.exists()  # an object store without its filesystem package fails here
    except Exception as exc:
        usage_error(args, "--to", f"{args.to!r} cannot be written ({type(exc).__name__}: {exc})")
    if str(args.to).endswith("/") or (isinstance(path, Path) and path.is_dir()):
        usage_error(args, "--to", f"{args.to!r} is a folder: name the document itself, e.g. .../jwks.json")
    return path


def _current_jwk(settings: Any) -> dict[str, Any]:
    from airflow_provider_smart.auth.jwks import key_jwk

    return key_jwk(settings.private_key, settings.kid, settings.alg)


def _publish(path: Any, keys: list[dict[str, Any]]) -> dict[str, Any]:
    from airflow_provider_smart.auth.jwks import add_keys, read_jwks, write_jwks

    document = add_keys(read_jwks(path), keys)
    write_jwks(path, document)
    return document


def _kids(document: dict[str, Any]) -> str:
    return ", ".join(str(k.get("kid")) for k in document["keys"])


def _show(args: argparse.Namespace) -> int:
    _, settings = _settings(args)
    print(json.dumps({"keys": [_current_jwk(settings)]}, indent=2))
    return 0


def _publish_command(args: argparse.Namespace) -> int:
    _, settings = _settings(args)
    path = _document(args)
    document = _publish(path, [_current_jwk(settings)])
    print(f"Published the JWK Set to {path}: kid {_kids(document)}.")
    if not settings.jku:
        print("Register its public URL with the server, and set it as the connection's jku (JWKS URL).")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwk

    _, settings = _settings(args)
    if args.kid == settings.kid:
        usage_error(args, "--kid", f"{args.kid!r} is the current key's id: the next key needs its own")
    path = _document(args)
    out = Path(args.out).expanduser()
    key_path = out / "private_key.pem"
    if out.exists() and not out.is_dir():
        usage_error(args, "--out", f"{str(out)!r} is a file, not a folder")
    if key_path.exists() and not args.force:
        usage_error(args, "--out", f"{key_path} exists; pass --force to replace it")
    key = generate_private_key(args.alg)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never world-readable, not even briefly
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key_to_pem(key))
    os.chmod(key_path, 0o600)
    document = _publish(path, [_current_jwk(settings), public_jwk(key, kid=args.kid, alg=args.alg)])
    print(f"Next key written to {key_path} (mode 0600). Published {path}: kid {_kids(document)}.")
    print("Both keys now verify. Once the server has fetched the new set (its JWKS cache), switch the connection:")
    print(f"  airflow-smart jwks switch --conn-id {args.conn_id} --key-file {key_path.resolve()} --kid {args.kid}")
    return 0


def _switch(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from airflow_provider_smart.auth.jwks import check_published, fetch_jwks, key_jwk
    from airflow_provider_smart.auth.keys import algs_for_key, choose_alg, load_private_key
    from airflow_provider_smart.connection import build_auth
    from airflow_provider_smart.exceptions import SmartConfigError, SmartError

    connection, settings = _settings(args)
    try:
        pem = Path(args.key_file).expanduser().read_text()
        key = load_private_key(pem, field="--key-file")
    except OSError as exc:
        usage_error(args, "--key-file", f"{args.key_file!r} cannot be read ({exc.strerror})")
    except SmartConfigError as exc:
        usage_error(args, "--key-file", exc.message)
    url = args.jwks_url or settings.jku
    if not url:
        usage_error(args, "--jwks-url", "the connection has no jku: give the JWK Set URL the server fetches")
    alg = settings.alg if settings.alg in algs_for_key(key) else choose_alg(key)
    try:
        check_published(fetch_jwks(url, verify=settings.verify, timeout=settings.timeout), key_jwk(pem, args.kid), url)
        # The server must accept the new key before the connection relies on it.
        trial = replace(settings, private_key=pem, kid=args.kid, alg=alg, jku=url)
        token = build_auth(trial).get_token(force=True)
    except SmartError as exc:
        print(f"airflow-smart jwks switch: not switched: {exc.message}", file=sys.stderr)
        return 1
    extra_update = {
        "key_file": str(Path(args.key_file).expanduser().resolve()),
        "kid": args.kid,
        "alg": alg,
        "jku": url,
    }
    print(f"The server accepts kid {args.kid} (a token for scope {token.scope!r} was issued with it).")
    _save_connection(args.conn_id, connection, extra_update)
    return 0


def _save_connection(conn_id: str, connection: Any, extra_update: dict[str, Any]) -> None:
    """Update the connection in the metadata DB, or print the JSON to store where it lives."""
    removed = ("private_key", "private_key_path")  # the key file replaces a pasted key
    try:
        from airflow.models.connection import Connection
        from airflow.utils.session import create_session

        with create_session() as session:
            stored = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            if stored is not None:
                extra = {k: v for k, v in stored.extra_dejson.items() if k not in removed}
                stored.set_extra(json.dumps({**extra, **extra_update}))
                print(f"Connection {conn_id!r} now signs with kid {extra_update['kid']}.")
                return
    except Exception as exc:  # no metadata DB here: the connection lives elsewhere anyway
        print(f"(The metadata DB cannot be updated here: {type(exc).__name__}.)", file=sys.stderr)
    extra = {k: v for k, v in connection.extra_dejson.items() if k not in removed}
    value = {
        "conn_type": connection.conn_type,
        "host": connection.host,
        "login": connection.login,
        "port": connection.port,
        "extra": {**extra, **extra_update},
    }
    print(f"Connection {conn_id!r} is not in the metadata DB. Store this JSON where it lives (no secret in it):")
    print(json.dumps({k: v for k, v in value.items() if v is not None}))


def _retire(args: argparse.Namespace) -> int:
    from airflow_provider_smart.auth.jwks import read_jwks, retire_keys, write_jwks
    from airflow_provider_smart.exceptions import SmartConfigError

    _, settings = _settings(args)
    path = _document(args)
    document = read_jwks(path)
    if document is None:
        usage_error(args, "--to", f"there is no JWK Set at {path}")
    try:
        document = retire_keys(document, args.kid, in_use=settings.kid)
    except SmartConfigError as exc:
        usage_error(args, "--kid", exc.message)
    write_jwks(path, document)
    print(f"Retired kid {', '.join(args.kid)}. {path} now holds kid {_kids(document)}.")
    return 0


HANDLERS = {"show": _show, "publish": _publish_command, "rotate": _rotate, "switch": _switch, "retire": _retire}
