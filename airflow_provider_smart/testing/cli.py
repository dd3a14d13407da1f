"""Command line for the sandbox: ``serve()`` runs it until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from airflow_provider_smart.cli_args import port_number, positive, report_error
from airflow_provider_smart.testing.sandbox import SmartSandbox

BACKEND_SCOPES = "system/*.rs system/*.read"
LAUNCH_SCOPES = "launch launch/patient launch/encounter openid fhirUser offline_access patient/*.rs user/*.rs"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-smart sandbox",
        description="Run the offline SMART Backend Services + FHIR Bulk Data sandbox server.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add("--port", type=port_number, default=8900, help="port (default 8900; 0 = any free port)")
    add("--client-id", default="sandbox-client", help="client to register (default sandbox-client)")
    add("--jwks", type=Path, help="register --client-id as an asymmetric client with the public JWKS in FILE")
    add("--client-secret", help="register --client-id as a symmetric client with this secret")
    add(
        "--scopes",
        help=f"scopes the client may be granted (default {BACKEND_SCOPES!r}; with --redirect-uri or "
        f"--public: {LAUNCH_SCOPES!r})",
    )
    add("--redirect-uri", action="append", default=[], help="App Launch redirect URI of the client (repeatable)")
    add("--public", action="store_true", help="register --client-id as a public App Launch client (no secret)")
    add("--token-lifetime", type=positive(int), default=300, help="access token expires_in, seconds (default 300)")
    add("--patients", type=positive(int, zero=True), default=20)
    add("--resources-per-patient", type=positive(int, zero=True), default=5, help="Observations per patient")
    add("--resources-per-file", type=positive(int), default=1000)
    add("--status-polls", type=positive(int, zero=True), default=1, help="202 answers before a job's manifest")
    add("--retry-after", type=_retry_after, default="1", help="Retry-After on 202 answers ('none' for no header)")
    add("--churn-per-export", type=positive(int, zero=True), default=0, help="resources updated per export")
    add("--manifest-page-size", type=positive(int), help="output entries per manifest page (default: one page)")
    add("--no-gzip", action="store_true", help="ignore Accept-Encoding: gzip")
    add("--no-well-known", action="store_true", help="answer 404 on .well-known/smart-configuration")
    add("--redirect-files", action="store_true", help="files answer 307 to presigned localhost URLs")
    add("--data-dir", type=Path, help="where export files go (default: a temporary directory)")
    add("--ready-file", type=Path, help="write the FHIR base URL to this file once listening")
    return parser


def _retry_after(text: str) -> str:
    if text.lower() != "none":
        positive(float, zero=True)(text)
    return text


def _read_jwks(parser: argparse.ArgumentParser, path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        jwks = json.loads(path.read_text())
    except OSError as exc:
        parser.error(f"argument --jwks: cannot read {str(path)!r} ({exc.strerror or exc})")
    except ValueError as exc:
        parser.error(f"argument --jwks: {str(path)!r} is not JSON ({exc})")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        parser.error(f'argument --jwks: {str(path)!r} is not a JWK Set (a JSON object with a "keys" list)')
    return jwks


def serve(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.public and (args.jwks or args.client_secret is not None):
        parser.error("--public excludes --jwks and --client-secret (a public client has no credentials)")
    jwks = _read_jwks(parser, args.jwks)
    try:
        return _serve(parser, args, jwks)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            parser.error(f"argument --port: cannot listen on {args.host}:{args.port} ({exc.strerror})")
        if args.data_dir is not None:
            parser.error(f"argument --data-dir: {exc.strerror or exc}")
        raise
    except Exception as exc:  # a JWKS whose keys do not load, a redirect URI refused, ...
        return report_error("airflow-smart sandbox", exc)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, jwks: dict[str, Any] | None) -> int:
    sandbox = SmartSandbox(
        host=args.host,
        port=args.port,
        token_lifetime=args.token_lifetime,
        patients=args.patients,
        resources_per_patient=args.resources_per_patient,
        resources_per_file=args.resources_per_file,
        status_polls_before_ready=args.status_polls,
        retry_after=None if args.retry_after.lower() == "none" else args.retry_after,
        churn_per_export=args.churn_per_export,
        manifest_page_size=args.manifest_page_size,
        gzip=not args.no_gzip,
        well_known=not args.no_well_known,
        redirect_files=args.redirect_files,
        data_dir=args.data_dir,
    )
    launch = bool(args.redirect_uri) or args.public
    scopes = args.scopes or (LAUNCH_SCOPES if launch else BACKEND_SCOPES)
    registered = jwks is not None or args.client_secret is not None or args.public
    if registered:
        try:
            sandbox.register_client(
                args.client_id,
                jwks=jwks,
                client_secret=args.client_secret,
                scopes=scopes,
                redirect_uris=args.redirect_uri,
                public=args.public,
            )
        except (ValueError, TypeError, KeyError) as exc:
            parser.error(f"argument {'--jwks' if jwks is not None else '--client-id'}: {exc}")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    with sandbox:
        print(f"SMART sandbox FHIR base URL: {sandbox.url}", flush=True)
        print(f"token endpoint: {sandbox.token_url}", flush=True)
        if launch:
            print(f"authorize endpoint: {sandbox.authorize_url}", flush=True)
        if not registered:
            print("warning: no client registered (use --jwks FILE, --client-secret or --public)", file=sys.stderr)
        else:
            print(f"client {args.client_id!r} may be granted: {scopes}", flush=True)
        if args.ready_file:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(sandbox.url + "\n")
            tmp.replace(args.ready_file)
        while not stop.wait(0.5):
            pass
    return 0
