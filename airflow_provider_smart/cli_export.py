"""``airflow-smart export``: an ad-hoc Bulk Data export from the command line, with a progress bar.

It runs the operator's workflow (:class:`~airflow_provider_smart.bulk.workflow.ExportWorkflow`): the same
kick-off or re-attach, the same checked downloads, ``manifest.json`` and ``log.ndjson``, into a local path
or any ``ObjectStoragePath`` URI. Interrupted, it leaves the export running on the server and the
destination remembering it: the same command resumes it and skips the files already landed.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from airflow_provider_smart.cli_args import (
    connection_settings,
    expose_storage_connection,
    library_log,
    load_connection,
    positive,
    usage_error,
)

BAR_WIDTH = 30
TTY_REFRESH = 0.2  # seconds between redraws on a terminal
PLAIN_REFRESH = 10.0  # seconds between progress lines when the output is not a terminal


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="run a Bulk Data export through a connection into any destination, with a progress bar",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("--conn-id", default="smart_default", help="the smart connection id (default smart_default)")
    add("--to", required=True, metavar="DEST", help="a local folder, file://, or an object store URI (s3://conn@b/p)")
    add("--level", choices=["system", "patient", "group"], default="system", help="export level (default system)")
    add("--group-id", help="the Group to export (with --level group)")
    add("--type", help="resource types, comma separated (_type), e.g. Patient,Observation")
    add("--since", help="_since: a FHIR instant, e.g. 2024-01-01T00:00:00Z")
    add("--until", help="_until: a FHIR instant")
    add("--type-filter", action="append", default=[], help="a _typeFilter query, e.g. 'Observation?category=lab'")
    add("--elements", help="_elements, comma separated")
    add("--method", choices=["auto", "GET", "POST"], default="auto", help="kick-off method (default auto)")
    add("--lenient", action="store_true", help="send Prefer: handling=lenient")
    add("--scope", help="request this scope instead of the connection's")
    add("--max-concurrent-downloads", type=positive(int), default=4, metavar="N", help="parallel files (default 4)")
    add("--poll-interval", type=positive(float), default=5.0, metavar="S", help="first poll wait without Retry-After")
    add("--timeout", type=positive(float), default=7 * 24 * 3600.0, metavar="S", help="wait at most S seconds")
    add("--keep-on-server", action="store_true", help="do not DELETE the export on the server once landed")
    add("--no-log", action="store_true", help="do not write log.ndjson beside the files")
    add("--no-progress", action="store_true", help="no progress bar (progress lines only)")
    add("--verbose", action="store_true", help="also print the library's log (every poll and file)")
    parser.set_defaults(handler=run, subparser=parser)


# Which argument a request error is about (the library names its fields).
_FIELD_ARGUMENTS = (
    ("since", "--since"),
    ("until", "--until"),
    ("resource_types", "--type"),
    ("type_filters", "--type-filter"),
    ("elements", "--elements"),
    ("group_id", "--group-id"),
    ("method", "--method"),
)


def _request(args: argparse.Namespace) -> Any:
    """The export request from the arguments, validated as a kick-off would be."""
    from airflow_provider_smart.bulk import ExportRequest
    from airflow_provider_smart.bulk.kickoff import format_instant, validate
    from airflow_provider_smart.exceptions import BulkExportError

    if args.level == "group" and not (args.group_id or "").strip():
        usage_error(args, "--group-id", "--level group needs the id of the Group to export")
    if args.group_id and args.level != "group":
        usage_error(args, "--group-id", f"only used with --level group (the level is {args.level})")
    request = ExportRequest(
        level=args.level,
        group_id=args.group_id,
        resource_types=args.type or [],
        since=args.since,
        until=args.until,
        type_filters=args.type_filter,
        elements=args.elements or [],
        method=args.method,
        lenient=args.lenient,
    )
    try:
        for name in ("since", "until"):
            if getattr(request, name):
                format_instant(getattr(request, name), name)
        validate(request)
    except BulkExportError as exc:
        text = exc.message.removeprefix("Invalid export request: ")
        argument = next((arg for field, arg in _FIELD_ARGUMENTS if text.startswith(field)), "--level")
        usage_error(args, argument, text)
    return request


def _destination(args: argparse.Namespace) -> Any:
    from airflow_provider_smart.bulk.storage import as_destination
    from airflow_provider_smart.operators._destination import resolve_destination

    expose_storage_connection(args.to)
    try:
        destination = as_destination(resolve_destination(args.to))
        destination.exists()  # an object store without its filesystem package fails here, not mid-export
        return destination
    except Exception as exc:
        usage_error(args, "--to", f"{args.to!r} cannot be used as a destination ({type(exc).__name__}: {exc})")


def run(args: argparse.Namespace) -> int:
    request = _request(args)
    connection = load_connection(args, args.conn_id)
    connection_settings(args, connection)
    destination = _destination(args)
    from airflow_provider_smart.exceptions import SmartError

    display = ProgressDisplay(sys.stderr, plain=args.no_progress)
    try:
        with library_log(args.verbose):  # the bar says it all; warnings still show
            return _export(args, connection, request, destination, display)
    except SmartError as exc:
        display.close()
        print(f"airflow-smart export: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        display.close()
        print(
            "\nInterrupted. The export keeps running on the server and the destination remembers it: run the "
            "same command again to resume (files already landed are skipped).",
            file=sys.stderr,
        )
        return 130


def _export(args: argparse.Namespace, connection: Any, request: Any, destination: Any, display: Any) -> int:
    from airflow_provider_smart.bulk import DownloadOptions, ExportWorkflow
    from airflow_provider_smart.bulk.progress import TransferProgress
    from airflow_provider_smart.bulk.workflow import summary_table
    from airflow_provider_smart.hooks.smart import SmartHook

    hook = SmartHook(args.conn_id, scope=args.scope, connection=connection)
    client = hook.get_bulk_client(max_concurrent_downloads=args.max_concurrent_downloads)
    progress = TransferProgress()
    workflow = ExportWorkflow(
        client,
        destination,
        request.to_dict(),
        options=DownloadOptions(max_concurrent_downloads=args.max_concurrent_downloads, progress_log_interval=0),
        delete_on_success=not args.keep_on_server,
        export_log=not args.no_log,
        progress=progress,
        # As the operator on a single-slot server (Epic, Cerner...): re-attach to ours, cancel-export sees it.
        # Elsewhere it would only warn, on machines without Airflow's metadata DB.
        registry=hook.inflight_registry() if client.vendor.single_slot else None,
    )
    done = workflow.completed_summary()
    if done is not None:
        print(f"This export already landed in {workflow.destination}; nothing to do.\n{summary_table(done)}")
        return 0
    started = workflow.start(request)
    display.say(("Re-attached to " if started.reattached else "Kicked off ") + f"the export {started.status_url}")
    first = started.first_status
    if first is not None and first.complete:
        manifest = first.manifest
    else:
        manifest = workflow.wait(
            started.status_url, poll_interval=args.poll_interval, timeout=args.timeout, on_progress=display.waiting
        )
    assert manifest is not None
    files = len(manifest.output) + len(manifest.deleted) + len(manifest.error)
    display.say(f"The server has finished: {files} file(s) to download (transactionTime {manifest.transaction_time}).")
    with display.downloading(progress):
        summary = workflow.land(started.status_url, manifest)
    hook.ensure_tokens_saved()
    print(f"Landed in {workflow.destination} (transactionTime {summary.get('transaction_time')}):")
    print(summary_table(summary))
    return 0


class ProgressDisplay:
    """The export's progress on ``stream``: a status line while the server works, then a bar redrawn in place
    (files, bytes, rate, elapsed). Not a terminal (or ``plain``): a line every ``PLAIN_REFRESH`` seconds."""

    def __init__(self, stream: TextIO, *, plain: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() and not plain
        self._polls = 0
        self._open_line = False
        self._lock = threading.Lock()

    def _write(self, text: str, *, in_place: bool) -> None:
        with self._lock:
            if in_place and self.tty:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self.stream.write("\r" + text[:width].ljust(width))
                self._open_line = True
            else:
                if self._open_line:
                    self.stream.write("\n")
                self.stream.write(text + "\n")
                self._open_line = False
            self.stream.flush()

    def say(self, text: str) -> None:
        self._write(text, in_place=False)

    def waiting(self, result: Any) -> None:
        """One in-progress poll: what the server says and when we ask again."""
        self._polls += 1
        wait = f"; next poll in {result.retry_after:.0f} s" if result.retry_after is not None else ""
        text = f"Waiting for the server: {result.progress or 'in progress'} (poll {self._polls}{wait})"
        self._write(text, in_place=True)

    def close(self) -> None:
        with self._lock:
            if self._open_line:
                self.stream.write("\n")
                self.stream.flush()
                self._open_line = False

    @contextlib.contextmanager
    def downloading(self, progress: Any) -> Iterator[None]:
        stop = threading.Event()
        interval = TTY_REFRESH if self.tty else PLAIN_REFRESH

        def draw() -> None:
            while not stop.wait(interval):
                self._write(render(progress.snapshot()), in_place=True)

        thread = threading.Thread(target=draw, daemon=True, name="smart-export-progress")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            self._write(render(progress.snapshot()), in_place=True)
            self.close()


def render(snapshot: Any) -> str:
    """``Downloading [#########-----]  12/39 files  120.3 MB  10.2 MB/s  0:00:12``."""
    from airflow_provider_smart.bulk.progress import format_bytes

    total = max(snapshot.files_total, 1)
    filled = int(BAR_WIDTH * snapshot.files_done / total)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    elapsed = time.strftime("%H:%M:%S", time.gmtime(snapshot.seconds)).removeprefix("0")
    skipped = f" ({snapshot.files_skipped} already here)" if snapshot.files_skipped else ""
    return (
        f"Downloading [{bar}] {snapshot.files_done}/{snapshot.files_total} files{skipped}  "
        f"{format_bytes(snapshot.bytes)}  {format_bytes(snapshot.rate)}/s  {elapsed}"
    )
