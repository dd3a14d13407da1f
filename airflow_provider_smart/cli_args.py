"""What every ``airflow-smart`` command shares: argument types and errors reported as argparse does.

Bad input gets one line on stderr naming the argument and exit code 2 (``argparse``'s convention), never
a traceback. Shared by ``cli.py``, the sandbox's ``testing/cli.py`` and the subcommands in their own
modules (``cli_doctor``, ``cli_export``, ``cli_jwks``); imports nothing heavy.

``usage_error(args, "--conn-id", "...")`` prints ``airflow-smart export: error: argument --conn-id: ...``
after the subcommand's usage line, as argparse does, and exits with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn


class BadArgument(Exception):
    """Bad input to a command: reported as argparse does, one line naming the argument, exit code 2."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"argument {argument}: {problem}")


def positive(kind: type = int, *, zero: bool = False) -> Any:
    """An argparse ``type``: a finite number, > 0 (>= 0 with ``zero``), so argparse names the argument."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value >= 0 if zero else value > 0) or value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'0 or more' if zero else 'more than 0'}")
        return value

    return parse


def port_number(text: str) -> int:
    """An argparse ``type`` for a TCP port: 0 (any free port) to 65535."""
    value = positive(int, zero=True)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(value)


def report_error(prog: str, exc: Exception) -> int:
    """One line on stderr for bad input or a refused request, as argparse prints (exit code 2);
    anything else is a bug in this program and keeps its traceback."""
    from airflow_provider_smart.exceptions import SmartError

    if not isinstance(exc, (BadArgument, SmartError)):
        raise exc
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def usage_error(args: argparse.Namespace, argument: str, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args.subparser
    parser.error(f"argument {argument}: {message}")


def load_connection(args: argparse.Namespace, conn_id: str) -> Any:
    """The connection ``conn_id`` from env vars, secrets backends or the metadata DB; a missing one is an
    error in ``--conn-id``."""
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except Exception as exc:
        reason = "is not defined" if type(exc).__name__ == "AirflowNotFoundException" else f"cannot be read ({exc})"
        usage_error(args, "--conn-id", f"the connection {conn_id!r} {reason}")


def connection_settings(args: argparse.Namespace, connection: Any) -> Any:
    """The connection, validated: a malformed one is an error in ``--conn-id`` naming the field to fix."""
    from airflow_provider_smart.connection import settings_from_connection
    from airflow_provider_smart.exceptions import SmartConfigError

    try:
        return settings_from_connection(
            connection.host,
            connection.login,
            connection.password,
            connection.extra_dejson,
            conn_id=connection.conn_id,
            port=connection.port,
        )
    except SmartConfigError as exc:
        usage_error(args, "--conn-id", exc.message)


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler``, with our errors (and the OS's, e.g. an unwritable destination) printed as one line and
    exit code 1 instead of a traceback: the input was fine, the world was not."""

    def run(args: argparse.Namespace) -> int:
        from airflow_provider_smart.exceptions import SmartError

        try:
            return handler(args)
        except (SmartError, OSError) as exc:
            message = exc.message if isinstance(exc, SmartError) else f"{type(exc).__name__}: {exc}"
            print(f"{args.subparser.prog}: {message}", file=sys.stderr)
            return 1

    return run


def expose_storage_connection(uri: str) -> None:
    """Make the connection an object-store URI names (``s3://aws_default@bucket/...``) visible to Airflow's
    object storage from this command line.

    Outside a task Airflow's object storage looks connections up in environment variables and secrets
    backends only, not in the metadata DB where the UI stores them; the CLI reads the DB, so it hands the
    connection over as this process's ``AIRFLOW_CONN_<ID>`` (never to a child process, never printed).
    """
    scheme, sep, rest = uri.partition("://")
    conn_id = rest.split("/", 1)[0].rpartition("@")[0] if sep and "@" in rest.split("/", 1)[0] else ""
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    if not conn_id or scheme == "file" or variable in os.environ:
        return
    try:
        from airflow.models.connection import Connection

        os.environ[variable] = Connection.get_connection_from_secrets(conn_id).as_json()
    except Exception:  # not found here either: Airflow's own error will name it
        return


@contextlib.contextmanager
def library_log(verbose: bool) -> Iterator[None]:
    """The library's INFO lines only with ``--verbose`` (the command's own output says it all); the level
    is restored afterwards, so a command run in-process leaves the logging as it found it."""
    import logging

    logger = logging.getLogger("airflow_provider_smart")
    previous = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)
