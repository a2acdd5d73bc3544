"""Where lines come from: files (plain or gzip), stdin and pipes, split into numbered lines.

A source is read in chunks; each chunk becomes one `Chunk` of complete lines, so a
trickle from a pipe moves on at once while a big file moves in large pieces. Lines longer
than the limit are skipped without ever being held whole in memory.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from logagg.errors import SourceError
from logagg.models import Checkpoint

FILE_CHUNK = 1 << 20  # bytes per read from a regular file
PIPE_CHUNK = 1 << 16  # bytes per read from a pipe: whatever is there, up to this
POLL_SECONDS = 0.1  # how often a blocked pipe read looks at the stop flag
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DECOMPRESS_SLICE = 16 * 1024  # compressed bytes decompressed at a time
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


class CorruptInput(Exception):
    """Compressed input that is damaged or cut short."""


class _Decompressing:
    """Reads through `read`, decompressing gzip or zstd input told by its magic bytes.

    Streams (stdin, pipes) and files alike; several members or frames in a row are read as
    one, as `gzip -d` and `zstd -d` do. Damaged or truncated input raises CorruptInput.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._new: Callable[[], Any] | None = None  # makes a decompressor for one member
        self._codec = ""
        self._unpack: Any = None
        self._started = False
        self._error: CorruptInput | None = None  # raised once what came before it is out

    def __call__(self, n: int) -> bytes:
        if self._error is not None:
            raise self._error
        while True:
            data = self._read(n)
            if not self._started:
                self._started = True
                self._choose(data)
            if self._unpack is None:
                return data
            out = []
            # Small slices, so that the data before a damaged spot still comes out.
            for at in range(0, max(len(data), 1), DECOMPRESS_SLICE):
                try:
                    out.append(self._feed(data[at : at + DECOMPRESS_SLICE]))
                except Exception as exc:
                    if not isinstance(exc, (zlib.error, EOFError)) and (
                        type(exc).__name__ != "ZstdError"  # zstandard's, imported lazily
                    ):
                        raise
                    self._error = CorruptInput(f"corrupt or truncated {self._codec} data ({exc})")
                    if any(out):
                        return b"".join(out)
                    raise self._error from None
            if any(out) or not data:
                return b"".join(out)

    def _choose(self, data: bytes) -> None:
        if data[:2] == GZIP_MAGIC:
            self._codec, self._new = "gzip", lambda: zlib.decompressobj(wbits=31)
        elif data[:4] == ZSTD_MAGIC:
            try:
                import zstandard
            except ImportError:
                raise CorruptInput(
                    "zstd input needs the zstandard package: pip install 'logagg[zstd]'"
                ) from None
            self._codec = "zstd"
            self._new = lambda: zstandard.ZstdDecompressor().decompressobj()
        if self._new is not None:
            self._unpack = self._new()

    def _feed(self, data: bytes) -> bytes:
        assert self._new is not None
        if not data:
            if not self._unpack.eof:
                raise EOFError("the input ended inside a compressed member")
            return b""
        out = self._unpack.decompress(data)
        while self._unpack.eof and self._unpack.unused_data:
            rest = self._unpack.unused_data
            self._unpack = self._new()
            out += self._unpack.decompress(rest)
        return bytes(out)


def _open(source: Source, stdin: BinaryIO | None) -> _Reader:
    if source.is_stdin:
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):
            read1 = getattr(stream, "read1", stream.read)
            return _Reader(_Decompressing(read1), 0, PIPE_CHUNK)
        raw_read = _Decompressing(lambda n: os.read(fd, n))
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
    except BaseException:
        raw.close()
        raise
    read = _Decompressing(raw.read)
    if stat.S_ISREG(st.st_mode):
        return _Reader(read, st.st_size, FILE_CHUNK, position=raw.tell, closer=raw.close)
    fd = raw.fileno()
    read = _Decompressing(lambda n: os.read(fd, n))
    return _Reader(read, 0, PIPE_CHUNK, poll_fd=fd, closer=raw.close)


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
        except CorruptInput as exc:
            raise SourceError(f"{name}: {exc}") from None
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
            self._first = False
            data = data.removeprefix(BOM)
        out = Chunk()
        pieces = data.split(b"\n")
        last = pieces.pop()  # the text after the last newline: not a complete line yet
        limit = self.max_line_bytes
        for i, piece in enumerate(pieces):
            self.line_no += 1
            if i == 0 and (self._partial or self._skipping):
                if self._skipping:
                    out.too_long.append((self.line_no, self._skipping + len(piece) + 1, self._head))
                    self._skipping = 0
                    continue
                self._partial += piece
                piece = bytes(self._partial)
                self._partial.clear()
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


