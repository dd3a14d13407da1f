"""What every ``airflow-smart`` command shares: argument types and errors reported as argparse does.

Bad input gets one line on stderr naming the argument and exit code 2 (``argparse``'s convention), never
a traceback. Shared by ``cli.py`` and the sandbox's ``testing/cli.py``; imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
