"""Pages of a listing (pure): at most `limit` items and at most `max_bytes` encoded, after a cursor.

The cursor is the sort key of the last item sent, so a page never repeats or skips an item that existed
when the listing began, whatever was added meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from incl.proto import limits
from incl.proto.codec import encode

T = TypeVar("T")


def page(items: Sequence[T], key: Callable[[T], str], after: str | None, limit: int | None,
         max_bytes: int) -> tuple[list[T], str | None]:
    """`items` sorted by `key`: the ones after `after`, as many as fit; and the cursor of the next page."""
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [i for i in ordered if key(i) > after]
    n = min(limit or limits.PAGE_MAX_ITEMS, limits.PAGE_MAX_ITEMS)
    chosen: list[T] = []
    size = 0
    for item in ordered[:n]:
        size += len(encode(item))
        if chosen and size > max_bytes:
            break
        chosen.append(item)
    more = len(chosen) < len(ordered)
    return chosen, (key(chosen[-1]) if more and chosen else None)
