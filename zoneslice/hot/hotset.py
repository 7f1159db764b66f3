"""The hot set: which answers a node keeps in its XDP maps, and keeping them true.

Counts of (qname, qtype) -- from a trace (``zoneslice hot``) or from live
counters -- are folded by what the engine answers: every name at or below a
delegation counts for the delegation (one entry answers them all), every other
name counts for itself. The top N keys become entries (three EDNS variants
each, see zoneslice.hot.entries).

Coherence with updates: :meth:`HotSet.affected` lists the loaded keys whose
answer an update of some names may change (conservatively: same name,
ancestor or descendant, any name appearing in the answer, and every answer
that carries the SOA or denial records); :meth:`HotSet.reload` relearns them
from the engine and replaces or deletes them in the maps. Call both after the
change is committed and before the UPDATE is acknowledged.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.name
import dns.rdatatype

from zoneslice.hot import entries as E
from zoneslice.xdp import maps

Key = tuple[str, bytes, int]  # ("deleg", cut wire, 0) or ("exact", qname wire, qtype)
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_DENIAL = {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3}


class MapSink(Protocol):
    """What HotSet needs from zoneslice.xdp.loader.HotPath."""

    def load(self, entries: Iterable[tuple[str, bytes, bytes]]) -> int: ...

    def invalidate(self, keys: Iterable[tuple[str, bytes]] | None = None) -> int: ...


def count_queries(
    queries: Iterable[tuple[int, bytes, int]],
) -> dict[int, Counter[tuple[bytes, int]]]:
    """``{slice: Counter((qname, qtype))}`` from ``(slice, lower-cased wire qname, qtype)``."""
    out: dict[int, Counter[tuple[bytes, int]]] = {}
    for s, qname, qtype in queries:
        c = out.get(s)
        if c is None:
            c = out[s] = Counter()
        c[(qname.translate(_LOWER), qtype)] += 1
    return out


def write_counts(
    path: str | os.PathLike[str],
    counts: dict[int, Counter[tuple[bytes, int]]],
    top: int | None = None,
) -> Path:
    """JSON ``{"slices": {i: [[name, type, count], ...]}}``, most frequent first."""
    data = {
        "format": "zoneslice-hot-counts/1",
        "slices": {
            str(i): [
                [dns.name.from_wire(q, 0)[0].to_text(), dns.rdatatype.to_text(t), n]
                for (q, t), n in c.most_common(top)
            ]
            for i, c in sorted(counts.items())
        },
    }
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, p)
    return p


def read_counts(path: str | os.PathLike[str], slice_index: int) -> Counter[tuple[bytes, int]]:
    """One slice's counts from a :func:`write_counts` file."""
    data = json.loads(Path(path).read_text())
    rows = data.get("slices", {}).get(str(slice_index), [])
    return Counter(
        {
            (dns.name.from_text(n).canonicalize().to_wire(), dns.rdatatype.from_text(t)): int(c)
            for n, t, c in rows
        }
    )


def _owners(value: maps.AnswerValue, qname: bytes) -> tuple[set[bytes], bool]:
    """Lower-cased owner names in an answer body (pointers resolved against ``qname``), and
    whether it carries SOA/NSEC/NSEC3."""
    msg = b"\0" * 12 + qname + b"\0\0\0\0" + value.body
    n = value.ancount + value.nscount + value.arcount
    p = 12 + len(qname) + 4
    owners: set[bytes] = set()
    denial = False
    for _ in range(n):
        name, used = dns.name.from_wire(msg, p)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", msg, p + used)
        if rtype != dns.rdatatype.OPT:
            owners.add(name.canonicalize().to_wire())
        if rtype in _DENIAL or (
            rtype == dns.rdatatype.RRSIG
            and struct.unpack_from("!H", msg, p + used + 10)[0] in _DENIAL
        ):
            denial = True
        p += used + 10 + rdlen
    return owners, denial


@dataclass
class _Loaded:
    entries: list[E.Entry]
    count: int
    owners: set[bytes] = field(default_factory=set)
    denial: bool = False


