"""Command line for the sandbox: ``serve()`` runs it until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

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
    add("--port", type=int, default=8900, help="port (default 8900; 0 = any free port)")
    add("--client-id", default="sandbox-client", help="client to register (default sandbox-client)")
    add("--jwks", type=Path, help="register --client-id as an asymmetric client with the public JWKS in FILE")
    add("--jwks-url", help="register --client-id with the JWK Set at this URL (loopback only), fetched per its jku")
    add("--client-secret", help="register --client-id as a symmetric client with this secret")
    add(
        "--scopes",
        help=f"scopes the client may be granted (default {BACKEND_SCOPES!r}; with --redirect-uri or "
        f"--public: {LAUNCH_SCOPES!r})",
    )
    add("--redirect-uri", action="append", default=[], help="App Launch redirect URI of the client (repeatable)")
    add("--public", action="store_true", help="register --client-id as a public App Launch client (no secret)")
    add("--token-lifetime", type=int, default=300, help="access token expires_in, seconds (default 300)")
    add("--patients", type=int, default=20)
    add("--resources-per-patient", type=int, default=5, help="Observations per patient")
    add("--resources-per-file", type=int, default=1000)
    add("--status-polls", type=int, default=1, help="202 answers before a job's manifest (default 1)")
    add("--retry-after", default="1", help="Retry-After on 202 answers ('none' for no header)")
    add("--churn-per-export", type=int, default=0, help="resources updated (and 1 deleted) per export")
    add("--manifest-page-size", type=int, help="output entries per manifest page (default: one page)")
    add("--no-gzip", action="store_true", help="ignore Accept-Encoding: gzip")
    add("--no-well-known", action="store_true", help="answer 404 on .well-known/smart-configuration")
    add("--redirect-files", action="store_true", help="files answer 307 to presigned localhost URLs")
    add("--data-dir", type=Path, help="where export files go (default: a temporary directory)")
    add("--ready-file", type=Path, help="write the FHIR base URL to this file once listening")
    return parser


def serve(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.public and (args.jwks or args.client_secret is not None or args.jwks_url):
        parser.error("--public excludes --jwks, --jwks-url and --client-secret (a public client has no credentials)")
    if args.jwks and args.jwks_url:
        parser.error("argument --jwks-url: give --jwks (the keys) or --jwks-url (where to fetch them), not both")
    if args.jwks_url:
        from airflow_provider_smart.testing.auth_server import check_loopback_url

        try:
            check_loopback_url(args.jwks_url)
        except ValueError as exc:
            parser.error(f"argument --jwks-url: {exc}")
    jwks = json.loads(args.jwks.read_text()) if args.jwks else None
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
    registered = jwks is not None or args.client_secret is not None or args.public or bool(args.jwks_url)
    if registered:
        sandbox.register_client(
            args.client_id,
            jwks=jwks,
            jwks_url=args.jwks_url,
            client_secret=args.client_secret,
            scopes=scopes,
            redirect_uris=args.redirect_uri,
            public=args.public,
        )
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
