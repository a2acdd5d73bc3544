"""Compressed input, told by its first bytes and decompressed in bounded pieces.

gzip (several members in a row, as `gzip -d` reads them) and zstd (several frames, with
the zstd extra). Whatever the compression ratio, one read returns at most
about the size asked for plus a few hundred KiB, so memory stays bounded on any input: a
decompression bomb is only a long input. Damaged or cut-short input raises CorruptInput
once the plain bytes before the damage have been returned.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_IN = 16 * 1024  # compressed bytes given to zlib at a time
GZIP_OUT = 64 * 1024  # most plain bytes one zlib call returns
ZSTD_BLOCKS = 2  # zstd blocks (at most 128 KiB of plain bytes each) given at a time
ZSTD_OPAQUE = 64  # bytes given at a time where the frame structure is not understood

_ZSTD_FRAME = int.from_bytes(ZSTD_MAGIC, "little")
_ZSTD_SKIPPABLE = 0x184D2A50  # skippable frames: this magic | 0..15
_TRUNCATED = "the input ended inside a compressed member"


class CorruptInput(Exception):
    """Compressed input that is damaged or cut short."""


def codec_of(head: bytes) -> str:
    """The codec an input starting with `head` is in: "gzip", "zstd" or "" (plain)."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC or (
        len(head) >= 4 and int.from_bytes(head[:4], "little") & ~0xF == _ZSTD_SKIPPABLE
    ):
        return "zstd"
    return ""


def _may_grow_into_magic(head: bytes) -> bool:
    """Whether a few first bytes could still become a compressed input's magic."""
    skippable = (b"\x50", b"\x2a\x4d\x18")
    return (
        GZIP_MAGIC.startswith(head)
        or ZSTD_MAGIC.startswith(head)
        or (0x50 <= head[0] <= 0x5F and skippable[1].startswith(head[1:]))
    )


class Decoder:
    """The plain bytes of an input read through `raw(n)`: as they are, or decompressed.

    `read(n)` returns at most about `n` plain bytes: b"" at the end of the input (with
    `until_end=False`, a followed file: nothing more for now), or None when the bytes it
    read gave no plain bytes yet (a pipe: wait for more before reading again). It reads
    `raw` at most once per call. The codec is told by the first bytes unless given
    (`codec=""` for plain input).
    """

    def __init__(
        self, raw: Callable[[int], bytes], *, until_end: bool = True, codec: str | None = None
    ) -> None:
        self._raw = raw
        self._until_end = until_end
        self.codec = ""
        self._head = b""  # first bytes kept while they may still become a magic
        self._buf = b""  # compressed bytes read
        self._pos = 0  # how many of them have been given to the decompressor
        self._base = 0  # the position of _buf[0] in the compressed stream
        self._tail = b""  # gzip: input zlib has not taken yet
        self._unpack: Any = None
        self._zstd: Any = None
        self._frames = _ZstdFrames()
        self._error: CorruptInput | None = None  # raised once what came before it is out
        self._told = False
        self.read: Callable[[int], bytes | None] = self._first
        if codec is not None:
            self._start(codec)

    # --- telling the codec ---------------------------------------------------------------

    def _first(self, n: int) -> bytes | None:
        data = self._raw(n)
        head = self._head + data if self._head else data
        if not data and not self._until_end:
            self._head = head
            return b""  # a followed file without (enough) bytes yet: told later
        if data and len(head) < 4 and _may_grow_into_magic(head):
            self._head = head
            return None
        self._head = b""
        self._start(codec_of(head))
        if not self.codec:
            return head
        self._buf = head
        out = self._plain(n)
        if out is None and not data:  # the input was a magic and nothing more
            return self._ended()
        return out

    def _start(self, codec: str) -> None:
        self.codec, self._told = codec, True
        if not codec:
            self.read = self._raw
            return
        if codec == "gzip":
            self._unpack = zlib.decompressobj(wbits=31)
        else:
            try:
                import zstandard
            except ImportError:
                raise CorruptInput(
                    "zstd input needs the zstd extra (the zstandard package): install logagg"
                    " with it (from a checkout: pip install '.[zstd]')"
                ) from None
            self._zstd = zstandard.ZstdDecompressor()
            self._unpack = self._zstd.decompressobj()
        self.read = self._decompressed

    # --- decompressing ---------------------------------------------------------------------

    def _decompressed(self, n: int) -> bytes | None:
        if self._error is not None:
            raise self._error
        out = self._plain(n)
        if out is not None:
            return out
        data = self._raw(n)
        if not data:
            return self._ended()
        rest = self._buf[self._pos :]
        self._base += self._pos
        self._buf = rest + data if rest else data
        self._pos = 0
        return self._plain(n)

    def _plain(self, n: int) -> bytes | None:
        """Plain bytes from the input read so far, about `n` at most; None if none came."""
        out: list[bytes] = []
        size = 0
        step = self._gzip_step if self.codec == "gzip" else self._zstd_step
        while size < n:
            try:
                piece = step()
            except Exception as exc:
                if not isinstance(exc, zlib.error) and type(exc).__name__ != "ZstdError":
                    raise
                self._error = CorruptInput(f"corrupt or truncated {self.codec} data ({exc})")
                if out:
                    return b"".join(out)
                raise self._error from None
            if piece is None:
                break
            if piece:
                out.append(piece)
                size += len(piece)
        return b"".join(out) if out else None

    def _gzip_step(self) -> bytes | None:
        if self._tail:
            data = self._tail
        elif self._pos < len(self._buf):
            data = self._buf[self._pos : self._pos + GZIP_IN]
            self._pos += len(data)
        else:
            return None
        unpack = self._unpack
        if unpack.eof:  # the next member
            unpack = self._unpack = zlib.decompressobj(wbits=31)
        out: bytes = unpack.decompress(data, GZIP_OUT)
        self._tail = unpack.unused_data if unpack.eof else unpack.unconsumed_tail
        return out

    def _zstd_step(self) -> bytes | None:
        start = self._base + self._pos
        cut = self._frames.cut(self._buf, self._base, start, ZSTD_BLOCKS)
        if cut == start:
            return None
        data = self._buf[self._pos : cut - self._base]
        self._pos = cut - self._base
        unpack = self._unpack
        if unpack.eof:  # the next frame
            unpack = self._unpack = self._zstd.decompressobj()
        out: bytes = unpack.decompress(data)
        while unpack.eof and unpack.unused_data:
            rest = unpack.unused_data
            unpack = self._unpack = self._zstd.decompressobj()
            out += unpack.decompress(rest)
        return out

    def _ended(self) -> bytes:
        if self._until_end:
            self.check_end()
        return b""

    def check_end(self) -> None:
        """Raise CorruptInput if the input read so far ends inside a member or frame."""
        if self._error is not None:
            raise self._error
        if self.codec and (self._tail or self._pos < len(self._buf) or not self._unpack.eof):
            self._error = CorruptInput(f"corrupt or truncated {self.codec} data ({_TRUNCATED})")
            raise self._error

    def finish(self) -> bytes:
        """At the end of a followed file: the first bytes still waiting to tell the codec
        (they are plain input), and CorruptInput if it ends inside a member or frame."""
        if not self._told:
            head, self._head = self._head, b""
            self._start("")
            return head
        self.check_end()
        return b""


