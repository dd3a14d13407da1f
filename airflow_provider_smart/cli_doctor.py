"""``airflow-smart doctor --conn-id X``: one report on a connection and its server (see :mod:`..doctor`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from airflow_provider_smart.cli_args import connection_settings, guarded, library_log, load_connection


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check a connection and its server: discovery, clock, token scopes, $export levels, vendor, TLS, jku",
        description="Check a connection and its server in one report; exit code 1 when a check fails.",
    )
    parser.add_argument("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")
    parser.add_argument("--scope", help="request this scope instead of the connection's")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--verbose", action="store_true", help="also print the library's log lines")
    parser.set_defaults(handler=guarded(run), subparser=parser)


def run(args: argparse.Namespace) -> int:
    from airflow_provider_smart.doctor import Doctor
    from airflow_provider_smart.hooks.secrets import mask_secrets

    connection = load_connection(args, args.conn_id)
    settings = connection_settings(args, connection)
    mask_secrets(*settings.secrets)
    with library_log(args.verbose):  # the report says it all
        report = Doctor(settings, extra=connection.extra_dejson, scope=args.scope).run()
    if args.json:
        print(json.dumps({"conn_id": args.conn_id, **report.to_dict()}, indent=2))
    else:
        print(f"Connection {args.conn_id!r}, client {settings.client_id!r}, auth {settings.auth_method}")
        print(report.render())
    return 1 if report.failed else 0
