"""Where lines come from: files, FIFOs, stdin and pipes, plain or compressed, split into
numbered lines (following files as they grow is in `logagg.follow`).

A source is read in chunks; each chunk becomes one `Chunk` of complete lines, so a
trickle from a pipe moves on at once while a big file moves in large pieces. Compressed
input is decompressed in bounded pieces (`logagg.compression`), and lines longer than the
limit are skipped without ever being held whole in memory. Every wait (a pipe, a FIFO
without a writer) happens in `select`, so a stop is seen within POLL_SECONDS.
"""

from __future__ import annotations

import functools
import os
import re
import select
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from logagg.compression import CorruptInput, Decoder
from logagg.errors import SourceError
from logagg.models import Checkpoint

FILE_CHUNK = 1 << 20  # bytes per read from a regular file
PIPE_CHUNK = 1 << 16  # bytes per read from a pipe: whatever is there, up to this
POLL_SECONDS = 0.1  # how often a blocked pipe read looks at the stop flag
BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 1024  # how much of an over-long line is kept to show
_BLANK_INSIDE = re.compile(rb"\n[ \t\x0b\x0c]*\n")  # a blank line after the first


@dataclass(slots=True)
class Chunk:
    """Complete lines from one read: `(line_no, bytes)` without the newline.

    Blank lines are left out (their numbers still count); over-long lines are listed in
    `too_long` as `(line_no, size, head)`.
    """

    lines: list[tuple[int, bytes]] = field(default_factory=list)
    too_long: list[tuple[int, int, bytes]] = field(default_factory=list)
    checkpoint: Checkpoint | None = None  # of a followed file, after these lines


@dataclass(frozen=True, slots=True)
class Source:
    """An input named on the command line: a path, or `-` for stdin."""

    path: str

    @property
    def name(self) -> str:
        return "<stdin>" if self.is_stdin else self.path

    @property
    def label(self) -> str:
        """The default event source for lines read from here: the file name without what
        compression and rotation add (`app.log.2.gz` is `app.log`), or stdin."""
        return "stdin" if self.is_stdin else base_name(self.path)

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"


_COMPRESSED = re.compile(r"\.(gz|zst|zstd)$")
_ROTATED = re.compile(r"(\.\d+|-\d{8}(\d{2})?)$")  # app.log.1, app.log-20251128(10)


def base_name(path: str) -> str:
    """A file's name without compression and rotation suffixes: `app.log.1.gz`,
    `app.log-20251128.zst` and `app.log` are all `app.log`."""
    name = os.path.basename(path)
    stripped = _ROTATED.sub("", _COMPRESSED.sub("", name))
    return stripped or name


class _Reader:
    """Plain byte chunks from one opened input (see Decoder.read)."""

    def __init__(
        self,
        decoder: Decoder,
        size: int,
        chunk: int,
        poll_fd: int | None = None,
        position: Callable[[], int] | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.decoder = decoder
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


def _open(source: Source, stdin: BinaryIO | None) -> _Reader:
    if source.is_stdin:
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):
            return _Reader(Decoder(getattr(stream, "read1", stream.read)), 0, PIPE_CHUNK)
        decoder = Decoder(lambda n: os.read(fd, n))
        if stat.S_ISREG(mode):
            return _Reader(decoder, 0, FILE_CHUNK)
        return _Reader(decoder, 0, PIPE_CHUNK, poll_fd=fd)
    fd = open_nonblocking(source.path)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{source.path}: is a directory")
        os.set_blocking(fd, True)  # reads of a pipe wait in select, where a stop is seen
    except BaseException:
        os.close(fd)
        raise
    decoder = Decoder(lambda n: os.read(fd, n))
    if stat.S_ISREG(st.st_mode):
        position = functools.partial(os.lseek, fd, 0, os.SEEK_CUR)
        return _Reader(decoder, st.st_size, FILE_CHUNK, position=position, closer=_closer(fd))
    return _Reader(decoder, 0, PIPE_CHUNK, poll_fd=fd, closer=_closer(fd))


