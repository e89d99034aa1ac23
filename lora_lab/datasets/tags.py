"""Tags of a dataset: how many images carry each, and the best completions of what a user types.

Counts are per image (a tag written twice in one caption counts once), and prose captions carry
no tags (see :func:`~.captions.caption_tags`). Completions come from one sorted list of keys,
each tag and each tag from each of its later words on ("long hair" is also found as "hair"),
so a query is two bisects and a ranking of what matches, never a scan of every tag.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable

from .captions import caption_tags

LAST = chr(0x10FFFF)  # sorts after any character: key + LAST bounds the keys starting with key


def tag_counts(captions: Iterable[str | None]) -> Counter[str]:
    """How many of ``captions`` carry each tag."""
    return Counter(t for c in captions for t in set(caption_tags(c)))


class TagIndex:
    """The tags of a set of captions with their image counts, kept current caption by caption
    (:meth:`replace`), answering :meth:`complete` for a tag box and :meth:`top` for a tag table."""

    def __init__(self, captions: Iterable[str | None] = ()):
        self.counts = tag_counts(captions)
        self._keys = sorted((key, tag) for tag in self.counts for key in _keys(tag))

    def __len__(self) -> int:
        return len(self.counts)

    def top(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` tags most images carry, most first (ties by name)."""
        return heapq.nsmallest(n, self.counts.items(), key=lambda tc: (-tc[1], tc[0]))

    def complete(self, typed: str, limit: int = 10,
                 exclude: Iterable[str] = ()) -> list[tuple[str, int]]:
        """The ``limit`` tags that best complete ``typed`` (case-insensitive, at the start of
        the tag or of one of its words), with their counts: the most images first, then those
        that start with ``typed``, then by name. Nothing typed: the most frequent tags."""
        prefix = " ".join(typed.split()).casefold()
        skip = set(exclude)
        if not prefix:
            return [tc for tc in self.top(limit + len(skip)) if tc[0] not in skip][:limit]
        lo = bisect_left(self._keys, (prefix,))
        hi = bisect_left(self._keys, (prefix + LAST,), lo)
        found = {tag for _, tag in self._keys[lo:hi]} - skip
        best = heapq.nsmallest(limit, found, key=lambda t: (
            -self.counts[t], not t.casefold().startswith(prefix), t))
        return [(t, self.counts[t]) for t in best]

    def replace(self, before: str | None, after: str | None) -> None:
        """One caption changed from ``before`` to ``after`` (None: none): count it again."""
        old, new = set(caption_tags(before)), set(caption_tags(after))
        for tag in old - new:
            self.counts[tag] -= 1
            if self.counts[tag] <= 0:
                del self.counts[tag]
                for key in _keys(tag):
                    i = bisect_left(self._keys, (key, tag))
                    if i < len(self._keys) and self._keys[i] == (key, tag):
                        del self._keys[i]
        for tag in new - old:
            if tag not in self.counts:
                for key in _keys(tag):
                    insort(self._keys, (key, tag))
            self.counts[tag] += 1


def _keys(tag: str) -> set[str]:
    """What ``tag`` is found by: itself and its ends from each later word on, case-folded."""
    folded = tag.casefold()
    return {folded} | {folded[i + 1:] for i, c in enumerate(folded) if c in " _-" and i + 1 < len(folded)}
