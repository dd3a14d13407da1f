"""Counting NDJSON lines and checking their ``resourceType`` while a file streams, at near-memchr speed.

The download benchmark compares us with ``curl``, so the per-byte work must stay in C: lines are
counted with :func:`count_newlines`, and the resourceType check counts occurrences of
``\\n{"resourceType":"<Type>"`` (how servers serialise resources: ``resourceType`` first, no spaces).
Only when those counts disagree for a chunk are its lines looked at one by one, with a regex on the
line head and ``json.loads`` as the last resort. Memory stays bounded by the chunk size, except
for a line whose type can only be found by parsing it whole (capped by ``max_line_bytes``).

Two checks make a cut or foreign body visible whatever its framing (a body delimited only by the
connection closing carries no length to compare with): the first non-blank line must be a JSON
object (an HTML error page served with 200 is not NDJSON: :class:`NotNdjsonError`), and a last line
without its newline must parse as a whole JSON object, else the body was cut short
(:class:`TruncatedFileError`, which the downloader retries).
"""

from __future__ import annotations

import json
import re

from airflow_provider_smart.exceptions import NdjsonCheckError, NotNdjsonError, TruncatedFileError

Buffer = bytes | bytearray  # the downloader feeds one reused bytearray

_HEAD = re.compile(rb'\s*\{\s*"resourceType"\s*:\s*"([^"\\]{0,64})"')
HEAD_PROBE = 4096  # bytes of an unfinished line enough to read a leading resourceType
MAX_LINE_BYTES = 64 * 1024 * 1024
FIRST_LINE_PROBE = 1024 * 1024  # the first line is parsed whole up to this size, else only its first byte
LAST_LINE_PROBE = 1024 * 1024  # an unterminated last line is parsed whole up to this size, else its end checked


__all__ = [
    "HEAD_PROBE",
    "MAX_LINE_BYTES",
    "NdjsonCheckError",
    "NdjsonScanner",
    "NotNdjsonError",
    "TruncatedFileError",
    "count_newlines",
    "line_type",
]


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
    is raised as soon as the bad line is seen. A final line without a newline counts too, if it is a
    whole JSON object (else :meth:`finish` raises :class:`TruncatedFileError`). With ``check_shape``
    (the default) a first non-blank line that is not a JSON object raises :class:`NotNdjsonError`.
    Blank lines are not counted, except that without ``expected_type`` only an ``exact`` scanner looks
    for empty lines inside a chunk (the fast one counts newlines and nothing else).
    """

    def __init__(
        self,
        expected_type: str | None = None,
        *,
        exact: bool = False,
        max_line_bytes: int = MAX_LINE_BYTES,
        check_shape: bool = True,
    ) -> None:
        self.expected = expected_type
        self.check_shape = check_shape
        self._first: bytearray | None = bytearray() if check_shape else None  # until the first line is judged
        self._tail = bytearray()  # the unfinished last line (its end only, past max_line_bytes)
        self._tail_clipped = False
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
        if self._first is not None:
            self._probe_first(chunk)
        first = chunk.find(b"\n")
        if first < 0:
            self._extend(chunk)
            self._keep_tail(chunk, fresh=False)
            return
        last = chunk.rfind(b"\n")
        rest = chunk[last + 1 :]
        self._keep_tail(rest, fresh=True)
        self._end_line(chunk, first)
        if last > first:
            self._middle(chunk, first, last)
        self._partial.clear()
        self._partial_nonblank = self._partial_checked = False
        if rest:
            self._extend(rest)

    def finish(self) -> int:
        """Account for a last line without a trailing newline; returns ``lines``.

        Raises :class:`TruncatedFileError` when that line is not a whole JSON object: the body stopped
        mid-line, so the file is incomplete whatever its framing said.
        """
        if self._first:
            self._judge_first(bytes(self._first).strip(), whole=True)
        self._first = None
        if self._partial_nonblank:
            self._check_last_line()
            if self.expected is not None and not self._partial_checked:
                self._check(bytes(self._partial))
            self.lines += 1
        self._partial.clear()
        self._tail.clear()
        self._partial_nonblank = self._partial_checked = False
        return self.lines

    # -- internals ------------------------------------------------------------------------------
    def _probe_first(self, chunk: Buffer) -> None:
        """Collect the first non-blank line (up to ``FIRST_LINE_PROBE``) and judge it once known."""
        assert self._first is not None
        if not self._first:
            chunk = chunk.lstrip()
            if not chunk:
                return
            if not chunk.startswith(b"{"):
                self._first = None
                raise NotNdjsonError(f"its first line is not a JSON object (it starts with {chunk[:40]!r})")
        end = chunk.find(b"\n")
        room = FIRST_LINE_PROBE - len(self._first)
        self._first += chunk[: end if 0 <= end < room else room]
        if end >= 0 or len(self._first) >= FIRST_LINE_PROBE:
            line, self._first = bytes(self._first), None
            self._judge_first(line.strip(), whole=end >= 0 and len(line) < FIRST_LINE_PROBE)

    @staticmethod
    def _judge_first(line: bytes, *, whole: bool) -> None:
        if not whole:
            return  # a huge first line: its "{" was checked; the last-line check still applies
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise NotNdjsonError(f"its first line is not a JSON object (it starts with {line[:40]!r})")

    def _keep_tail(self, data: Buffer, *, fresh: bool) -> None:
        """Remember the unfinished last line; past ``LAST_LINE_PROBE`` only its last bytes."""
        if fresh:
            self._tail.clear()
            self._tail_clipped = False
        self._tail += data
        if len(self._tail) > LAST_LINE_PROBE:
            del self._tail[:-HEAD_PROBE]
            self._tail_clipped = True

    def _check_last_line(self) -> None:
        tail = bytes(self._tail).strip()
        if self._tail_clipped:
            whole = tail.endswith(b"}")  # too long to parse again: its end is the best evidence
        else:
            try:
                whole = isinstance(json.loads(tail), dict)
            except ValueError:
                whole = False
        if not whole:
            raise TruncatedFileError(
                f"the body ended in the middle of line {self.lines + 1} (the last line has no newline and "
                "is not a complete JSON object)"
            )

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
