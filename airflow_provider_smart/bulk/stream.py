"""Reading one download's body: into a reused buffer, gzip decoded with zlib, checked whole, connection kept.

:func:`open_body` wraps a streamed ``requests`` response in a :class:`BodyReader`. Iterating it yields the
body's (decoded) bytes in order. For identity bodies every chunk is the same reused ``bytearray`` (or a
``bytes`` tail), filled by ``http.client``'s ``readinto`` straight from the socket's buffered reader (over
TLS, by :class:`TlsRecordReader`: a C call per record): no fresh buffer, no copy per chunk, and the
socket's read timeout still applies to every ``recv``. gzip bodies are read the same way and inflated with
zlib-ng's ``decompressobj`` (``wbits=31``: gzip framing, the CRC-32 and length trailer verified),
bypassing urllib3's decoder and its buffering. zlib-ng is a drop-in for the standard library's
:mod:`zlib` that inflates about twice as fast (benchmarks/README.md); the standard module takes over
where zlib-ng cannot be imported.

A chunk is only valid until the next one is requested: consumers must write or scan it, not keep it.

:meth:`BodyReader.check_complete` raises :class:`IncompleteBody` for a body shorter than its
``Content-Length`` or a gzip stream without its trailer. :meth:`BodyReader.close` returns the connection
to the pool when the body was read whole (``requests`` would otherwise see an unread body and drop the
socket: a new TCP, and over https a new TLS, handshake per file), and closes it in every other case.

Anything that is not a plain ``http.client`` response under urllib3 (a mocked adapter, an encoding we did
not ask for) falls back to ``iter_content``, as before.
"""

from __future__ import annotations

import functools
import http.client
import io
import select
import ssl
import threading
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import requests

from airflow_provider_smart.sessions import cut_socket

CHUNK_SIZE = 512 * 1024  # identity: bytes per readinto (see benchmarks/README.md for the measurement)
GZIP_READ_SIZE = 64 * 1024  # compressed bytes per readinto
# Decoded bytes per decompress() call at most: bounds memory against gzip bombs; 128 KiB was faster than
# 256 KiB and 1 MiB against nginx (each piece is scanned and written while still in the CPU's cache).
GZIP_MAX_OUT = 128 * 1024

Chunk = bytes | bytearray


@functools.cache
def inflate_module() -> ModuleType:
    """zlib-ng's zlib-compatible module (a dependency), else the standard library's :mod:`zlib`."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # a platform zlib-ng has no build for: same API, same checks, half the speed
        return zlib
    return zlib_ng


class IncompleteBody(Exception):
    """The body ended early, or came slower than the caller's minimum rate: worth retrying the whole file."""


class CorruptBody(Exception):
    """The gzip data does not decompress: the same bytes would come again, so not worth a retry."""


GZIP_CODINGS = ("gzip", "x-gzip")
GZIP_MAGIC = b"\x1f\x8b"


def _codings(response: requests.Response) -> list[str]:
    """The body's content codings in the order they were applied, ``identity`` left out."""
    header = response.headers.get("Content-Encoding", "")
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


def _encoding(response: requests.Response) -> str:
    return ", ".join(_codings(response)) or "identity"


def _decodable(coding: str) -> bool:
    from urllib3.response import HTTPResponse

    return coding in GZIP_CODINGS or coding in HTTPResponse.CONTENT_DECODERS


def _declared_length(response: requests.Response) -> int | None:
    declared = response.headers.get("Content-Length", "").strip()
    if not declared.isdigit() or "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    return int(declared)


def open_body(
    response: requests.Response, chunk_size: int = CHUNK_SIZE, *, min_rate: float = 0.0, window: float = 60.0
) -> BodyReader:
    """A :class:`BodyReader` over a ``stream=True`` response whose status and headers were read."""
    return BodyReader(response, chunk_size, min_rate=min_rate, window=window)


