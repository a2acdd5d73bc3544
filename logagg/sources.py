"""Where lines come from: files (plain or gzip), stdin and pipes, split into numbered lines.

A source is read in chunks; each chunk becomes one `Chunk` of complete lines, so a
trickle from a pipe moves on at once while a big file moves in large pieces. Lines longer
than the limit are skipped without ever being held whole in memory.
"""

from __future__ import annotations

import gzip
import os
import select
import stat
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from logagg.errors import SourceError

FILE_CHUNK = 1 << 20  # bytes per read from a regular file
PIPE_CHUNK = 1 << 16  # bytes per read from a pipe: whatever is there, up to this
POLL_SECONDS = 0.1  # how often a blocked pipe read looks at the stop flag
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 1024  # how much of an over-long line is kept to show


@dataclass(slots=True)
class Chunk:
    """Complete lines from one read: `(line_no, bytes)` without the newline.

    Blank lines are left out (their numbers still count); over-long lines are listed in
    `too_long` as `(line_no, size, head)`.
    """

    lines: list[tuple[int, bytes]] = field(default_factory=list)
    too_long: list[tuple[int, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Source:
    """An input named on the command line: a path, or `-` for stdin."""

    path: str

    @property
    def name(self) -> str:
        return "<stdin>" if self.is_stdin else self.path

    @property
    def label(self) -> str:
        """The default event source for lines read from here: the file name, or stdin."""
        return "stdin" if self.is_stdin else os.path.basename(self.path)

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"


class _Reader:
    """Byte chunks from one opened input; `read` returns b'' at end of input."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        size: int,
        chunk: int,
        poll_fd: int | None = None,
        position: Callable[[], int] | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.read = read
        self.size = size
        self.chunk = chunk
        self.poll_fd = poll_fd
        self._position = position
        self._closer = closer

    def position(self) -> int:
        return self._position() if self._position else 0

    def close(self) -> None:
        if self._closer:
            self._closer()


class _MaybeGunzip:
    """Reads through `read`, decompressing when the input starts with gzip's magic bytes.

    For streams that cannot seek (stdin, pipes); several gzip members in a row are read as
    one, as `gzip -d` does. A truncated stream raises EOFError, corrupt data zlib.error.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._inflate: Any = None
        self._started = False

    def __call__(self, n: int) -> bytes:
        while True:
            data = self._read(n)
            if not self._started:
                self._started = True
                if data[:2] == GZIP_MAGIC:
                    self._inflate = zlib.decompressobj(wbits=31)
            if self._inflate is None:
                return data
            if not data:
                if not self._inflate.eof:
                    raise EOFError("compressed data ended before the end-of-stream marker")
                return b""
            out = self._inflate.decompress(data)
            while self._inflate.eof and self._inflate.unused_data:
                rest = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=31)
                out += self._inflate.decompress(rest)
            if out:
                return out


def _open(source: Source, stdin: BinaryIO | None) -> _Reader:
    if source.is_stdin:
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):
            read1 = getattr(stream, "read1", stream.read)
            return _Reader(_MaybeGunzip(read1), 0, PIPE_CHUNK)
        raw_read = _MaybeGunzip(lambda n: os.read(fd, n))
        if stat.S_ISREG(mode):
            return _Reader(raw_read, 0, FILE_CHUNK)
        return _Reader(raw_read, 0, PIPE_CHUNK, poll_fd=fd)
    try:
        raw = open(source.path, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
    except FileNotFoundError:
        raise SourceError(f"{source.path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{source.path}: is a directory") from None
    except OSError as exc:
        raise SourceError(f"{source.path}: cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(raw.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{source.path}: is a directory")
        regular = stat.S_ISREG(st.st_mode)
        magic = raw.read(2) if regular else b""
        if regular:
            raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if magic == GZIP_MAGIC:
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")

        def close_both() -> None:
            unzipped.close()
            raw.close()

        return _Reader(unzipped.read1, st.st_size, FILE_CHUNK, position=raw.tell, closer=close_both)
    if regular:
        return _Reader(raw.read, st.st_size, FILE_CHUNK, position=raw.tell, closer=raw.close)
    fd = raw.fileno()
    return _Reader(lambda n: os.read(fd, n), 0, PIPE_CHUNK, poll_fd=fd, closer=raw.close)


def _byte_chunks(reader: _Reader, stop: threading.Event, name: str) -> Iterator[bytes]:
    """Chunks as they are read, until end of input or until `stop` is set.

    At end of input it yields one last empty chunk, so that a stop is told from the end.
    """
    while not stop.is_set():
        if reader.poll_fd is not None:
            ready, _, _ = select.select([reader.poll_fd], [], [], POLL_SECONDS)
            if not ready:
                continue
        try:
            data = reader.read(reader.chunk)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise SourceError(f"{name}: corrupt or truncated gzip data ({exc})") from None
        except OSError as exc:
            raise SourceError(f"{name}: read failed: {exc.strerror or exc}") from None
        yield data
        if not data:
            return


def read_chunks(
    source: Source,
    max_line_bytes: int,
    stop: threading.Event,
    stdin: BinaryIO | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[Chunk]:
    """Numbered lines of `source`, a `Chunk` per read; raises SourceError on I/O failure.

    A UTF-8 BOM at the start, CR before LF and a last line without a newline are
    handled; blank and whitespace-only lines are skipped. `on_progress(position, size)`
    is called after each read for regular files.
    """
    reader = _open(source, stdin)
    try:
        yield from _split(
            _byte_chunks(reader, stop, source.name),
            max_line_bytes,
            (lambda: on_progress(reader.position(), reader.size))
            if on_progress and reader.size
            else None,
        )
    finally:
        reader.close()


def _split(
    chunks: Iterator[bytes], max_line_bytes: int, after_read: Callable[[], None] | None
) -> Iterator[Chunk]:
    line_no = 0
    partial = bytearray()  # the start of a line whose newline has not come yet
    skipping = 0  # > 0 while inside an over-long line: its size so far
    head = b""
    first = True
    at_end = False
    for data in chunks:
        if not data:
            at_end = True
            break
        if after_read:
            after_read()
        if first:
            first = False
            data = data.removeprefix(BOM)
        out = Chunk()
        pieces = data.split(b"\n")
        last = pieces.pop()  # the text after the last newline: not a complete line yet
        for i, piece in enumerate(pieces):
            line_no += 1
            if i == 0 and (partial or skipping):
                if skipping:
                    out.too_long.append((line_no, skipping + len(piece) + 1, head))
                    skipping = 0
                    continue
                partial += piece
                piece = bytes(partial)
                partial.clear()
            if piece.endswith(b"\r"):
                piece = piece[:-1]
            if len(piece) > max_line_bytes:
                out.too_long.append((line_no, len(piece) + 1, piece[:HEAD_BYTES]))
            elif piece and not piece.isspace():
                out.lines.append((line_no, piece))
        if skipping:
            skipping += len(last)
        elif last:
            partial += last
            if len(partial) > max_line_bytes:
                skipping, head = len(partial), bytes(partial[:HEAD_BYTES])
                partial.clear()
        if out.lines or out.too_long:
            yield out
    if not at_end:
        return  # stopped: a partial last line is not a line
    if skipping:
        yield Chunk(too_long=[(line_no + 1, skipping, head)])
    elif partial:
        piece = bytes(partial).removesuffix(b"\r")
        if piece and not piece.isspace():
            yield Chunk(lines=[(line_no + 1, piece)])
