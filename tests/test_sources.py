"""Reading numbered lines from real files, gzip files and pipes."""

from __future__ import annotations

import gzip
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from helpers import SEED, WAIT, unread, wait_until

from logagg.errors import SourceError
from logagg.sources import Chunk, LineSplitter, Source, read_chunks

LIMIT = 1 << 20


def lines_of(chunks: Iterator[Chunk]) -> list[tuple[int, bytes]]:
    return [item for chunk in chunks for item in chunk.lines]


def read_file(path: Path, limit: int = LIMIT) -> list[Chunk]:
    return list(read_chunks(Source(str(path)), limit, threading.Event()))


def file_with(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_lines_are_numbered_from_one_and_blank_lines_count(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n\n{"b":2}\n\n\n{"c":3}\n')
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}'), (3, b'{"b":2}'), (6, b'{"c":3}')]


def test_blank_and_whitespace_only_lines_are_skipped(tmp_path: Path) -> None:
    path = file_with(tmp_path, b"   \n\t\n{}\n \t \r\n\x0b\x0c\n\n[]\n")
    assert lines_of(iter(read_file(path))) == [(3, b"{}"), (7, b"[]")]


def test_a_file_of_only_blank_lines_gives_no_lines(tmp_path: Path) -> None:
    assert lines_of(iter(read_file(file_with(tmp_path, b"\n\n  \n")))) == []


def test_an_empty_file_gives_nothing(tmp_path: Path) -> None:
    assert read_file(file_with(tmp_path, b"")) == []


def test_crlf_line_ends_are_removed(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\r\n\r\n{"b":2}\r\n')
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}'), (3, b'{"b":2}')]


def test_bom_on_the_first_line_is_removed(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'\xef\xbb\xbf{"a":1}\n{"b":2}\n')
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}'), (2, b'{"b":2}')]


def test_bom_alone_on_the_first_line_makes_it_blank(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'\xef\xbb\xbf\n{"b":2}\n')
    assert lines_of(iter(read_file(path))) == [(2, b'{"b":2}')]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n\n{"b":2}')
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}'), (3, b'{"b":2}')]


def test_last_line_of_only_spaces_without_newline_is_skipped(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n   ')
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}')]


def test_over_long_lines_are_reported_and_the_next_line_is_read(tmp_path: Path) -> None:
    long = b"x" * 100
    path = file_with(tmp_path, b'{"a":1}\n' + long + b'\n{"b":2}\n' + b"y" * 64 + b"\n")
    chunks = read_file(path, limit=64)
    assert lines_of(iter(chunks)) == [(1, b'{"a":1}'), (3, b'{"b":2}'), (4, b"y" * 64)]
    too_long = [item for chunk in chunks for item in chunk.too_long]
    assert len(too_long) == 1
    line_no, size, head = too_long[0]
    assert line_no == 2
    assert size >= 100
    assert long.startswith(head) and head


def test_over_long_last_line_without_newline_is_reported(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n' + b"z" * 500)
    chunks = read_file(path, limit=64)
    assert lines_of(iter(chunks)) == [(1, b'{"a":1}')]
    assert [(n, size) for c in chunks for n, size, _ in c.too_long] == [(2, 500)]


def test_gzip_file_is_recognised_by_its_magic_bytes(tmp_path: Path) -> None:
    """The name does not matter: a gzip file called .jsonl is decompressed."""
    data = b"".join(b'{"n":%d}\n' % n for n in range(1000))
    path = file_with(tmp_path, gzip.compress(data), name="packed.jsonl")
    lines = lines_of(iter(read_file(path)))
    assert len(lines) == 1000
    assert lines[0] == (1, b'{"n":0}')
    assert lines[-1] == (1000, b'{"n":999}')


def test_plain_file_named_gz_is_read_as_text(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n', name="plain.jsonl.gz")
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}')]


def test_gzip_with_several_members_is_read_whole(tmp_path: Path) -> None:
    data = gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n')
    path = file_with(tmp_path, data, name="two.gz")
    assert lines_of(iter(read_file(path))) == [(1, b'{"a":1}'), (2, b'{"b":2}')]


def test_truncated_gzip_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b'{"n":%d}\n' % n for n in range(1000)))
    path = file_with(tmp_path, data[: len(data) // 2], name="cut.gz")
    with pytest.raises(SourceError, match=str(path)):
        read_file(path)


def test_missing_file_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError, match=f"{path}: no such file"):
        read_file(path)


def test_directory_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"{tmp_path}: is a directory"):
        read_file(tmp_path)


def test_stdin_source_is_named_stdin() -> None:
    assert Source("-").is_stdin
    assert Source("-").name == "<stdin>"
    assert Source("a.jsonl").name == "a.jsonl"
    assert not Source("a.jsonl").is_stdin


