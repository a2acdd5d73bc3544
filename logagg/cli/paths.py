"""The files a command writes, checked against the files it reads before any is opened.

An operator slip must never destroy data: `--db` or `--rejects` naming an input, the
rejects file naming the store, stdout appended to the store. Two names are the same file
when they resolve to the same path (for files that do not exist yet) or when they have
the same device and inode (hard links, symlinks, another spelling, the file on stdin).

`--rejects PATH` is opened without following a symlink at its last component; a symlink is
followed only when it leads to something that is not a regular file (/dev/null, a
terminal, a FIFO), where nothing can be overwritten. `/dev/stdout`, `/dev/stderr` and
`/dev/fd/N` name logagg's own descriptors, which are written as they are (never
truncated). Only after the opened file is known not to be the store or an input is a
regular file emptied.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from logagg.errors import LogaggError, UsageError

STORE_SIDE_FILES = ("", "-wal", "-shm", "-journal")  # SQLite's files for one store
_OWN_DESCRIPTOR = re.compile(r"/(?:dev|proc/self)/fd/(\d+)")
_STANDARD = {"/dev/stdout": 1, "/dev/stderr": 2}
_BUFFER = 1 << 16


@dataclass(frozen=True, slots=True)
class Reads:
    """What a command reads, and its store: the files its outputs must not be."""

    db: str | None  # --db: written, and opening a file as a store may turn it into one
    inputs: tuple[str, ...] = ()  # files read (not stdin)
    stdin: bool = False  # whether stdin is read too


@dataclass(frozen=True, slots=True)
class _File:
    """A file as named on the command line: its resolved name and, when it exists (and can
    be overwritten or fed back: a regular file or a FIFO), its device and inode."""

    label: str
    real: str | None
    ident: tuple[int, int] | None

    def same(self, other: _File) -> bool:
        if self.real is not None and self.real == other.real:
            return True
        return self.ident is not None and self.ident == other.ident


def _ident(st: os.stat_result) -> tuple[int, int] | None:
    if stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return st.st_dev, st.st_ino
    return None


def _named(path: str, label: str | None = None) -> _File:
    try:
        ident = _ident(os.stat(path))
    except (OSError, ValueError):
        ident = None
    return _File(label or path, os.path.realpath(path), ident)


def _descriptor(fd: int, label: str) -> _File | None:
    try:
        return _File(label, None, _ident(os.fstat(fd)))
    except OSError:
        return None


def _store_files(db: str | None) -> list[_File]:
    """The store's files (the database, its -wal, -shm and -journal), or none for a
    PostgreSQL URL."""
    if db is None or db.startswith(("postgresql://", "postgres://")):
        return []
    return [_named(db + suffix, db) for suffix in STORE_SIDE_FILES]


def _inputs(reads: Reads) -> list[_File]:
    files = [_named(p) for p in reads.inputs]
    if reads.stdin:
        stdin = _descriptor(0, "stdin")
        if stdin is not None:
            files.append(stdin)
    return files


def check_outputs(reads: Reads, *, rejects: str | None = None, writes_stdout: bool = False) -> None:
    """Raise UsageError when a file the command writes is one it reads, or the store.

    The store must not be an input; `rejects` (the `--rejects` path) neither the store nor
    an input; with `writes_stdout`, a regular file or FIFO on stdout neither. Nothing is
    opened.
    """
    db = reads.db
    store = _store_files(db)
    sources = _inputs(reads)
    for source in sources:
        if any(source.same(f) for f in store):
            raise UsageError(
                f"--db {db}: the store is also an input ({source.label}): refusing to write it"
            )
    if rejects is not None:
        target = _rejects_target(rejects)
        if any(target.same(f) for f in store):
            raise UsageError(f"--rejects {rejects}: is the store (--db {db}): refusing to write it")
        for source in sources:
            if target.same(source):
                raise UsageError(
                    f"--rejects {rejects}: is also an input ({source.label}): refusing to write it"
                )
    if writes_stdout:
        out = _descriptor(1, "stdout")
        if out is not None and out.ident is not None:
            if any(out.same(f) for f in store):
                raise UsageError(f"stdout is the store (--db {db}): refusing to write into it")
            for source in sources:
                if out.same(source):
                    raise UsageError(
                        f"stdout is also an input ({source.label}): refusing to write into it"
                    )


def _own_descriptor(path: str) -> int | None:
    """The descriptor `/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N` name."""
    if path in _STANDARD:
        return _STANDARD[path]
    match = _OWN_DESCRIPTOR.fullmatch(path)
    return int(match.group(1)) if match else None


def _rejects_target(path: str) -> _File:
    fd = _own_descriptor(path)
    if fd is not None:
        found = _descriptor(fd, path)
        return found if found is not None else _File(path, None, None)
    return _named(path)


class RejectsFile:
    """The `--rejects` file, open for writing. A write error is kept (one line, naming the
    file) and calls `on_failure` once; later writes are dropped. `close` flushes."""

    def __init__(self, fd: int, label: str, on_failure: Callable[[], None] | None) -> None:
        self._fd = fd
        self._label = label
        self._on_failure = on_failure
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self.failure: LogaggError | None = None

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.failure is not None:
                return
            self._buffer += data
            if len(self._buffer) >= _BUFFER:
                self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buffer)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.failure = LogaggError(f"--rejects {self._label}: {exc.strerror or exc}")
            if self._on_failure is not None:
                self._on_failure()
        finally:
            view.release()
            self._buffer.clear()

    def close(self) -> None:
        with self._lock:
            if self.failure is None and self._buffer:
                self._flush()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def open_rejects(
    path: str, reads: Reads, on_failure: Callable[[], None] | None = None
) -> RejectsFile:
    """Open `--rejects` as described in the module docstring; UsageError when it cannot be
    opened or turns out to be the store or an input (checked on the opened file)."""
    fd = _open_rejects(path)
    try:
        opened = _File(path, None, _ident(os.fstat(fd)))
        protected = _store_files(reads.db) + _inputs(reads)
        if any(opened.same(f) for f in protected):
            raise UsageError(f"--rejects {path}: is the store or an input: refusing to write it")
        if stat.S_ISREG(os.fstat(fd).st_mode) and _own_descriptor(path) is None:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return RejectsFile(fd, path, on_failure)


def _open_rejects(path: str) -> int:
    own = _own_descriptor(path)
    try:
        if own is not None:
            fd = os.dup(own)
            os.set_inheritable(fd, False)
            return fd
        # O_NONBLOCK: a FIFO without a reader is an error at once, never a hang.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            return _blocking(os.open(path, flags, 0o644))
        except OSError as exc:
            if exc.errno != errno.ELOOP or not os.path.islink(path):
                raise
        # A symlink: followed only to a device, a FIFO or a socket (never created).
        fd = _blocking(os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK))
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(
                f"--rejects {path}: is a symbolic link to a regular file: name the file itself"
            )
        return fd
    except FileNotFoundError:
        if os.path.islink(path):
            raise UsageError(f"--rejects {path}: is a symbolic link to nothing") from None
        raise UsageError(f"--rejects {path}: No such file or directory") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UsageError(f"--rejects {path}: a FIFO that nothing reads") from None
        raise UsageError(f"--rejects {path}: {exc.strerror or exc}") from None


def _blocking(fd: int) -> int:
    os.set_blocking(fd, True)
    return fd