def open_nonblocking(path: str) -> int:
    """A read-only descriptor of `path`, opened without waiting (a FIFO without a writer
    would block `open` itself, where no signal can stop it); SourceError if it cannot be."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _closer(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


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
            data = reader.decoder.read(reader.chunk)
        except CorruptInput as exc:
            raise SourceError(f"{name}: {exc}") from None
        except OSError as exc:
            raise SourceError(f"{name}: read failed: {exc.strerror or exc}") from None
        if data is None:  # read, but nothing decompressed from it yet
            continue
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


class LineSplitter:
    """Splits bytes, as they come, into numbered complete lines.

    `feed` returns the lines completed by a piece of input; `end` the last line when the
    input ends without a newline. `pending` is how many bytes wait for their newline.
    """

    def __init__(self, max_line_bytes: int, line_no: int = 0) -> None:
        self.max_line_bytes = max_line_bytes
        self.line_no = line_no  # number of the last complete line
        self._partial = bytearray()  # the start of a line whose newline has not come yet
        self._skipping = 0  # > 0 while inside an over-long line: its size so far
        self._head = b""
        self._first = line_no == 0

    @property
    def pending(self) -> int:
        return self._skipping or len(self._partial)

    def feed(self, data: bytes) -> Chunk:
        if self._first and data:
            if self._partial:  # the start of the input, held back below
                data = bytes(self._partial) + data
                self._partial.clear()
            if len(data) < len(BOM) and BOM.startswith(data):  # a BOM may be cut in two
                self._partial += data
                return Chunk()
            self._first = False
            data = data.removeprefix(BOM)
        out = Chunk()
        pieces = data.split(b"\n")
        last = pieces.pop()  # the text after the last newline: not a complete line yet
        limit = self.max_line_bytes
        if pieces and self._skipping:  # the end of an over-long line
            self.line_no += 1
            out.too_long.append((self.line_no, self._skipping + len(pieces[0]) + 1, self._head))
            self._skipping = 0
            del pieces[0]
        elif pieces and self._partial:  # the rest of the line the last piece of input began
            self._partial += pieces[0]
            pieces[0] = bytes(self._partial)
            self._partial.clear()
        if (
            pieces
            and pieces[0][-1:] not in (b"", b"\r")
            and not pieces[0].isspace()
            and b"\r" not in data
            and _BLANK_INSIDE.search(data) is None
            and len(pieces[0]) <= limit
            and (len(data) <= limit or max(map(len, pieces)) <= limit)
        ):  # the common case at once: short lines, none blank, no CR
            first = self.line_no + 1
            self.line_no += len(pieces)
            out.lines = list(zip(range(first, self.line_no + 1), pieces, strict=True))
            pieces = []
        for piece in pieces:
            self.line_no += 1
            if piece.endswith(b"\r"):
                piece = piece[:-1]
            if len(piece) > limit:
                out.too_long.append((self.line_no, len(piece) + 1, piece[:HEAD_BYTES]))
            elif piece and not piece.isspace():
                out.lines.append((self.line_no, piece))
        if self._skipping:
            self._skipping += len(last)
        elif last:
            self._partial += last
            if len(self._partial) > limit:
                self._skipping, self._head = len(self._partial), bytes(self._partial[:HEAD_BYTES])
                self._partial.clear()
        return out

    def end(self) -> Chunk:
        """The last line of an input that ended without a newline (as a Chunk)."""
        out = Chunk()
        if self._skipping:
            self.line_no += 1
            out.too_long.append((self.line_no, self._skipping, self._head))
        elif self._partial:
            self.line_no += 1
            piece = bytes(self._partial).removesuffix(b"\r")
            if piece and not piece.isspace():
                out.lines.append((self.line_no, piece))
        self._partial.clear()
        self._skipping = 0
        return out


def _split(
    chunks: Iterator[bytes], max_line_bytes: int, after_read: Callable[[], None] | None
) -> Iterator[Chunk]:
    splitter = LineSplitter(max_line_bytes)
    for data in chunks:
        if not data:  # the end of the input, not a stop
            last = splitter.end()
            if last.lines or last.too_long:
                yield last
            return
        if after_read:
            after_read()
        out = splitter.feed(data)
        if out.lines or out.too_long:
            yield out