class HotSet:
    """The entries of one slice in one program's maps."""

    def __init__(
        self,
        respond: E.Respond,
        sink: MapSink,
        *,
        body_max: int = maps.BODY_MAX,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.respond = respond
        self.sink = sink
        self.body_max = body_max
        self.builder = E.EntryBuilder(respond, body_max=body_max)
        self.loaded: dict[Key, _Loaded] = {}
        self.progress = progress

    # -- choosing ------------------------------------------------------------
    def classify(self, qname: bytes, qtype: int) -> Key | None:
        """The key serving (qname, qtype): its delegation, itself, or None (engine drops it)."""
        q = E.make_query(qname, qtype)
        try:
            r = E.split_response(q, self.respond(q))
        except E.NotCacheable:
            return None
        an, ns, _ = r.counts
        if not r.flags & E.FLAG_AA and not an and ns and not r.flags & 0xF:
            for pos, target in E.pointers(r.body, 0, 1, whole=False):
                if pos == 0:  # the first owner of a referral is the cut, a suffix of the qname
                    cut = qname[target - 12 :]
                    if cut and (qtype != dns.rdatatype.DS or cut != qname):
                        return ("deleg", cut, 0)
        return ("exact", qname, qtype)

    def rank(self, counts: Counter[tuple[bytes, int]], n: int) -> list[tuple[Key, int]]:
        """The ``n`` most queried keys, names below a cut counted for the cut."""
        folded: Counter[Key] = Counter()
        for (qname, qtype), c in counts.most_common():
            k = self.classify(qname, qtype)
            if k is not None:
                folded[k] += c
        return folded.most_common(n)

    # -- loading -------------------------------------------------------------
    def _learn(self, key: Key) -> list[E.Entry]:
        kind, wire, qtype = key
        name = dns.name.from_wire(wire, 0)[0]
        if kind == "deleg":
            return self.builder.delegation(name)
        return self.builder.exact(name, qtype)

    def _remember(self, key: Key, ents: list[E.Entry], count: int) -> None:
        owners: set[bytes] = {key[1]}
        denial = False
        for e in ents:
            o, d = _owners(e.value, key[1])
            owners |= o
            denial |= d
        self.loaded[key] = _Loaded(ents, count, owners, denial)

    def install(self, ranked: list[tuple[Key, int]]) -> dict[str, int]:
        """Make the maps hold exactly the entries of ``ranked`` (promote new, evict cooled)."""
        want = dict(ranked)
        evict = [k for k in self.loaded if k not in want]
        stats = {"evicted": self._drop(evict), "loaded": 0, "kept": 0, "not_cacheable": 0}
        batch: list[tuple[str, bytes, bytes]] = []
        for i, (key, count) in enumerate(ranked):
            if key in self.loaded:
                self.loaded[key].count = count
                stats["kept"] += 1
                continue
            ents = self._learn(key)
            if not ents:
                stats["not_cacheable"] += 1
                continue
            self._remember(key, ents, count)
            batch += [e.packed(self.body_max) for e in ents]
            stats["loaded"] += 1
            if self.progress and not i % 1000:
                self.progress(i, len(ranked))
        if batch:
            self.sink.load(batch)
        return stats

    def _drop(self, keys: Iterable[Key]) -> int:
        gone = []
        for k in keys:
            item = self.loaded.pop(k, None)
            if item:
                gone += [(e.kind, e.key) for e in item.entries]
        return self.sink.invalidate(gone) if gone else 0

    # -- coherence -------------------------------------------------------------
    def affected(self, changed: Iterable[dns.name.Name]) -> list[Key]:
        """Loaded keys whose answers a change at any of ``changed`` may alter."""
        names = [n.canonicalize() for n in changed]
        if not names:
            return []
        out = []
        for key, item in self.loaded.items():
            if item.denial:
                out.append(key)
                continue
            own = dns.name.from_wire(key[1], 0)[0]
            for n in names:
                w = n.to_wire()
                if w in item.owners or n.is_subdomain(own) or own.is_subdomain(n):
                    out.append(key)
                    break
        return out

    def reload(self, keys: Iterable[Key]) -> int:
        """Relearn ``keys`` from the engine and replace them in the maps (delete if no longer
        cacheable). Returns how many are loaded afterwards."""
        keys = list(keys)
        counts = {k: self.loaded[k].count for k in keys if k in self.loaded}
        self._drop(keys)
        n = 0
        batch = []
        for k in keys:
            ents = self._learn(k)
            if ents:
                self._remember(k, ents, counts.get(k, 0))
                batch += [e.packed(self.body_max) for e in ents]
                n += 1
        if batch:
            self.sink.load(batch)
        return n

    def summary(self) -> dict[str, Any]:
        kinds = Counter(k[0] for k in self.loaded)
        return {
            "keys": len(self.loaded),
            "delegations": kinds["deleg"],
            "exact": kinds["exact"],
            "entries": sum(len(v.entries) for v in self.loaded.values()),
            "rejected": dict(self.builder.rejected),
        }
