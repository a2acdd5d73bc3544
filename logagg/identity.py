"""Ids for events that bring none: content ids numbered by occurrence, and the
`(source, id)` key as one event_id."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from logagg.models import dump_json

CONTENT_ID_LENGTH = 32
OCCURRENCE_WINDOW = 10_000  # lines within which identical lines are counted as occurrences


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: keys sorted at every level, no whitespace, numbers as written.
    Raises ValueError for what JSON cannot hold exactly."""
    return dump_json(obj, sort_keys=True)


def content_id(obj: Any, occurrence: int = 1) -> str:
    """A stable id of a decoded line: SHA-256 of its canonical JSON, first 32 hex digits.

    Key order and spacing of the line do not change it. The k-th identical line of an
    input (`occurrence` k > 1) hashes `#k` after the content, so it is another event.
    """
    return _digest(canonical_json(obj), occurrence)


def _digest(canonical: bytes, occurrence: int) -> str:
    if occurrence > 1:
        canonical += b"#%d" % occurrence
    return hashlib.sha256(canonical).hexdigest()[:CONTENT_ID_LENGTH]


def keyed_id(source: str, event_id: str) -> str:
    """The event_id under the `(source, id)` key: the source with `%` and space escaped
    (`%25`, `%20`), a space, the id; two different pairs never give the same text."""
    return f"{source.replace('%', '%25').replace(' ', '%20')} {event_id}"


class Occurrences:
    """Counts identical lines of one input, over the last `window` lines: the k-th copy of
    a line seen within `window` lines of the previous copy is occurrence k. Memory is
    bounded by the window."""

    def __init__(self, window: int = OCCURRENCE_WINDOW) -> None:
        self.window = window
        self._lines = 0
        self._seen: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # count, last line

    def content_id(self, obj: Any) -> str:
        """The content id of the next line, `obj`, with its occurrence number."""
        canonical = canonical_json(obj)
        return _digest(canonical, self.count(canonical))

    def count(self, canonical: bytes) -> int:
        self._lines += 1
        horizon = self._lines - self.window
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest[1] > horizon:
                break
            seen.popitem(last=False)
        digest = hashlib.blake2b(canonical, digest_size=16).digest()
        count = seen.pop(digest, (0, 0))[0] + 1
        seen[digest] = (count, self._lines)
        return count
