"""``airflow-smart``: key generation, the local sandbox server, and token checks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from airflow_provider_smart.cli_args import BadArgument, port_number, positive, report_error


def _keygen(args: argparse.Namespace) -> int:
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks

    out = Path(args.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadArgument("--out", f"cannot create the folder {str(out)!r} ({exc.strerror or exc})") from None
    key_path = out / "private_key.pem"
    if key_path.exists() and not args.force:
        print(f"{key_path} exists; pass --force to replace it.", file=sys.stderr)
        return 1
    key = generate_private_key(args.alg)
    # Create with 0600 from the start: never a moment where the key is world-readable.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key_to_pem(key))
    os.chmod(key_path, 0o600)
    jwks = public_jwks(key, kid=args.kid, alg=args.alg)
    (out / "jwks.json").write_text(json.dumps(jwks, indent=2) + "\n")
    connection = {
        "conn_type": "smart",
        "host": args.fhir_url,
        "login": args.client_id,
        "extra": {"key_file": str(key_path.resolve()), "kid": args.kid, "alg": args.alg, "scope": args.scope},
    }
    from airflow_provider_smart.connection import _effective_port

    if args.fhir_url.startswith(("http://", "https://")):
        connection["port"] = _effective_port(args.fhir_url)  # lets the Test button of Airflow 3.3.1/3.3.2 work
    print(f"Private key written to {key_path} (mode 0600). Keep it secret.")
    print(f"\nPublic JWK Set (register it with the EHR; also saved as {out / 'jwks.json'}):")
    print(json.dumps(jwks, indent=2))
    print("\nAirflow connection (e.g. AIRFLOW_CONN_SMART_DEFAULT='<this JSON>'):")
    print(json.dumps(connection))
    return 0


def _sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    from airflow_provider_smart.testing.cli import serve

    return serve(rest)


def _load_connection(conn_id: str) -> Any:
    """A connection from env vars, secrets backends or the metadata DB (the CLI runs outside any task,
    where the Task SDK's lookup cannot reach the DB)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        raise BadArgument(
            "--conn-id", f"no connection {conn_id!r} (in AIRFLOW_CONN_*, a secrets backend or the metadata DB)"
        ) from None


def _token(args: argparse.Namespace) -> int:
    from airflow_provider_smart.hooks.smart import SmartHook

    hook = SmartHook(args.conn_id, scope=args.scope, connection=_load_connection(args.conn_id))
    token = hook.get_token(force_refresh=True)
    summary = token.summary()
    if args.show_token:
        summary["access_token"] = token.access_token
    print(json.dumps(summary, indent=2))
    return 0


