"""Rendered answers, reusable for every query with the same question and EDNS shape.

An entry is the response minus what differs between two such queries: the ID,
the RD and CD bits (four precomputed header variants) and the letter case of
the question (copied from the query; compression pointers into the question
then echo the client's case everywhere). Each entry remembers what it was
built from, so that a change drops exactly the answers it can affect:

* ``deps``: owner keys whose records were read (including names found absent);
* ``subtree``: keys whose existence (a record at or below them) was relied on,
  for closest encloser, empty non-terminal and wildcard decisions;
* ``gaps``: ``("nsec" | "nsec3", owner)`` intervals between an NSEC/NSEC3 owner
  and the next one that a denial used.

The cache is bounded; when full the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class Entry:
    __slots__ = ("heads", "tail", "rcode_name", "deps", "subtree", "gaps")

    def __init__(self, heads: tuple[bytes, ...], tail: bytes, rcode_name: str) -> None:
        self.heads = heads
        self.tail = tail
        self.rcode_name = rcode_name
        self.deps: tuple = ()
        self.subtree: tuple = ()
        self.gaps: tuple = ()


class AnswerCache:
    """Question key -> :class:`Entry`, with reverse indexes for invalidation."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._by_dep: dict[bytes, set[bytes]] = {}
        self._by_subtree: dict[bytes, set[bytes]] = {}
        self._by_gap: dict[tuple, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def put(
        self,
        key: bytes,
        entry: Entry,
        deps: Iterable[bytes],
        subtree: Iterable[bytes],
        gaps: Iterable[tuple],
    ) -> None:
        if key in self.entries:
            self._unlink(key, self.entries[key])
        elif len(self.entries) >= self.max_entries:
            # popitem is O(1); next(iter(dict)) scans the holes left by earlier deletions.
            oldest, old_entry = self.entries.popitem(last=False)
            self._unlink(oldest, old_entry)
        entry.deps = tuple(deps)
        entry.subtree = tuple(subtree)
        entry.gaps = tuple(gaps)
        self.entries[key] = entry
        for index, items in (
            (self._by_dep, entry.deps),
            (self._by_subtree, entry.subtree),
            (self._by_gap, entry.gaps),
        ):
            for item in items:
                bucket = index.get(item)
                if bucket is None:
                    index[item] = {key}
                else:
                    bucket.add(key)

    def _unlink(self, key: bytes, entry: Entry) -> None:
        for index, items in (
            (self._by_dep, entry.deps),
            (self._by_subtree, entry.subtree),
            (self._by_gap, entry.gaps),
        ):
            for item in items:
                bucket = index.get(item)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del index[item]

    def clear(self) -> None:
        self.entries.clear()
        self._by_dep.clear()
        self._by_subtree.clear()
        self._by_gap.clear()

    def affected(self, keys: Iterable[bytes], gaps: Iterable[tuple]) -> set[bytes]:
        """Cache keys of the entries that changes at ``keys`` (and in ``gaps``) can alter."""
        out: set[bytes] = set()
        for key in keys:
            out |= self._by_dep.get(key, set())
            end = key.find(b"\x00")
            while end >= 0:
                out |= self._by_subtree.get(key[: end + 1], set())
                end = key.find(b"\x00", end + 1)
        for gap in gaps:
            out |= self._by_gap.get(gap, set())
        return out

    def rewrite(self, dep: bytes, old: bytes, new: bytes) -> int:
        """Replace ``old`` by ``new`` in the tails of the entries that read ``dep``; returns
        how many changed (used to move the SOA serial inside cached answers)."""
        n = 0
        entries = self.entries
        for key in self._by_dep.get(dep, ()):
            entry = entries.get(key)
            if entry is not None and old in entry.tail:
                entry.tail = entry.tail.replace(old, new)
                n += 1
        return n

    def invalidate(self, keys: Iterable[bytes], gaps: Iterable[tuple]) -> int:
        """Drop the affected entries; return how many."""
        victims = self.affected(list(keys), list(gaps))
        for key in victims:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self._unlink(key, entry)
        return len(victims)
