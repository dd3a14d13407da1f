"""``airflow-smart``: key generation, the local sandbox server, and token checks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _keygen(args: argparse.Namespace) -> int:
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
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
        "extra": {"private_key_path": str(key_path.resolve()), "kid": args.kid, "alg": args.alg, "scope": args.scope},
    }
    print(f"Private key written to {key_path} (mode 0600). Keep it secret.")
    print(f"\nPublic JWK Set (register it with the EHR; also saved as {out / 'jwks.json'}):")
    print(json.dumps(jwks, indent=2))
    print("\nAirflow connection (e.g. AIRFLOW_CONN_SMART_DEFAULT='<this JSON>'):")
    print(json.dumps(connection))
    return 0


def _sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    from airflow_provider_smart.testing.cli import serve

    return serve(rest)


def _token(args: argparse.Namespace) -> int:
    from airflow_provider_smart.hooks.smart import SmartHook

    hook = SmartHook(args.conn_id, scope=args.scope)
    token = hook.get_token(force_refresh=True)
    summary = token.summary()
    if args.show_token:
        summary["access_token"] = token.access_token
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-smart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="generate a signing key pair, its JWKS and a connection template")
    keygen.add_argument("--alg", default="ES384", choices=["ES384", "RS384", "ES256", "RS256"], help="default ES384")
    keygen.add_argument("--kid", required=True, help="key id to put in the JWKS and the connection")
    keygen.add_argument("--out", required=True, help="folder for private_key.pem and jwks.json")
    keygen.add_argument("--fhir-url", default="https://fhir.example.org/r4", help="FHIR base URL for the template")
    keygen.add_argument("--client-id", default="my-backend-client", help="client id for the template")
    keygen.add_argument("--scope", default="system/*.read", help="scope for the template")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")

    sub.add_parser(
        "sandbox",
        help="run the local SMART + Bulk Data sandbox server (see 'airflow-smart sandbox --help')",
        add_help=False,
    )

    token = sub.add_parser("token", help="acquire a token through an Airflow connection; print scope and expiry")
    token.add_argument("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")
    token.add_argument("--scope", help="request this scope instead of the connection's")
    token.add_argument("--show-token", action="store_true", help="also print the access token itself")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["sandbox"]:
        return _sandbox(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    try:
        return {"keygen": _keygen, "token": _token}[args.command](args)
    except Exception as exc:  # a CLI prints the error, not a traceback full of internals
        from airflow_provider_smart.exceptions import SmartError

        if not isinstance(exc, SmartError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
