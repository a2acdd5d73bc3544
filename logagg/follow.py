"""Following files like `tail -F`, each from its checkpoint, until stopped.

A followed path survives rotation (a rotated file is read on until it has been quiet for
`rotate_wait` seconds, so that lines its writer adds after the rename are not lost),
truncation, files that appear later or cannot be read for a while (reported once, tried
again at every look), FIFOs (read as their writers come and go) and compressed files (read
decompressed). A checkpoint is the path, the file's device, inode and first bytes, and the
offset in its plain (decompressed) content before which every line is committed.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from logagg.compression import CorruptInput, Decoder, codec_of
from logagg.models import Checkpoint
from logagg.sources import FILE_CHUNK, Chunk, LineSplitter, Source

FOLLOW_POLL_SECONDS = 0.2  # how often followed files are looked at when nothing came
FOLLOW_READS_PER_TURN = 8  # reads from one file before the next file gets a turn
FOLLOW_HEAD_BYTES = 256  # the start of a followed file, to notice it was rewritten
ROTATE_WAIT_SECONDS = 5.0  # a rotated file is read until it was quiet for this long

Notice = Callable[[str, bool], None]  # (message naming the file, is it a problem)


class _Open:
    """One opened file of a followed path: where its plain content has been read to."""

    def __init__(self, fd: int, st: os.stat_result, max_line_bytes: int) -> None:
        self.fd = fd
        self.device, self.inode = st.st_dev, st.st_ino
        self.regular = stat.S_ISREG(st.st_mode)
        self.decoder = Decoder(self._raw, until_end=False)
        self.splitter = LineSplitter(max_line_bytes)
        self.offset = 0  # plain bytes read (decompressed ones, for a compressed file)
        self.skip = 0  # plain bytes still to pass over, to reach a checkpoint
        self.head = b""  # the file's first bytes as read
        self.quiet_since = 0.0  # when a rotated file last grew
        self.grew = False  # the last turn read something
        self.more = False  # the last turn stopped before the end
        self.broken = False  # its compressed data is damaged: nothing more is read
        self.failed = False  # a read failed: opened again (from its checkpoint)

    def _raw(self, n: int) -> bytes:
        try:
            return os.read(self.fd, n)
        except BlockingIOError:  # a FIFO whose writer has written nothing yet
            return b""

    def resume(self, start: Checkpoint, max_line_bytes: int) -> None:
        """Continue after `start`, a checkpoint of this very file."""
        head = os.pread(self.fd, 4, 0)
        self.decoder = Decoder(self._raw, until_end=False, codec=codec_of(head))
        if self.decoder.codec:
            self.skip = start.offset  # decompressed again, up to the checkpoint
        else:
            os.lseek(self.fd, start.offset, os.SEEK_SET)
            self.offset = start.offset
        self.splitter = LineSplitter(max_line_bytes, start.line)

    def position(self) -> int:
        """How far the file itself has been read."""
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def checkpoint(self, path: str) -> Checkpoint:
        if len(self.head) < FOLLOW_HEAD_BYTES and not self.failed:
            try:
                if self.position() > len(self.head):
                    now = os.pread(self.fd, FOLLOW_HEAD_BYTES, 0)
                    if now.startswith(self.head):  # else rewritten: same_head will tell
                        self.head = now
            except OSError:
                pass  # the head as it was: the file is opened again anyway
        offset = self.offset - self.splitter.pending
        return Checkpoint(path, self.device, self.inode, offset, self.splitter.line_no, self.head)

    def same_head(self) -> bool:
        """Whether the file still starts as it did (it was not rewritten in place)."""
        now = os.pread(self.fd, FOLLOW_HEAD_BYTES, 0)
        if len(self.head) < FOLLOW_HEAD_BYTES and now.startswith(self.head):
            self.head = now  # the file was shorter than the head when read
            return True
        return now.startswith(self.head) if len(now) < len(self.head) else now == self.head

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Followed:
    """One path read like `tail -F`: the file at it now, and rotated ones being finished."""

    def __init__(
        self,
        source: Source,
        max_line_bytes: int,
        max_lines: int,
        start: Checkpoint | None,
        rotate_wait: float,
        notice: Notice,
    ) -> None:
        self.source = source
        self.name = source.path
        self.path = os.path.abspath(source.path)
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self.start = start
        self.rotate_wait = rotate_wait
        self.notice = notice
        self.current: _Open | None = None
        self.rotated: list[_Open] = []
        self.problem: str | None = None  # the one reported, until it is solved

    # --- problems, each reported once --------------------------------------------------------

    def _report(self, problem: str) -> None:
        if problem != self.problem:
            self.problem = problem
            self.notice(f"{self.name}: {problem}", True)

    def _solved(self) -> None:
        if self.problem is not None:
            self.problem = None
            self.notice(f"{self.name}: readable again", False)

    # --- opening -----------------------------------------------------------------------------

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # not there yet: looked for again at the next turn
        except OSError as exc:
            self._report(f"cannot open: {exc.strerror or exc} (retrying)")
            return False
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                self._report("is a directory (retrying)")
                return False
            opened = _Open(fd, st, self.max_line_bytes)
            start, self.start = self.start, None
            if opened.regular and start is not None and self._resumes(opened, st, start):
                opened.resume(start, self.max_line_bytes)
            if opened.regular:
                opened.head = os.pread(fd, FOLLOW_HEAD_BYTES, 0)
        except OSError as exc:
            os.close(fd)
            self._report(f"cannot read: {exc.strerror or exc} (retrying)")
            return False
        self._solved()
        self.current = opened
        return True

    @staticmethod
    def _resumes(opened: _Open, st: os.stat_result, start: Checkpoint) -> bool:
        """Whether `start` is a checkpoint of the opened file: the same device and inode,
        the same first bytes, and (plain) no shorter than the checkpoint's offset."""
        if (start.device, start.inode) != (opened.device, opened.inode):
            return False
        if start.head and os.pread(opened.fd, len(start.head), 0) != start.head:
            return False  # rewritten in place, or another file with the inode
        head = os.pread(opened.fd, 4, 0)
        return bool(codec_of(head)) or start.offset <= st.st_size

    # --- reading -----------------------------------------------------------------------------

    def _read(self, f: _Open, live: bool) -> Iterator[Chunk]:
        """What `f` has now, up to FOLLOW_READS_PER_TURN reads; live: with checkpoints."""
        f.grew = f.more = False
        for _ in range(FOLLOW_READS_PER_TURN):
            data = f.decoder.read(FILE_CHUNK)
            if data is None:  # compressed bytes that gave nothing yet
                f.grew = True
                continue
            if not data:
                if f.skip and live:  # its content ends before the checkpoint: not that file
                    raise _Rewritten
                return
            f.grew = True
            if f.skip:
                passed = min(f.skip, len(data))
                f.skip -= passed
                f.offset += passed
                data = data[passed:]
                if not data:
                    continue
            for piece in _pieces(data, self.max_lines):
                f.offset += len(piece)
                chunk = f.splitter.feed(piece)
                if live and f.regular:
                    chunk.checkpoint = f.checkpoint(self.path)
                    yield chunk
                elif chunk.lines or chunk.too_long:
                    yield chunk
        f.more = True

    def _guarded(self, f: _Open, live: bool) -> Iterator[Chunk]:
        """`_read`, with damaged data and read errors reported instead of raised."""
        try:
            yield from self._read(f, live)
        except CorruptInput as exc:
            self._report(str(exc))
            f.broken = True
        except OSError as exc:
            self._report(f"read failed: {exc.strerror or exc} (retrying)")
            f.failed = True

    def turn(self) -> Iterator[Chunk]:
        """What the files have now; at the end of the current one, notices rotation,
        truncation and rewriting; lets rotated files go once they have been quiet."""
        now = time.monotonic()
        for old in list(self.rotated):
            yield from self._finish_rotated(old, now)
        for _ in range(2):  # once more after a rotation, to start on the new file at once
            if self.current is None and not self._open():
                return
            f = self.current
            assert f is not None
            if not f.broken:
                try:
                    yield from self._guarded(f, live=True)
                except _Rewritten:
                    self._restart()
                    continue
                if f.failed:  # opened again at the next turn, from where it was
                    self.start = f.checkpoint(self.path) if f.regular else None
                    self._drop()
                    return
                if f.more:
                    return  # more to read: the next turn goes on
            if not self._moved_on(f):
                return

    def _moved_on(self, f: _Open) -> bool:
        """At the end of `f`: whether another file is at the path now (or `f` was
        rewritten), so that reading starts on it."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # moved away and no new file yet (or unreadable): keep `f`
        if (st.st_dev, st.st_ino) != (f.device, f.inode):
            f.quiet_since = time.monotonic()
            if not f.broken:
                self.rotated.append(f)  # read on until quiet for rotate_wait
            else:
                f.close()
            self.current = None
            return True
        try:
            rewritten = f.regular and (st.st_size < f.position() or not f.same_head())
        except OSError as exc:
            self._report(f"read failed: {exc.strerror or exc} (retrying)")
            self.start = f.checkpoint(self.path)  # opened again, from where it was
            self._drop()
            return False
        if rewritten:
            self._restart()  # truncated (and perhaps written again) in place
            return True
        return False

    def _restart(self) -> None:
        """Read the file at the path from its start again."""
        self._drop()
        self.start = None

    def _drop(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def _finish_rotated(self, f: _Open, now: float) -> Iterator[Chunk]:
        """A rotated file: read what came; once quiet for rotate_wait, its last line
        without a newline is its last line, and it is let go."""
        if not f.broken:
            yield from self._guarded(f, live=False)
        if f.broken or f.failed:
            pass  # let go: nothing more can be read from it
        elif f.grew or f.more:
            f.quiet_since = now
            return
        elif now - f.quiet_since < self.rotate_wait:
            return
        else:
            try:
                rest = f.decoder.finish()
            except CorruptInput as exc:
                self._report(str(exc))
                rest = b""
            if rest:
                chunk = f.splitter.feed(rest)
                if chunk.lines or chunk.too_long:
                    yield chunk
            last = f.splitter.end()
            if last.lines or last.too_long:
                yield last
        f.close()
        self.rotated.remove(f)

    def close(self) -> None:
        self._drop()
        for f in self.rotated:
            f.close()
        self.rotated.clear()


class _Rewritten(Exception):
    """A file's content ends before its checkpoint: it is not the file checkpointed."""


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
    rotate_wait: float = ROTATE_WAIT_SECONDS,
    notice: Notice | None = None,
) -> Iterator[tuple[Source, Chunk]]:
    """Lines of every file as they are written, like `tail -F`, until `stop` is set.

    Each chunk holds at most `max_lines` lines; a chunk of the file now at a path carries
    its Checkpoint after them. `start` maps absolute paths to where a previous run
    stopped: the same file (device, inode and first bytes) continues there, another one
    is read from its start. A path that cannot be read is reported through
    `notice(message, True)` once, and `notice(message, False)` once it can be again.
    """
    files = [
        _Followed(
            s,
            max_line_bytes,
            max_lines,
            start.get(os.path.abspath(s.path)),
            rotate_wait,
            notice or (lambda message, problem: None),
        )
        for s in sources
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