class _ZstdFrames:
    """Walks the frame and block headers of a zstd stream (RFC 8878) without decoding,
    to cut the input so that one piece completes only a few blocks: a block holds at most
    128 KiB of plain bytes, however few compressed bytes it takes. Only the cutting
    depends on this walk; the decoder checks the data itself."""

    FRAME, BLOCK, OPAQUE = 0, 1, 2

    def __init__(self) -> None:
        self.state = self.FRAME
        self.at = 0  # where the next header starts, in the compressed stream
        self.checksum = False  # the current frame ends with a 4-byte checksum

    def cut(self, buf: bytes, base: int, start: int, blocks: int) -> int:
        """How far input may be given from `start` on, so that at most `blocks` + 1
        blocks end in it; `buf` holds the stream from `base` to its end."""
        end = base + len(buf)
        done = 0
        while True:
            at = self.at
            if self.state == self.OPAQUE:
                return min(end, start + ZSTD_OPAQUE)
            if at >= end:
                return end
            i = at - base
            if self.state == self.FRAME:
                if end - at < 4:
                    return at
                magic = int.from_bytes(buf[i : i + 4], "little")
                if magic & ~0xF == _ZSTD_SKIPPABLE:
                    if end - at < 8:
                        return at
                    self.at = at + 8 + int.from_bytes(buf[i + 4 : i + 8], "little")
                    continue
                if magic != _ZSTD_FRAME:
                    self.state = self.OPAQUE
                    continue
                if end - at < 5:
                    return at
                fhd = buf[i + 4]
                single = fhd >> 5 & 1
                self.checksum = bool(fhd >> 2 & 1)
                size = 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
                self.at = at + size
                self.state = self.BLOCK
                continue
            if end - at < 3 or done == blocks:
                return at
            header = int.from_bytes(buf[i : i + 3], "little")
            kind = header >> 1 & 3
            if kind == 3:  # reserved: the decoder will refuse it
                self.state = self.OPAQUE
                continue
            stop = at + 3 + (1 if kind == 1 else header >> 3)
            if header & 1:  # the frame's last block
                self.state = self.FRAME
                self.at = stop + (4 if self.checksum else 0)
            else:
                self.at = stop
            if stop > end:
                return end  # the block ends in a later piece
            done += 1