class BodyReader:
    """The body of one streamed response; iterate it once, then :meth:`check_complete` and :meth:`close`.

    ``received`` counts the bytes that came off the wire (after transfer decoding, before content
    decoding: what ``Content-Length`` counts); ``decoded`` the bytes yielded.

    ``min_rate`` (bytes/s, 0: off): a body arriving slower than that on average over ``window`` seconds
    has its socket cut by a watchdog thread and raises :class:`IncompleteBody`. The per-read timeout alone lets
    a server that drips one byte under it hold a download for days.
    """

    def __init__(
        self, response: requests.Response, chunk_size: int = CHUNK_SIZE, *, min_rate: float = 0.0, window: float = 60.0
    ) -> None:
        self.response = response
        self.min_rate = min_rate
        self.window = window
        # Progress is seen a read at a time: a read never asks for more than the window's minimum, so a
        # window that passes without one finishing really is too slow (the defaults make it CHUNK_SIZE).
        self.chunk_size = max(1, min(chunk_size, int(min_rate * window))) if min_rate > 0 else chunk_size
        self.stalled: str | None = None
        self._guard_stop = threading.Event()
        self.received = 0
        self.decoded = 0
        self.declared = _declared_length(response)
        codings = _codings(response)
        self.encoding = ", ".join(codings) or "identity"
        self.undecodable = [c for c in codings if not _decodable(c)]
        self.layers = len(codings)  # gzip mode: gzip layers to undo (a server may gzip twice)
        self.trailing = 0  # gzip mode: bytes after the last member that are not gzip data (ignored)
        fp = getattr(response.raw, "_fp", None)
        self._fp: http.client.HTTPResponse | None = fp if isinstance(fp, http.client.HTTPResponse) else None
        if self._fp is not None and not codings:
            self.mode = "identity"
        elif self._fp is not None and codings and all(c in GZIP_CODINGS for c in codings):
            self.mode = "gzip"
        else:
            self.mode = "fallback"  # urllib3 reads and decodes; it also releases the connection itself
        self._ended = False  # the body was read to its end (EOF, Content-Length or last chunk reached)
        self._gzip_eof = False  # gzip: the last member's trailer was read and verified
        self._chunks: Iterator[Chunk] | None = None

    # -- reading --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Chunk]:
        if self.undecodable:
            # urllib3 would pass such a body through still encoded, to be saved as if it were NDJSON
            raise CorruptBody(f"the body's Content-Encoding {', '.join(self.undecodable)!r} is not one we can decode")
        if self.min_rate > 0 and self.mode != "fallback":
            threading.Thread(target=self._guard, name="smart-download-rate", daemon=True).start()
        if self.mode == "identity":
            self._chunks = self._identity()
        elif self.mode == "gzip":
            self._chunks = self._gzip()
        else:
            self._chunks = self._fallback()
        return self._chunks

    def _identity(self) -> Iterator[Chunk]:
        fp = self._fp
        assert fp is not None
        buffer = bytearray(self.chunk_size)
        view = memoryview(buffer)
        size = len(buffer)
        source: http.client.HTTPResponse | TlsRecordReader = TlsRecordReader.over(fp, size) or fp
        try:
            while True:
                n = self._readinto(source, view)  # fills the buffer: as many recv()s as it needs, no copy
                if not n:
                    self._ended = True
                    return
                self.received += n
                self.decoded += n
                if n == size:
                    yield buffer
                else:  # the tail (or a short read at EOF): a copy of a partial chunk, once per file
                    yield view[:n].tobytes()
        finally:
            view.release()

    def _gzip(self) -> Iterator[Chunk]:
        """The body inflated through ``layers`` gzip decoders (``Content-Encoding: gzip, gzip`` is two)."""
        ended: list[bool] = []
        chunks: Iterator[Any] = self._compressed()
        for _ in range(self.layers):
            chunks = self._inflate(chunks, ended)
        for out in chunks:
            self.decoded += len(out)
            yield out
        # Every layer ended on a verified trailer. An empty body is an empty file only when framed
        # (Content-Length 0, or chunked): a connection closed before any byte is a cut, not a file.
        framed = self.declared is not None or bool(getattr(self._fp, "chunked", False))
        self._gzip_eof = all(ended) or (self.received == 0 and framed)

    def _compressed(self) -> Iterator[memoryview]:
        fp = self._fp
        assert fp is not None
        buffer = bytearray(min(self.chunk_size, GZIP_READ_SIZE))
        view = memoryview(buffer)
        source: http.client.HTTPResponse | TlsRecordReader = TlsRecordReader.over(fp, len(buffer)) or fp
        try:
            while n := self._readinto(source, view):
                self.received += n
                yield view[:n]
            self._ended = True
        finally:
            view.release()

    def _inflate(self, chunks: Iterator[Any], ended: list[bool]) -> Iterator[bytes]:
        """One gzip layer: members one after another (RFC 1952 allows concatenation), each trailer
        (CRC-32 and length) verified by zlib. NUL padding after the last member (tape-era writers, some
        object stores) is counted in ``trailing`` and ignored; any other bytes there are refused as
        corrupt: they may be a member whose header was damaged, and dropping them would lose data
        silently (gzip(1) ignores them with a warning). Appends to ``ended`` whether the layer's input
        ended on a member's end."""
        inflate = inflate_module()
        inflater = inflate.decompressobj(wbits=31)
        started = False  # a member is under way (its header or data seen)
        pending = b""  # the start of a next member split across reads (less than its magic)
        garbage = False
        for chunk in chunks:
            data: Any = pending + bytes(chunk) if pending else chunk
            pending = b""
            while data and not garbage:
                if inflater.eof:
                    if len(data) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(bytes(data)):
                        pending = bytes(data)  # maybe another member: decide with the next read
                        break
                    if bytes(data[: len(GZIP_MAGIC)]) != GZIP_MAGIC:
                        garbage = True
                        break
                    inflater = inflate.decompressobj(wbits=31)
                started = True
                try:
                    out = inflater.decompress(data, GZIP_MAX_OUT)
                except inflate.error as exc:
                    raise CorruptBody(f"the gzip body is corrupt ({exc})") from None
                data = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")
                if out:
                    yield out
            if garbage:
                if bytes(data).strip(b"\0"):
                    raise CorruptBody(
                        "bytes after the end of the gzip data are not gzip (a damaged member, or something "
                        "appended by a proxy); refusing the file rather than dropping them"
                    )
                self.trailing += len(data)
        ended.append(started and inflater.eof and not pending)  # a next member cut in its magic: incomplete

    def _readinto(self, fp: http.client.HTTPResponse | TlsRecordReader, view: memoryview) -> int:
        try:
            n = fp.readinto(view)
        except OSError:
            if self.stalled:
                raise IncompleteBody(self.stalled) from None
            raise
        if self.stalled:  # the cut socket reads as an early end of the body
            raise IncompleteBody(self.stalled)
        return n

    def _guard(self) -> None:
        """Cut the socket when a window passes with less than ``min_rate * window`` bytes received."""
        seen = 0
        while not self._guard_stop.wait(self.window):
            got = self.received - seen
            if got < self.min_rate * self.window:
                self.stalled = (
                    f"the download slowed to {got / self.window:.0f} B/s over {self.window:.0f} s, below "
                    f"min_download_rate ({self.min_rate:.0f} B/s)"
                )
                _cut(self._fp)
                return
            seen = self.received

    def _fallback(self) -> Iterator[Chunk]:
        for chunk in self.response.iter_content(self.chunk_size):
            self.decoded += len(chunk)
            yield chunk
        self._ended = True

    # -- after reading --------------------------------------------------------------------------
    def check_complete(self) -> None:
        """Raise :class:`IncompleteBody` unless the whole body arrived (call after iterating)."""
        if self.mode == "fallback":
            self._check_fallback()
            return
        if self.declared is not None and self.received < self.declared:
            raise IncompleteBody(f"the body ended after {self.received} of {self.declared} bytes")
        if self.mode == "gzip" and not self._gzip_eof:
            raise IncompleteBody(f"the gzip body ended without its trailer after {self.received} bytes")

    def _check_fallback(self) -> None:
        if self.declared is None:
            return  # chunked: urllib3 / http.client raise on a broken chunk stream
        tell = getattr(self.response.raw, "tell", None)
        if callable(tell):
            received = int(tell())  # bytes off the wire, compressed or not: what Content-Length counts
        elif self.encoding == "identity":
            received = self.decoded
        else:
            return
        if received < self.declared:
            raise IncompleteBody(f"the body ended after {received} of {self.declared} bytes")

    @property
    def framed(self) -> bool:
        """The wire framing says where the body ends (``Content-Length`` or chunked), so a cut shows.

        A body ended by the server closing the connection can be cut anywhere, even exactly at a line
        end, or after a gzip member when more members were to follow: nothing in it proves it whole.
        """
        chunked = "chunked" in self.response.headers.get("Transfer-Encoding", "").lower()
        return chunked or self.declared is not None

    @property
    def complete(self) -> bool:
        try:
            self.check_complete()
        except IncompleteBody:
            return False
        return self._ended

    def close(self) -> None:
        """Return the connection to the pool if the body was read whole, else close it."""
        self._guard_stop.set()
        chunks, self._chunks = self._chunks, None
        close = getattr(chunks, "close", None)
        if callable(close):
            close()  # a reader left half-way releases its buffer now, not when collected
        response = self.response
        fp = self._fp
        if self.mode != "fallback" and fp is not None and fp.isclosed() and self.complete and self._nothing_follows():
            # http.client has read the body to its end and closed its reader: the connection is clean.
            # Tell requests the content is consumed, so that close() does not shut the socket.
            response._content_consumed = True  # type: ignore[attr-defined]
            release = getattr(response.raw, "release_conn", None)
            if callable(release):
                release()
        response.close()

    def _nothing_follows(self) -> bool:
        """No byte waits after the body: anything there (a stray pipelined response) would be read as the
        next request's answer on this connection, so such a connection is closed, not pooled.

        urllib3 checks the socket before reusing a connection, but bytes the TLS layer already decrypted
        (the rest of the record the body ended in) are invisible to that check: ``pending()`` sees them.
        """
        sock = getattr(getattr(self.response.raw, "_connection", None), "sock", None)
        if sock is None:
            return True
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                return False
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable  # bytes, or the server's close: either way the connection is not clean

    def __enter__(self) -> BodyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TlsRecordReader:
    """Fills an https body's buffer with one C call per TLS record, then lets ``http.client`` read the end.

    ``HTTPResponse.readinto`` reaches a TLS socket through a buffered reader, ``SocketIO.readinto``,
    ``SSLSocket.recv_into`` and ``SSLSocket.read``: three Python calls per 16 KiB record, each holding the GIL
    that the other download threads wait for. Here a record is one call of the socket's ``_sslobj.read``
    (the socket's read timeout still applies). The bytes the buffered reader already holds (they came with
    the headers) are taken first, ``Content-Length`` bookkeeping stays ``http.client``'s, and its own
    ``readinto`` reads the last chunk, so the body ends, and the connection goes back to the pool, as usual.
    """

    def __init__(self, fp: http.client.HTTPResponse, buffered: Any, read_record: Any) -> None:
        self.fp = fp
        self.buffered = buffered  # http.client's reader over the socket
        self.read_record = read_record
        self.drained = False

    @classmethod
    def over(cls, fp: http.client.HTTPResponse, chunk_size: int) -> TlsRecordReader | None:
        """A reader for ``fp``'s body, or None when it is not a ``Content-Length`` body over TLS."""
        buffered = getattr(fp, "fp", None)
        sock = getattr(getattr(buffered, "raw", None), "_sock", None)
        read_record = getattr(getattr(sock, "_sslobj", None), "read", None)
        if not isinstance(sock, ssl.SSLSocket) or not isinstance(buffered, io.BufferedReader):
            return None
        if read_record is None or fp.chunked or fp.length is None or chunk_size <= io.DEFAULT_BUFFER_SIZE:
            return None  # chunk_size: what the buffered reader holds must fit in one chunk
        return cls(fp, buffered, read_record)

    def readinto(self, view: memoryview) -> int:
        length = self.fp.length
        if length is None or length <= len(view):
            return self.fp.readinto(view)  # the last chunk: http.client ends the body and frees the connection
        n = 0
        if not self.drained:
            held = len(self.buffered.peek(0))  # what came with the headers (at most one read if nothing did)
            n = self.buffered.readinto(view[:held])
            self.drained = True
        want = len(view)
        read_record = self.read_record
        try:
            while n < want:
                got = read_record(want - n, view[n:])
                if not got:
                    break
                n += got
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            pass  # the connection ended early: check_complete() compares with Content-Length
        self.fp.length = length - n
        return n


def _cut(fp: http.client.HTTPResponse | None) -> None:
    """Shut the socket under ``fp`` down: a read blocked on it returns at once."""
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        cut_socket(sock)