FOLLOW_POLL_SECONDS = 0.2  # how often followed files are looked at when nothing came
FOLLOW_READS_PER_TURN = 8  # reads from one file before the next file gets a turn
FOLLOW_HEAD_BYTES = 256  # the start of a followed file, to notice it was rewritten


class _Followed:
    """One file read like `tail -F`: through rotation and truncation, from a checkpoint."""

    def __init__(
        self, source: Source, max_line_bytes: int, max_lines: int, start: Checkpoint | None
    ) -> None:
        self.source = source
        self.max_lines = max_lines
        self.path = os.path.abspath(source.path)
        self.max_line_bytes = max_line_bytes
        self.start = start
        self.fd: int | None = None
        self.device = self.inode = self.offset = 0
        self.head = b""  # the file's first bytes as read
        self.splitter = LineSplitter(max_line_bytes)

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # not there yet: looked for again at the next turn
        except OSError as exc:
            raise SourceError(f"{self.source.path}: cannot open: {exc.strerror}") from None
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise SourceError(f"{self.source.path}: is a directory")
        self.fd, self.device, self.inode = fd, st.st_dev, st.st_ino
        self.offset, line = 0, 0
        start, self.start = self.start, None
        same_file = start and (start.device, start.inode) == (st.st_dev, st.st_ino)
        if start and same_file and start.offset <= st.st_size:  # else: read it from the top
            self.offset, line = start.offset, start.line
            os.lseek(fd, self.offset, os.SEEK_SET)
        self.splitter = LineSplitter(self.max_line_bytes, line)
        self.head = os.pread(fd, FOLLOW_HEAD_BYTES, 0)
        return True

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _checkpoint(self, chunk: Chunk) -> Chunk:
        chunk.checkpoint = Checkpoint(
            self.path,
            self.device,
            self.inode,
            self.offset - self.splitter.pending,
            self.splitter.line_no,
        )
        return chunk

    def turn(self) -> Iterator[Chunk]:
        """What the file has now; at its end, notices rotation and truncation."""
        if self.fd is None and not self._open():
            return
        assert self.fd is not None
        for _ in range(FOLLOW_READS_PER_TURN):
            try:
                data = os.read(self.fd, FILE_CHUNK)
            except OSError as exc:
                raise SourceError(f"{self.source.path}: read failed: {exc.strerror}") from None
            if not data:
                break
            for piece in _pieces(data, self.max_lines):
                self.offset += len(piece)
                yield self._checkpoint(self.splitter.feed(piece))
        else:
            return  # more to read: the next turn goes on
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # moved away, the new file is not there yet: keep what is open
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            last = self.splitter.end()  # rotated: the old file is complete, read to its end
            if last.lines or last.too_long:
                yield self._checkpoint(last)
            self._close()
        elif st.st_size < self.offset or not self._same_head():
            # Truncated (and perhaps written again) in place: start again from the top.
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.offset = 0
            self.head = b""
            self.splitter = LineSplitter(self.max_line_bytes)

    def _same_head(self) -> bool:
        assert self.fd is not None
        now = os.pread(self.fd, FOLLOW_HEAD_BYTES, 0)
        if len(self.head) < FOLLOW_HEAD_BYTES and now.startswith(self.head):
            self.head = now  # the file was shorter than the head when opened
            return True
        return now.startswith(self.head) if len(now) < len(self.head) else now == self.head

    def close(self) -> None:
        self._close()


def _pieces(data: bytes, max_lines: int) -> Iterator[bytes]:
    """`data` cut after every `max_lines` newlines."""
    if data.count(b"\n") <= max_lines:
        yield data
        return
    start = 0
    while start < len(data):
        end = start
        for _ in range(max_lines):
            end = data.find(b"\n", end) + 1
            if end == 0:
                end = len(data)
                break
        yield data[start:end]
        start = end


def follow_chunks(
    sources: Sequence[Source],
    max_line_bytes: int,
    stop: threading.Event,
    start: Mapping[str, Checkpoint],
    max_lines: int,
) -> Iterator[tuple[Source, Chunk]]:
    """Lines of every file as they are written, like `tail -F`, until `stop` is set.

    Survives rotation (rename and a new file), truncation, and files that appear later.
    Each chunk holds at most `max_lines` lines and carries the Checkpoint of its file after
    them; `start` maps absolute paths to where a previous run stopped: the same file
    (device and inode) continues there, another file at that path is read from its start.
    """
    files = [
        _Followed(s, max_line_bytes, max_lines, start.get(os.path.abspath(s.path))) for s in sources
    ]
    try:
        while not stop.is_set():
            moved = False
            for followed in files:
                for chunk in followed.turn():
                    moved = True
                    yield followed.source, chunk
            if not moved:
                stop.wait(FOLLOW_POLL_SECONDS)
    finally:
        for followed in files:
            followed.close()