def test_progress_reports_position_and_size_of_a_regular_file(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n' * 10)
    seen: list[tuple[int, int]] = []
    chunks = read_chunks(
        Source(str(path)),
        LIMIT,
        threading.Event(),
        on_progress=lambda pos, size: seen.append((pos, size)),
    )
    assert len(lines_of(chunks)) == 10
    assert seen and seen[-1] == (80, 80)


# --- pipes -----------------------------------------------------------------------------


def write_in_pieces(w: int, pieces: list[bytes]) -> threading.Thread:
    """Write each piece only once the reader has taken the one before, so that every piece
    arrives in a read of its own; then close the write end."""

    def write() -> None:
        try:
            for piece in pieces:
                os.write(w, piece)
                wait_until(lambda: unread(w) == 0, WAIT, "the reader to take a piece")
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    return writer


def test_pipe_lines_arrive_while_the_writer_stays_open(pipe: tuple[int, BinaryIO]) -> None:
    """Each write moves on at once: the first chunk comes before the writer closes."""
    w, reader = pipe
    stop = threading.Event()
    chunks = read_chunks(Source("-"), LIMIT, stop, stdin=reader)
    os.write(w, b'{"a":1}\n\n')
    assert next(chunks).lines == [(1, b'{"a":1}')]
    os.write(w, b'{"b":2}\n')
    assert next(chunks).lines == [(3, b'{"b":2}')]
    os.close(w)
    assert list(chunks) == []


def test_pipe_line_split_across_writes_is_joined(pipe: tuple[int, BinaryIO]) -> None:
    w, reader = pipe
    chunks = read_chunks(Source("-"), LIMIT, threading.Event(), stdin=reader)
    writer = write_in_pieces(w, [b'{"a":', b"1}", b'\n{"b"', b":2}\n", b'{"c":3}'])
    got = list(chunks)
    writer.join(WAIT)
    assert lines_of(iter(got)) == [(1, b'{"a":1}'), (2, b'{"b":2}'), (3, b'{"c":3}')]
    assert len(got) >= 3, "the pieces came in one read: nothing was joined"


def test_pipe_over_long_line_across_reads_is_skipped_and_next_read(
    pipe: tuple[int, BinaryIO],
) -> None:
    """A long line is never held whole: it is reported and the following line still comes."""
    w, reader = pipe
    chunks = read_chunks(Source("-"), 64, threading.Event(), stdin=reader)
    pieces = [b'{"a":1}\n' + b"x" * 40, *[b"x" * 40] * 5, b'x\n{"b":2}\n']
    writer = write_in_pieces(w, pieces)
    got = list(chunks)
    writer.join(WAIT)
    assert lines_of(iter(got)) == [(1, b'{"a":1}'), (3, b'{"b":2}')]
    too_long = [item for chunk in got for item in chunk.too_long]
    assert [(n, size) for n, size, _ in too_long] == [(2, 242)]
    assert too_long[0][2].startswith(b"x")


def test_stop_ends_a_pipe_read_while_the_writer_stays_open(pipe: tuple[int, BinaryIO]) -> None:
    """A set stop flag ends the read within a poll interval, without the pipe closing."""
    w, reader = pipe
    stop = threading.Event()
    chunks = read_chunks(Source("-"), LIMIT, stop, stdin=reader)
    os.write(w, b'{"a":1}\n')
    assert next(chunks).lines == [(1, b'{"a":1}')]
    done = threading.Event()
    rest: list[Chunk] = []

    def drain() -> None:
        rest.extend(chunks)
        done.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    assert not done.wait(0.3), "the read ended although the writer is still open"
    stop.set()
    assert done.wait(5), "the read did not stop"
    assert rest == []


def test_stop_set_before_reading_reads_nothing(pipe: tuple[int, BinaryIO]) -> None:
    w, reader = pipe
    stop = threading.Event()
    stop.set()
    os.write(w, b'{"a":1}\n')
    assert list(read_chunks(Source("-"), LIMIT, stop, stdin=reader)) == []


def test_stdin_that_is_a_regular_file_is_read(tmp_path: Path) -> None:
    path = file_with(tmp_path, b'{"a":1}\n\n{"b":2}')
    with open(path, "rb") as stdin:
        got = lines_of(read_chunks(Source("-"), LIMIT, threading.Event(), stdin=stdin))
    assert got == [(1, b'{"a":1}'), (3, b'{"b":2}')]


def _expected_lines(data: bytes, limit: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """What splitting `data` whole must give: (numbered lines, numbers of over-long ones)."""
    pieces = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    lines, too_long = [], []
    for number, piece in enumerate(pieces, 1):
        piece = piece.removesuffix(b"\r")
        if len(piece) > limit:
            too_long.append(number)
        elif piece and not piece.isspace():
            lines.append((number, piece))
    return lines, too_long


@pytest.mark.parametrize("seed", [SEED + n for n in range(40)])
def test_lines_are_the_same_however_the_input_is_cut(seed: int) -> None:
    """Blank, whitespace-only, CRLF, over-long and unterminated lines, fed in pieces of any
    size (a piece may end inside a line, or between CR and LF): every line comes out once,
    whole, with its number, whichever way the splitter takes."""
    rng = random.Random(seed)
    limit = rng.choice([8, 40, LIMIT])
    kinds = [b"", b"  ", b"\t \x0b\x0c", b" {}", b"x" * 9, b"y" * 41, b"\xc3\xa9\r"]
    parts = [rng.choice(kinds) if rng.random() < 0.3 else b'{"n":%d}' % n for n in range(300)]
    data = (b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + b"\n".join(
        p + (b"\r" if rng.random() < 0.2 else b"") for p in parts
    )
    splitter = LineSplitter(limit)
    lines, too_long = [], []
    at = 0
    while at < len(data):
        size = rng.choice([1, 2, 7, 64, 1000, len(data)])
        chunk = splitter.feed(data[at : at + size])
        lines.extend(chunk.lines)
        too_long.extend(number for number, _, _ in chunk.too_long)
        at += size
    end = splitter.end()
    lines.extend(end.lines)
    too_long.extend(number for number, _, _ in end.too_long)
    assert (lines, too_long) == _expected_lines(data, limit), f"seed {seed}"
