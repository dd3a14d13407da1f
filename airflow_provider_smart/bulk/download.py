"""Parallel, streaming, checked downloads of Bulk Data files into a local or object-storage directory.

Per file: stream it in 512 KiB chunks through one reused buffer (gzip decoded on the fly; see
``stream.py``, which also hands the connection back to the pool) into ``.<name>.part`` next to its
final name, count lines and check resourceTypes on the way, compare with the manifest ``count``,
then rename. A file with its final name was therefore complete and checked, which is what lets a
rerun skip it. Transient failures (429, 5xx, dropped connections, short bodies) retry the whole
file with backoff; everything else fails the file at once. All files are attempted; failures are
collected and raised together at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import requests
import urllib3

from airflow_provider_smart.bulk.models import TYPE_NAME, DownloadOptions, DownloadReport, FileReport
from airflow_provider_smart.bulk.ndjson import NdjsonScanner
from airflow_provider_smart.bulk.outcome import ERROR_SEVERITIES, body_text, classify_issue, issues
from airflow_provider_smart.bulk.plan import check_entry
from airflow_provider_smart.bulk.retry import TRANSIENT_STATUSES, TransientFailure
from airflow_provider_smart.bulk.storage import (
    DestinationLease,
    LandedFiles,
    as_destination,
    attempt_id,
    discard,
    replace,
    size_of,
)
from airflow_provider_smart.bulk.stream import CorruptBody, IncompleteBody, open_body
from airflow_provider_smart.bulk.transport import BulkTransport
from airflow_provider_smart.bulk.urls import is_http_url, origin_of, redact_url, resolve
from airflow_provider_smart.exceptions import (
    BulkDownloadError,
    BulkExportError,
    NdjsonCheckError,
    NotNdjsonError,
    TruncatedFileError,
)

log = logging.getLogger("airflow_provider_smart.bulk")

CHUNK_SIZE = 512 * 1024
WRITE_SIZE = 128 * 1024  # bytes per write() call (see write_in_slices)
DOWNLOAD_HEADERS = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip"}
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
MAX_LISTED_ISSUES = 1000  # per list in the report (it may travel via XCom)
MAX_LOGGED_ISSUES = 50  # per kind in the log; the report counts them all
MAX_ISSUE_LINE = 1024 * 1024  # an error-file line longer than this is classified from its head only
MAX_DIAGNOSTICS = 500  # characters of one issue's text kept in logs, reports, summaries and XCom
_FIELD = {
    key: re.compile(rf'"{key}"\s*:\s*"([^"\\]{{0,{MAX_DIAGNOSTICS}}})') for key in ("severity", "code", "diagnostics")
}
PROGRESS_LOG_EVERY = 30.0  # seconds between progress lines for one long file
EXPECTED_TYPE = {"deleted": "Bundle", "error": "OperationOutcome"}  # what the spec puts in those files


def clip_text(text: str, limit: int = MAX_DIAGNOSTICS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def write_in_slices(handle: Any, chunk: bytes | bytearray) -> None:
    """Write ``chunk`` in ``WRITE_SIZE`` pieces.

    Measured against nginx (benchmarks/README.md, "Writes"): 512 KiB writes made whole downloads take
    anywhere from 0.4 to 1.0 s from run to run, the time spent in the kernel copying into the page
    cache; 128 KiB writes took 0.4-0.5 s every time, and 16-32 KiB ones cost more system calls.
    """
    if len(chunk) <= WRITE_SIZE:
        handle.write(chunk)
        return
    with memoryview(chunk) as view:
        for start in range(0, len(view), WRITE_SIZE):
            handle.write(view[start : start + WRITE_SIZE])


def bounded_lines(handle: Any, cap: int) -> Iterator[tuple[bytes, bool]]:
    """The lines of a binary file as ``(line, clipped)``: at most ``cap`` bytes of each are kept."""
    kept = bytearray()
    clipped = False
    while chunk := handle.read(CHUNK_SIZE):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start : len(chunk) if end < 0 else end]
            if not clipped:
                room = cap - len(kept)
                kept += piece[:room]
                clipped = len(piece) > room
            if end < 0:
                break
            yield bytes(kept), clipped
            kept.clear()
            clipped = False
            start = end + 1
    if kept or clipped:
        yield bytes(kept), clipped


def check_gzip_trailer(response: requests.Response) -> None:
    """A gzip body is complete only when its trailer (CRC-32 and length, verified by zlib) was read.

    A body delimited by the connection closing has no length to check; a gzip stream cut there simply
    stops decoding, without any error. urllib3 keeps the decoder of the body it decoded for us.
    """
    decoder = getattr(response.raw, "_decoder", None)
    stream = getattr(decoder, "_obj", None)
    if stream is None or not hasattr(stream, "eof"):
        return  # identity body, or a decoder we do not know (brotli, several codings): nothing to check
    if getattr(getattr(decoder, "_state", None), "name", "") == "SWALLOW_DATA":
        return  # urllib3 accepted trailing garbage after a complete member, as gzip(1) does
    if not stream.eof:
        raise TruncatedFileError("the gzip body ended before its trailer (CRC and length): the file was cut short")


def not_ndjson(url: str, response: requests.Response, exc: Exception) -> BulkDownloadError:
    ctype = response.headers.get("Content-Type") or "none"
    return BulkDownloadError(
        f"{redact_url(url)} answered 200 with a body that is not NDJSON (Content-Type {ctype!r}; {exc}). "
        "A proxy or gateway may be answering instead of the FHIR server (a login or error page); "
        "the file was not saved.",
        url=redact_url(url),
        content_type=ctype,
    )


def _expected_type(kind: str, rtype: str | None) -> str | None:
    if kind in EXPECTED_TYPE:
        return EXPECTED_TYPE[kind]
    # No type (organizeOutputBy mixes types) or a bogus one: nothing meaningful to check against.
    return rtype if rtype and TYPE_NAME.fullmatch(rtype) else None


class FileDownloader:
    """Download planned entries (see :func:`~airflow_provider_smart.bulk.plan.plan_files`) for a client."""

    def __init__(
        self,
        transport: BulkTransport,
        destination: Any,
        options: DownloadOptions,
        *,
        requires_access_token: bool,
        on_file_done: Callable[[FileReport], None] | None = None,
        ledger: LandedFiles | None = None,
        lease: DestinationLease | None = None,
    ) -> None:
        self.transport = transport
        self.ledger = ledger
        self.lease = lease
        self.attempt = attempt_id()
        self.destination = as_destination(destination)
        self.options = options
        self.requires_access_token = requires_access_token
        self.on_file_done = on_file_done
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        # A download slot is held while a body streams in. The fsync, rename and record that land the
        # file, and the wait before retrying a failed attempt, happen without it, on the pool's spare
        # threads: the next body starts at once instead of waiting for the disk (see benchmarks/README.md)
        # or for one file's Retry-After.
        self._slots = threading.BoundedSemaphore(options.max_concurrent_downloads)

    # -- orchestration --------------------------------------------------------------------------
    def run(self, entries: list[dict[str, Any]]) -> DownloadReport:
        planned = [check_entry(e) for e in entries]
        paths = [p for _, p in planned]
        if len(set(paths)) != len(paths):
            raise BulkExportError("Two planned files share a path; plan them together with plan_files().")
        self.destination.mkdir(parents=True, exist_ok=True)
        for kind in sorted({k for k, _ in planned} - {"output"}):
            (self.destination / kind).mkdir(parents=True, exist_ok=True)
        workers = max(1, min(self.options.max_concurrent_downloads, len(entries)))
        self.transport.ensure_pool_size(workers)
        # The pool has spare threads for files that are landing or waiting to retry (see _slots).
        started = time.monotonic()
        results: list[FileReport | None] = [None] * len(entries)
        failures: list[tuple[int, BaseException]] = []
        with ThreadPoolExecutor(
            max(workers, min(len(entries), 2 * workers)), thread_name_prefix="smart-bulk-download"
        ) as pool:
            futures = {pool.submit(self._download_file, entry): i for i, entry in enumerate(entries)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as exc:
                    failures.append((i, exc))
                    continue
                if self.on_file_done is not None:
                    self.on_file_done(results[i])  # type: ignore[arg-type]
        report = DownloadReport(files=[r for r in results if r is not None])
        for entry in entries:
            rtype = entry.get("type")
            if rtype and not TYPE_NAME.fullmatch(rtype):
                text = f"the manifest type {rtype!r} is not a resource type name; saved as {entry['path']}"
                self._add_issue(report, {"severity": "warning", "code": "client", "diagnostics": text})
        self._read_error_files(report)
        report.seconds = time.monotonic() - started
        log.info(
            "Download finished: %d files (%d skipped), %.1f MB, %d lines in %.1f s; %d failed.",
            len(report.files),
            sum(1 for f in report.files if f.skipped),
            report.bytes / 1e6,
            report.lines,
            report.seconds,
            len(failures),
        )
        if failures:
            raise self._failure(entries, sorted(failures, key=lambda f: f[0]), report)
        return report

    @staticmethod
    def _failure(
        entries: list[dict[str, Any]], failures: list[tuple[int, BaseException]], report: DownloadReport
    ) -> BulkDownloadError:
        listed = []
        for i, exc in failures:
            entry = entries[i]
            status = exc.status if isinstance(exc, BulkExportError) else None
            listed.append({"url": redact_url(entry["url"]), "path": entry["path"], "error": str(exc), "status": status})
        lines = [f"  - {f['path']} ({f['url']}): {f['error']}" for f in listed[:20]]
        if len(listed) > 20:
            lines.append(f"  ... and {len(listed) - 20} more")
        return BulkDownloadError(
            f"{len(failures)} of {len(entries)} file(s) failed to download; "
            f"the {len(report.files)} that succeeded stay in place "
            "and a rerun with skip_existing=True skips them:\n" + "\n".join(lines),
            report=report,
            url=listed[0]["url"],
            failures=listed,
        )

    # -- one file -------------------------------------------------------------------------------
    def _download_file(self, entry: dict[str, Any]) -> FileReport:
        kind, rel = check_entry(entry)
        url, count = entry["url"], entry.get("count")
        directory = self.destination if kind == "output" else self.destination / kind
        name = rel.rsplit("/", 1)[-1]
        final = directory / name
        report = FileReport(kind, entry.get("type"), url, str(final), count, None, None)
        if self.options.skip_existing and final.exists():
            # Only ever renamed to this name after its checks passed, so it is complete; with a ledger,
            # it must also hold this very file of this very export (not an abandoned export's).
            if self.ledger is None:
                report.skipped, report.bytes, report.lines = True, size_of(final), count
                log.info("Skipping %s: already downloaded by an earlier run.", rel)
                return report
            record = self.ledger.owns(rel, url)
            if record is not None:
                report.skipped, report.lines = True, record.get("lines")
                report.bytes = record.get("bytes") if record.get("bytes") is not None else size_of(final)
                report.count_mismatch = bool(record.get("count_mismatch"))
                report.unverified = record.get("unverified") or None
                log.info("Skipping %s: already downloaded by an earlier try of this export.", rel)
                return report
            log.info("Replacing %s: it does not hold this export's file (left by another export or try).", rel)
        if not is_http_url(url):
            shown = redact_url(url)[:100]
            raise BulkDownloadError(f"Refusing to download {shown!r}: not an http(s) URL.", url=shown)
        part = directory / f".{name}.{self.attempt}.part"  # per attempt: a zombie try never shares it
        expected = _expected_type(kind, entry.get("type")) if self.options.check_resource_types else None
        started = time.monotonic()

        def attempt() -> tuple[int, int, str | None]:
            report.attempts += 1
            try:
                with self._slots:  # held while the body streams in, not while backing off or saving
                    return self._fetch(url, part, expected)
            except TransientFailure:
                raise
            except BaseException:
                discard(part)
                raise

        def give_up(failure: TransientFailure, tries: int) -> Exception:
            return BulkDownloadError(f"{failure} (gave up after {tries} attempts)", url=redact_url(url), path=rel)

        digests: list[str | None] = []

        def fetch() -> tuple[int, int]:
            lines, size, digest = self.transport.retry.run(
                attempt, what=f"Download of {rel}", give_up=give_up, on_failure=lambda: discard(part)
            )
            if self.options.check_counts and count is not None and lines != count and expected is None:
                lines = self._recount(part)  # the fast count includes blank lines: look again, exactly
            digests.append(digest)
            return lines, size

        lines, size = fetch()
        if self.options.check_counts and count is not None and lines != count:
            lines, size = self._second_opinion(rel, url, count, lines, fetch, part)
            report.count_mismatch = lines != count
        proved_by_count = self.options.check_counts and count is not None and lines == count
        if digests[-1] is not None and not proved_by_count:
            lines, size, report.unverified = self._unframed(rel, url, (lines, size, digests[-1]), fetch, digests, part)
        self._land(part, final)
        if self.ledger is not None:
            self.ledger.record(rel, url, lines, size, report.count_mismatch, unverified=report.unverified)
        report.lines, report.bytes = lines, size
        report.seconds = time.monotonic() - started
        log.info(
            "Downloaded %s: %d lines, %.2f MB in %.1f s (%.1f MB/s).",
            rel,
            lines,
            size / 1e6,
            report.seconds,
            size / 1e6 / max(report.seconds, 1e-6),
        )
        return report

    def _land(self, part: Any, final: Any) -> None:
        """Rename a checked file to its final name, if this attempt still holds the destination's lease."""
        if self.lease is None:
            replace(part, final)
            return
        try:
            with self.lease.renaming():
                replace(part, final)
        except BulkExportError:
            discard(part)
            raise

    def _fetch(self, url: str, part: Any, expected: str | None) -> tuple[int, int, str | None]:
        """One attempt: stream ``url`` into ``part``; returns (lines, bytes written, digest).

        ``digest`` (SHA-256 of what was written) is None when the framing proved the body whole; it is
        only computed for a body ended by the connection closing, to compare two copies of it.
        """
        response = self._open(url)
        scanner = NdjsonScanner(expected)
        started = last_log = time.monotonic()
        body = open_body(
            response, CHUNK_SIZE, min_rate=self.options.min_download_rate, window=self.options.min_rate_window
        )
        digest = None if body.framed else hashlib.sha256()
        try:
            with part.open("wb") as handle:
                for chunk in body:
                    write_in_slices(handle, chunk)
                    scanner.feed(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    now = time.monotonic()
                    if now - last_log >= PROGRESS_LOG_EVERY:
                        last_log = now
                        log.info(
                            "Downloading %s: %.1f MB so far (%.1f MB/s).",
                            redact_url(url),
                            scanner.bytes / 1e6,
                            scanner.bytes / 1e6 / (now - started),
                        )
            # Framing first: a short Content-Length says more than the cut line it leaves behind.
            body.check_complete()
            check_gzip_trailer(response)
            if body.trailing:
                log.warning("%s: ignored %d NUL bytes of padding after the gzip data.", redact_url(url), body.trailing)
            lines = scanner.finish()
        except IncompleteBody as exc:
            raise TransientFailure(str(exc)) from None
        except TruncatedFileError as exc:
            raise TransientFailure(str(exc)) from None
        except NotNdjsonError as exc:
            raise not_ndjson(url, response, exc) from None
        except NdjsonCheckError as exc:
            raise BulkDownloadError(f"{redact_url(url)}: {exc}.", url=redact_url(url)) from None
        except (CorruptBody, requests.exceptions.ContentDecodingError) as exc:
            # Bad compressed data is not a network hiccup: fetching it again gets the same bytes.
            raise BulkDownloadError(
                f"{redact_url(url)}: {exc}; the server sent data that does not decompress. Ask its operators "
                "to check the file, or kick off a new export.",
                url=redact_url(url),
                corrupt=True,
            ) from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            # read straight from http.client (see bulk/stream.py); disk errors are not in this list on purpose
            http.client.HTTPException,
            urllib3.exceptions.HTTPError,  # urllib3's reader (bodies stream.py does not read itself)
            ConnectionError,
            TimeoutError,
            ssl.SSLError,  # a TLS record that does not decrypt mid-body: the next try gets the bytes afresh
        ) as exc:
            raise TransientFailure(f"the connection broke mid-file ({type(exc).__name__})") from None
        finally:
            body.close()  # back to the pool if the body was read whole, else closed
        return lines, scanner.bytes, None if digest is None else digest.hexdigest()

    def _unframed(
        self,
        rel: str,
        url: str,
        first: tuple[int, int, str],
        fetch: Callable[[], tuple[int, int]],
        digests: list[str | None],
        part: Any,
    ) -> tuple[int, int, str | None]:
        """Nothing proved the body whole (no framing, no matching ``count``): apply ``unframed_bodies``.

        A body ended by the connection closing can be cut exactly at a line end (or after a gzip member)
        and still parse; without a manifest ``count`` (Medplum sends none) only a second copy can tell.
        Returns (lines, bytes, the reason to list it as unverified or None).
        """
        policy = self.options.unframed_bodies
        why = "no Content-Length, not chunked (ended by the connection closing) and no manifest count to check"
        if policy == "fail":
            discard(part)
            raise BulkDownloadError(
                f"{rel}: nothing proves the body complete ({why}). unframed_bodies='fail' refuses such files; "
                "set unframed_bodies='refetch' to land them when two copies agree, or 'mark' to land them "
                "listed as unverified.",
                url=redact_url(url),
                path=rel,
            )
        lines, size, digest = first
        if policy in ("refetch", "refetch_and_mark"):
            seen: set[tuple[int, str | None]] = {(size, digest)}
            for _ in range(2):  # at most three copies: land as soon as two agree
                discard(part)
                lines, size = fetch()
                if (size, digests[-1]) in seen:
                    break
                seen.add((size, digests[-1]))
                log.warning("%s: a second copy of an unframed body differs from the first; fetching again.", rel)
            else:
                discard(part)
                raise BulkDownloadError(
                    f"{rel}: three downloads of a body with no framing ({why}) all differ: the server "
                    "cuts it short. Retry the task later, or ask the server's operators.",
                    url=redact_url(url),
                    path=rel,
                )
            log.info("%s: two copies of an unframed body agree (%d bytes, SHA-256).", rel, size)
            if policy == "refetch":
                return lines, size, None
            why += "; two copies agreed"
        log.warning("Landing %s unverified: %s. Listed in the summary's 'unverified'.", rel, why)
        return lines, size, why

    def _second_opinion(
        self, rel: str, url: str, count: int, first: int, fetch: Callable[[], tuple[int, int]], part: Any
    ) -> tuple[int, int]:
        """The line count disagrees with the manifest: download once more and compare the two copies.

        Some servers count what they would export without the export's filters (the SMART reference
        server says 113 for a file holding 0). A second, complete copy with the same lines means the
        manifest is wrong, not the file: keep it with a warning (``strict_counts`` fails instead).
        """
        log.warning(
            "%s has %d resources but the manifest says %d: downloading it once more to tell a bad copy "
            "from a wrong manifest count.",
            rel,
            first,
            count,
        )
        discard(part)
        lines, size = fetch()
        where = {"url": redact_url(url), "path": rel, "lines": lines, "count": count}
        if lines == count:
            log.info("The second copy of %s has the %d resources the manifest announced.", rel, count)
        elif lines != first:
            discard(part)
            raise BulkDownloadError(
                f"{rel}: two complete downloads held {first} and {lines} resources (the manifest says "
                f"{count}): the server does not serve the same file twice. Retry the task later, or ask "
                "the server's operators.",
                **where,
            )
        elif self.options.strict_counts:
            discard(part)
            raise BulkDownloadError(
                f"{rel} has {lines} resources but the manifest says {count}, in two complete downloads: "
                "the manifest's count is wrong. strict_counts=True makes this fail; set strict_counts=False "
                "to keep such files with a warning (or check_counts=False not to compare at all).",
                **where,
            )
        else:
            log.warning(
                "%s has %d resources but the manifest says %d, in two complete downloads: keeping it (the "
                "server's count is wrong, e.g. it ignores the export's filters). Recorded in the summary's "
                "count_mismatches; set strict_counts=True to fail instead.",
                rel,
                lines,
                count,
            )
        return lines, size

    @staticmethod
    def _recount(part: Any) -> int:
        scanner = NdjsonScanner(exact=True)
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                scanner.feed(chunk)
        return scanner.finish()

    def _open(self, url: str) -> requests.Response:
        """GET ``url`` as a stream, following redirects ourselves so the token never changes origin."""
        session = self.transport.session_for(url, with_token=self._wants_token(url))
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                # The status line and headers within the request deadline; the body's pace is stream.py's guard.
                response = self.transport.request(
                    "GET",
                    current,
                    session=session,
                    headers=DOWNLOAD_HEADERS,
                    stream=True,
                    allow_redirects=False,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientFailure(f"could not connect ({type(exc).__name__})") from None
            if response.is_redirect:
                target = resolve(current, response.headers["Location"])
                response.close()
                if not is_http_url(target):
                    raise BulkDownloadError(
                        f"{redact_url(url)} redirects to a non-http(s) URL.",
                        url=redact_url(url),
                    )
                if session is not self.transport.plain_session and origin_of(target) != origin_of(current):
                    # Cerner sends files via 307 to pre-signed S3 URLs: the token must not follow
                    # (S3 even rejects a request carrying both).
                    log.debug("%s redirects to another origin: dropping the token.", redact_url(current))
                    session = self.transport.plain_session
                current = target
                continue
            if response.status_code == 200:
                return response
            raise self._http_error(url, response)
        raise BulkDownloadError(
            f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects.",
            url=redact_url(url),
        )

    def _http_error(self, url: str, response: requests.Response) -> Exception:
        status = response.status_code
        try:
            body = response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
        except Exception:
            body = b""
        finally:
            response.close()
        detail = f"HTTP {status} ({body_text(body)})"
        if status in TRANSIENT_STATUSES:
            retry_after = self.transport.retry.retry_after(response.headers.get("Retry-After"))
            return TransientFailure(f"{redact_url(url)}: {detail}", retry_after)
        hint = {
            401: "the access token was refused even after renewing it",
            403: "access denied: the token's scopes may not cover this type, or a pre-signed link expired",
            404: "the file is gone: the export may have expired or been deleted; kick off a new export",
            410: "the file has expired; kick off a new export",
        }.get(status, "the server refused the download")
        return BulkDownloadError(f"{redact_url(url)}: {detail}: {hint}.", url=redact_url(url), status=status)

    def _wants_token(self, url: str) -> bool:
        """The spec's rule plus ours: only if ``requiresAccessToken`` and only to trusted origins."""
        if not self.requires_access_token:
            why = "The manifest says requiresAccessToken=false: downloading without the token."
            self._log_once("no-token", why)
            return False
        self.transport.refuse_downgrade(url, "file URL")
        if not self.transport.trusts(url):
            origin = origin_of(url)
            self._log_once(
                origin,
                f"Files on {origin} are downloaded without the access token: that origin is not the FHIR "
                "server's, the status URL's or in allowed_hosts (add it there if it needs the token).",
            )
            return False
        return True

    def _log_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.info(message)

    # -- error files ----------------------------------------------------------------------------
    def _read_error_files(self, report: DownloadReport) -> None:
        """Classify the OperationOutcome issues of the export's ``error`` files by severity."""
        for f in report.files:
            if f.kind != "error":
                continue
            name = f.path.replace("\\", "/").rsplit("/", 1)[-1]
            path = self.destination / "error" / name
            try:
                with path.open("rb") as handle:
                    for number, (line, clipped) in enumerate(bounded_lines(handle, MAX_ISSUE_LINE), 1):
                        if clipped:
                            self._classify_clipped(report, line, name, number)
                        elif line.strip():
                            self._classify_line(report, line, name)
            except OSError as exc:
                issue = {"severity": "warning", "code": "client", "diagnostics": f"{name}: {exc}"}
                self._add_issue(report, issue)

    def _classify_line(self, report: DownloadReport, line: bytes, name: str) -> None:
        try:
            found = issues(json.loads(line))
        except ValueError:
            found = [{"severity": "warning", "code": "client", "diagnostics": f"{name}: a line is not JSON"}]
        for issue in found:
            self._add_issue(report, classify_issue(issue))

    def _classify_clipped(self, report: DownloadReport, head: bytes, name: str, number: int) -> None:
        """A line too long to parse in bounded memory: classify it by the fields its head shows."""
        text = head.decode("utf-8", "replace")
        severity = _FIELD["severity"].search(text)
        code = _FIELD["code"].search(text)
        diagnostics = _FIELD["diagnostics"].search(text)
        self._add_issue(
            report,
            {
                "severity": severity.group(1).lower() if severity else "warning",
                "code": code.group(1) if code else "client",
                "diagnostics": f"{name} line {number} is longer than {MAX_ISSUE_LINE // 1024} KiB and was not "
                f"parsed; it begins: {diagnostics.group(1) if diagnostics else text}",
            },
        )

    @staticmethod
    def _add_issue(report: DownloadReport, issue: dict[str, str]) -> None:
        issue = {k: clip_text(v) for k, v in issue.items()}
        if issue["severity"] in ERROR_SEVERITIES:
            report.error_issue_count += 1
            if len(report.error_issues) < MAX_LISTED_ISSUES:
                report.error_issues.append(issue)
            if report.error_issue_count <= MAX_LOGGED_ISSUES:
                log.error("Export error (%s %s): %s", issue["severity"], issue["code"], issue["diagnostics"])
        else:
            report.warning_count += 1
            if len(report.warnings) < MAX_LISTED_ISSUES:
                report.warnings.append(issue)
            if report.warning_count <= MAX_LOGGED_ISSUES:
                level = logging.WARNING if issue["severity"] == "warning" else logging.INFO
                log.log(level, "Export %s (%s): %s", issue["severity"], issue["code"], issue["diagnostics"])