def _test(args: argparse.Namespace) -> int:
    """The connection test Airflow's Test button runs, from the command line, on any Airflow version."""
    from airflow_provider_smart.hooks.connection_test import run_connection_test
    from airflow_provider_smart.hooks.smart import SmartHook

    connection = _load_connection(args.conn_id)
    ok, message = run_connection_test(SmartHook(args.conn_id, connection=connection))
    print(f"{'OK' if ok else 'FAILED'}: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _cancel_export(args: argparse.Namespace) -> int:
    """List this connection's exports in flight, or cancel (DELETE) one or all of them: the way out when a
    single-slot server (Epic, Cerner) is held by a stale export."""
    from airflow_provider_smart.hooks.smart import SmartHook

    hook = SmartHook(args.conn_id, connection=_load_connection(args.conn_id))
    registry = hook.inflight_registry()
    records = registry.records()
    targets = [r["status_url"] for r in records] if args.all else [args.status_url] if args.status_url else []
    if not targets:
        if not records:
            print(f"No export of connection {args.conn_id!r} is recorded in flight.")
        for r in records:
            print(f"{r['status_url']}  kicked off {r.get('kicked_off_at')}  into {r.get('destination') or '?'}")
        if records:
            print("Cancel one with --status-url URL, or all with --all.")
        return 0
    client = hook.get_bulk_client()
    for url in targets:
        gone = not client.cancel(url)
        registry.remove(url)
        print(f"{'already gone' if gone else 'cancelled'}: {url}")
    return 0


DEFAULT_LAUNCH_SCOPE = "openid fhirUser offline_access user/*.rs"


def _authorize_inputs(args: argparse.Namespace) -> tuple[dict, Any]:
    """The client and server to authorise against: from --conn-id, or from the explicit flags."""
    conn = None
    inputs: dict[str, Any] = {
        "fhir_url": args.fhir_url,
        "client_id": args.client_id,
        "scope": args.scope,
        "client_secret": args.client_secret,
    }
    if args.conn_id:
        conn = _load_connection(args.conn_id)
        extra = conn.extra_dejson
        inputs["fhir_url"] = inputs["fhir_url"] or conn.host
        inputs["client_id"] = inputs["client_id"] or conn.login
        inputs["client_secret"] = inputs["client_secret"] or conn.password
        inputs["scope"] = inputs["scope"] or extra.get("launch_scope")
        from airflow_provider_smart.connection import read_private_key

        if key := read_private_key(extra):
            inputs.update(private_key=key, kid=extra.get("kid"), alg=extra.get("alg"))
    if not (inputs["fhir_url"] and inputs["client_id"]):
        raise BadArgument("--conn-id", "authorize needs --conn-id, or --fhir-url and --client-id")
    inputs["scope"] = inputs["scope"] or DEFAULT_LAUNCH_SCOPE
    return inputs, conn


def _save_refresh_token(conn_id: str | None, conn: Any, inputs: dict, token: Any) -> None:
    extra_update = {"auth_method": "refresh_token", "refresh_token": token.refresh_token}
    if conn_id:
        from airflow.models.connection import Connection
        from airflow.utils.session import create_session

        with create_session() as session:
            stored = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            if stored is not None:
                stored.set_extra(json.dumps({**stored.extra_dejson, **extra_update}))
                print(f"Refresh token saved in connection {conn_id!r} (auth_method refresh_token).")
                return
    connection = {
        "conn_type": "smart",
        "host": inputs["fhir_url"],
        "login": inputs["client_id"],
        "password": inputs.get("client_secret") or None,
        "extra": {**(conn.extra_dejson if conn is not None else {}), **extra_update},
    }
    print("The connection is not in the metadata DB, so it cannot be updated here. Store this JSON")
    print("(it holds the refresh token: treat it as a secret) in your secrets backend or env var:")
    print(json.dumps({k: v for k, v in connection.items() if v is not None}))


def _authorize(args: argparse.Namespace) -> int:
    from airflow_provider_smart.auth.discovery import discover_smart_configuration
    from airflow_provider_smart.auth.loopback import authorize_with_loopback

    inputs, conn = _authorize_inputs(args)
    smart_config = discover_smart_configuration(inputs["fhir_url"])

    def open_url(url: str) -> None:
        print(f"Open this URL in a browser to authorise:\n{url}", flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(url)

    credentials = {k: inputs[k] for k in ("client_secret", "private_key", "kid", "alg") if inputs.get(k)}
    token = authorize_with_loopback(
        smart_config=smart_config,
        client_id=inputs["client_id"],
        scope=inputs["scope"],
        open_url=open_url,
        redirect_uri=args.redirect_uri,
        port=args.port,
        timeout=args.timeout,
        **credentials,
    )
    print(f"Authorised: scope {token.scope!r}, patient {token.patient}, fhirUser {token.fhir_user}.")
    if not token.refresh_token:
        print("The server issued no refresh token (ask for offline_access); nothing to save.", file=sys.stderr)
        return 1
    _save_refresh_token(args.conn_id, conn, inputs, token)
    return 0


def _nonblank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-smart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="generate a signing key pair, its JWKS and a connection template")
    keygen.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"], help="default ES384")
    keygen.add_argument("--kid", required=True, type=_nonblank, help="key id to put in the JWKS and the connection")
    keygen.add_argument("--out", required=True, help="folder for private_key.pem and jwks.json")
    keygen.add_argument("--fhir-url", default="https://fhir.example.org/r4", help="FHIR base URL for the template")
    keygen.add_argument("--client-id", default="my-backend-client", help="client id for the template")
    keygen.add_argument("--scope", default="system/*.rs", help="scope for the template (default system/*.rs)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")

    sub.add_parser(
        "sandbox",
        help="run the local SMART + Bulk Data sandbox server (see 'airflow-smart sandbox --help')",
        add_help=False,
    )

    authorize = sub.add_parser(
        "authorize", help="run a standalone App Launch (PKCE) and store the refresh token in a connection"
    )
    authorize.add_argument("--conn-id", help="the smart connection to read the client from and save the token to")
    authorize.add_argument("--fhir-url", help="FHIR base URL (instead of --conn-id)")
    authorize.add_argument("--client-id", help="client id (instead of --conn-id)")
    authorize.add_argument("--client-secret", help="client secret, for confidential symmetric clients")
    authorize.add_argument("--scope", help=f"scopes to ask for (default {DEFAULT_LAUNCH_SCOPE!r})")
    authorize.add_argument(
        "--redirect-uri", help="registered loopback redirect URI, e.g. http://127.0.0.1:8765/callback"
    )
    authorize.add_argument(
        "--port", type=port_number, default=0, help="loopback port when no --redirect-uri (default: any)"
    )
    authorize.add_argument("--timeout", type=positive(float), default=300.0, help="seconds to wait for the redirect")
    authorize.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")

    token = sub.add_parser("token", help="acquire a token through an Airflow connection; print scope and expiry")
    token.add_argument("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")
    token.add_argument("--scope", help="request this scope instead of the connection's")
    token.add_argument("--show-token", action="store_true", help="also print the access token itself")

    test = sub.add_parser(
        "test",
        help="test a connection as Airflow's Test button does (works where the button cannot, e.g. Airflow "
        "3.3.1/3.3.2 without a port); refresh tokens are never rotated",
    )
    test.add_argument("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")

    cancel = sub.add_parser(
        "cancel-export",
        help="list a connection's exports in flight, or cancel (DELETE) one: frees a single-slot server "
        "(Epic, Cerner) held by a stale export",
    )
    cancel.add_argument("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")
    which = cancel.add_mutually_exclusive_group()
    which.add_argument("--status-url", help="the export's status URL (listed without this option)")
    which.add_argument("--all", action="store_true", help="cancel every recorded export of this connection")

    from airflow_provider_smart import cli_doctor, cli_export, cli_jwks

    # Subcommands in their own modules register themselves and set their handler.
    cli_doctor.register(sub)
    cli_export.register(sub)
    cli_jwks.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["sandbox"]:
        return _sandbox(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return int(args.handler(args))
    try:
        commands = {
            "keygen": _keygen,
            "token": _token,
            "authorize": _authorize,
            "test": _test,
            "cancel-export": _cancel_export,
        }
        return commands[args.command](args)
    except Exception as exc:  # a CLI prints the error, not a traceback full of internals
        return report_error(f"airflow-smart {args.command}", exc)


if __name__ == "__main__":
    sys.exit(main())
