"""Counting NDJSON lines and checking their ``resourceType`` while a file streams, at near-memchr speed.

The download benchmark compares us with ``curl``, so the per-byte work must stay in C: lines are
counted with :func:`count_newlines`, and the resourceType check counts occurrences of
``\\n{"resourceType":"<Type>"`` (how servers serialise resources: ``resourceType`` first, no spaces).
Only when those counts disagree for a chunk are its lines looked at one by one, with a regex on the
line head and ``json.loads`` as the last resort. Memory stays bounded by the chunk size, except
for a line whose type can only be found by parsing it whole (capped by ``max_line_bytes``).
"""

from __future__ import annotations

import json
import re

from airflow_provider_smart.exceptions import NdjsonCheckError

Buffer = bytes | bytearray  # the downloader feeds one reused bytearray

_HEAD = re.compile(rb'\s*\{\s*"resourceType"\s*:\s*"([^"\\]{0,64})"')
HEAD_PROBE = 4096  # bytes of an unfinished line enough to read a leading resourceType
MAX_LINE_BYTES = 64 * 1024 * 1024


__all__ = ["HEAD_PROBE", "MAX_LINE_BYTES", "NdjsonCheckError", "NdjsonScanner", "count_newlines", "line_type"]


def count_newlines(data: Buffer) -> int:
    """The number of ``\n`` in ``data``, about 5x faster than ``data.count(b"\n")`` on CPython.

    ``bytes.count`` with a one-byte needle is a plain byte loop, while deleting one byte runs on
    ``memchr``; the benchmark's download throughput against curl hinges on this (see benchmarks/).
    """
    return len(data) - len(data.replace(b"\n", b""))


def _blank(data: Buffer) -> bool:
    return not data or data.isspace()


def line_type(line: Buffer) -> str | None:
    """The top-level ``resourceType`` of one NDJSON line (None if it has none)."""
    match = _HEAD.match(line)
    if match:
        return match.group(1).decode("utf-8", "replace")
    try:
        resource = json.loads(line)
    except ValueError:
        raise NdjsonCheckError("a line is not valid JSON") from None
    value = resource.get("resourceType") if isinstance(resource, dict) else None
    return value if isinstance(value, str) else None


class NdjsonScanner:
    """Feed it the decoded bytes of one file in order; ``lines`` is the number of non-blank lines.

    With ``expected_type`` every line's resourceType must equal it, else :class:`NdjsonCheckError`
    is raised as soon as the bad line is seen. A final line without a newline counts too.
    Blank lines are not counted, except that without ``expected_type`` only an ``exact`` scanner looks
    for empty lines inside a chunk (the fast one counts newlines and nothing else).
    """

    def __init__(
        self, expected_type: str | None = None, *, exact: bool = False, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self.expected = expected_type
        self.exact = exact
        self.max_line_bytes = max_line_bytes
        self.lines = 0
        self.bytes = 0
        if expected_type is not None:
            self._prefix = b'{"resourceType":"' + expected_type.encode() + b'"'
            self._nl_prefix = b"\n" + self._prefix
        self._partial = bytearray()  # checking: the unfinished line (or its head) so far
        self._partial_nonblank = False  # the unfinished line has a non-whitespace byte
        self._partial_checked = False  # checking: the unfinished line's type is already verified

    # -- public ---------------------------------------------------------------------------------
    def feed(self, chunk: Buffer) -> None:
        self.bytes += len(chunk)
        first = chunk.find(b"\n")
        if first < 0:
            self._extend(chunk)
            return
        last = chunk.rfind(b"\n")
        self._end_line(chunk, first)
        if last > first:
            self._middle(chunk, first, last)
        self._partial.clear()
        self._partial_nonblank = self._partial_checked = False
        if last + 1 < len(chunk):
            self._extend(chunk[last + 1 :])

    def finish(self) -> int:
        """Account for a last line without a trailing newline; returns ``lines``."""
        if self._partial_nonblank:
            if self.expected is not None and not self._partial_checked:
                self._check(bytes(self._partial))
            self.lines += 1
        self._partial.clear()
        self._partial_nonblank = self._partial_checked = False
        return self.lines

    # -- internals ------------------------------------------------------------------------------
    def _check(self, line: Buffer) -> None:
        if line.startswith(self._prefix):
            return
        found = line_type(line.strip())
        if found != self.expected:
            raise NdjsonCheckError(
                f"line {self.lines + 1} has resourceType {found!r}, "
                f"but the manifest lists this file as {self.expected!r}"
            )

    def _end_line(self, chunk: Buffer, first: int) -> None:
        """The line that was in progress ends at ``chunk[first]``."""
        head = chunk[:first]
        if self.expected is None:
            if self._partial_nonblank or not _blank(head):
                self.lines += 1
            return
        if self._partial_checked:
            self.lines += 1
            return
        line = bytes(self._partial) + head if self._partial else head
        if not _blank(line):
            self._check(line)
            self.lines += 1

    def _middle(self, chunk: Buffer, first: int, last: int) -> None:
        """Complete lines between the first and last newline of ``chunk``."""
        newlines = count_newlines(chunk) - 1  # those in [first, last): all of them but the one at ``last``
        if self.expected is None:
            # Searching for blank lines costs more than counting (short needles get no skip-ahead), so
            # only ``exact`` scanners do; the downloader recounts exactly when a count disagrees.
            clean = not self.exact or (
                chunk.find(b"\n\n", first, last + 1) < 0 and chunk.find(b"\n\r\n", first, last + 1) < 0
            )
            if clean:
                self.lines += newlines
                return
            self.lines += sum(1 for line in chunk[first + 1 : last].split(b"\n") if not _blank(line))
            return
        if chunk.count(self._nl_prefix, first, last) == newlines:
            self.lines += newlines  # the fast path: every line starts with the expected prefix
            return
        for line in chunk[first + 1 : last].split(b"\n"):
            if not _blank(line):
                self._check(line)
                self.lines += 1

    def _extend(self, data: Buffer) -> None:
        """More of an unfinished line (``data`` holds no newline)."""
        if not self._partial_nonblank and not _blank(data):
            self._partial_nonblank = True
        if self.expected is None or self._partial_checked:
            return
        self._partial += data
        if len(self._partial) < HEAD_PROBE:
            return
        head = bytes(self._partial[:HEAD_PROBE])
        if head.startswith(self._prefix) or _HEAD.match(head):
            self._check(head)  # the type is decided by the head: the rest need not be kept
            self._partial_checked = True
            self._partial.clear()
        elif len(self._partial) > self.max_line_bytes:
            raise NdjsonCheckError(
                f"line {self.lines + 1} is longer than {self.max_line_bytes // 2**20} MiB "
                "and does not start with its resourceType, so it cannot be checked while streaming; "
                "use check_resource_types=False"
            )
