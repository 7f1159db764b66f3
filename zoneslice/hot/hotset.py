"""The hot set: which answers a node keeps in its XDP maps, and keeping them true.

Counts of (qname, qtype) -- from a trace (``zoneslice hot``) or from live
counters -- are folded by what the engine answers: every name at or below a
delegation counts for the delegation (one entry answers them all), every other
name counts for itself. The top N keys become entries (three EDNS variants
each, see zoneslice.hot.entries).

Coherence with updates: :meth:`HotSet.affected` lists the loaded keys whose
answer an update of some names may change (conservatively: same name,
ancestor or descendant, any name appearing in the answer, and every answer
that carries the SOA or denial records; the apex, which every commit touches
for its SOA, only for itself and the answers holding its records);
:meth:`HotSet.reload` relearns them from the engine and replaces or deletes
them in the maps. Call both after the change is committed and before the
UPDATE is acknowledged. What is loaded can be handed to another process on the
same maps (:meth:`HotSet.export_state`), see zoneslice.hot.serving.Hot.

Live ranking: :meth:`HotSet.fold` counts (qname, qtype) from the workers for
their keys; :meth:`HotSet.hit_counts` adds what the program answered per key
(its per-key hit counters, ``slot`` in each map value).
"""

from __future__ import annotations

import json
import marshal
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
_TARGET_AT = {2: 0, 5: 0, 39: 0, 15: 2, 33: 6}  # type: offset of the target name in rdata
_AT_CUT = {dns.rdatatype.DS, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}


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
    """Lower-cased owner names in an answer body (pointers resolved against ``qname``) and the
    targets of its NS/CNAME/DNAME/MX/SRV records, and whether it carries SOA/NSEC/NSEC3."""
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
        if rtype in _TARGET_AT:  # glue or additional data for it may appear or go
            target, _ = dns.name.from_wire(msg, p + used + 10 + _TARGET_AT[rtype])
            owners.add(target.canonicalize().to_wire())
        if rtype in _DENIAL or (
            rtype == dns.rdatatype.RRSIG
            and struct.unpack_from("!H", msg, p + used + 10)[0] in _DENIAL
        ):
            denial = True
        p += used + 10 + rdlen
    return owners, denial


@dataclass
class _Loaded:
    variants: tuple[int, ...]  # the EDNS variants it has an entry for
    count: int
    owners: set[bytes] = field(default_factory=set)
    denial: bool = False
    slot: int = 0
    soa_only: bool = False  # its only dependency on the whole zone is the SOA (see patch_soa)


def _expand(msg: bytes, p: int) -> tuple[bytes, int]:
    """The name at ``p`` uncompressed and lower-cased, and the offset after it in place."""
    out = bytearray()
    after = 0
    for _ in range(128):
        b = msg[p]
        if b & 0xC0 == 0xC0:
            after = after or p + 2
            p = ((b & 0x3F) << 8) | msg[p + 1]
            continue
        out += msg[p : p + b + 1]
        if b == 0:
            return bytes(out).translate(_LOWER), after or p + 1
        p += b + 1
    raise ValueError("name pointer loop")


def _soa_in(value: maps.AnswerValue, qname: bytes) -> tuple[int, tuple, int] | None:
    """For an answer whose only record is one SOA (an unsigned NXDOMAIN/NODATA, or the
    apex SOA itself), OPT aside: the body offset of its serial, the record without its
    serial (owner, TTL, names, timers), and the serial."""
    msg = b"\0" * 12 + qname + b"\0\0\0\0" + value.body
    base = p = 12 + len(qname) + 4
    found = None
    for _ in range(value.ancount + value.nscount + value.arcount):
        owner, p = _expand(msg, p)
        rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", msg, p)
        r0 = p + 10
        if rtype == dns.rdatatype.SOA:
            if found is not None:
                return None
            mname, q = _expand(msg, r0)
            rname, q = _expand(msg, q)
            if q + 20 != r0 + rdlen:
                return None
            ident = (owner, ttl, mname, rname, msg[q + 4 : q + 20])
            found = (q - base, ident, struct.unpack_from("!I", msg, q)[0])
        elif rtype != dns.rdatatype.OPT:
            return None
        p = r0 + rdlen
    return found


def _map_keys(key: Key, variants: Iterable[int]) -> list[tuple[str, bytes]]:
    """(map kind, map key) of the entries of ``key`` in ``variants``."""
    kind, wire, qtype = key
    if kind == "deleg":
        return [("deleg", maps.deleg_key(wire, v)) for v in variants]
    return [("exact", maps.exact_key(wire, qtype, v)) for v in variants]


def _ancestors(wire: bytes) -> Iterable[bytes]:
    """``wire`` and every ancestor name (lower-cased wire), down to the root."""
    p = 0
    while True:
        yield wire[p:]
        if not wire[p]:
            return
        p += wire[p] + 1


class HotSet:
    """The entries of one slice in one program's maps."""

    def __init__(
        self,
        respond: E.Respond,
        sink: MapSink,
        *,
        body_max: int = maps.BODY_MAX,
        progress: Callable[[int, int], None] | None = None,
        origin: dns.name.Name | None = None,
    ) -> None:
        self.respond = respond
        self.sink = sink
        self.body_max = body_max
        self.builder = E.EntryBuilder(respond, body_max=body_max)
        self.loaded: dict[Key, _Loaded] = {}
        self.progress = progress
        self.origin = origin.canonicalize().to_wire() if origin is not None else None
        self._slots_used: set[int] = set()
        self._hits_seen: dict[int, int] = {}
        self._classified: dict[tuple[bytes, int], Key | None] = {}
        self._index: tuple[dict, dict, dict, dict] | None = None
        self.version = 0  # bumped when what another process needs to know changes

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

    def _fold_one(self, qname: bytes, qtype: int) -> Key | None:
        if qtype not in (0, dns.rdatatype.OPT) and not 128 <= qtype < dns.rdatatype.ANY:
            cuts = self._indexes()[3]
            for anc in _ancestors(qname):
                if anc in cuts and (anc != qname or qtype not in _AT_CUT):
                    return ("deleg", anc, 0)
        memo = (qname, qtype)
        if memo not in self._classified:
            if len(self._classified) > 200_000:
                self._classified.clear()
            self._classified[memo] = self.classify(qname, qtype)
        return self._classified[memo]

    def fold(self, counts: Counter[tuple[bytes, int]]) -> Counter[Key]:
        """Counts per key: names at or below a cut counted for the cut.

        Names below a loaded cut fold without asking the engine; other answers are
        classified once and remembered (:meth:`forget_classes` drops that memory).
        """
        folded: Counter[Key] = Counter()
        for (qname, qtype), c in counts.items():
            k = self._fold_one(qname, qtype)
            if k is not None:
                folded[k] += c
        return folded

    def forget_classes(self) -> None:
        self._classified.clear()

    def rank(self, counts: Counter[tuple[bytes, int]], n: int) -> list[tuple[Key, int]]:
        """The ``n`` most queried keys, names below a cut counted for the cut."""
        return self.fold(counts).most_common(n)

    def hit_counts(self) -> Counter[Key]:
        """XDP answers per loaded key since the last call (the engine never sees those)."""
        sink_hits = getattr(self.sink, "hits", None)
        out: Counter[Key] = Counter()
        if sink_hits is None:
            return out
        by_slot = {v.slot: k for k, v in self.loaded.items() if v.slot}
        now = sink_hits(by_slot)
        for slot, n in now.items():
            d = n - self._hits_seen.get(slot, 0)
            self._hits_seen[slot] = n
            if d > 0:
                out[by_slot[slot]] += d
        return out

    # -- loading -------------------------------------------------------------
    def _learn(self, key: Key) -> list[E.Entry]:
        kind, wire, qtype = key
        name = dns.name.from_wire(wire, 0)[0]
        if kind == "deleg":
            return self.builder.delegation(name)
        return self.builder.exact(name, qtype)

    def _new_slot(self) -> int:
        for s in range(len(self._slots_used) + 1, maps.MAX_SLOTS):
            if s not in self._slots_used:
                break
        else:
            free = set(range(1, maps.MAX_SLOTS)) - self._slots_used
            if not free:
                return 0
            s = min(free)
        self._slots_used.add(s)
        self._hits_seen[s] = 0
        reset = getattr(self.sink, "reset_hits", None)
        if reset is not None:
            reset([s])
        return s

    @staticmethod
    def describe(key: Key, ents: list[E.Entry], count: int = 0, slot: int = 0) -> _Loaded:
        """What coherence needs to know about the entries of ``key``."""
        owners: set[bytes] = {key[1]}
        denial = False
        soa_only = bool(ents)
        for e in ents:
            o, d = _owners(e.value, key[1])
            owners |= o
            denial |= d
            soa_only = soa_only and not e.value.fixups and _soa_in(e.value, key[1]) is not None
        variants = tuple(e.variant for e in ents)
        return _Loaded(variants, count, owners, denial, slot, soa_only and denial)

    def learn(self, keys: Iterable[Key]) -> dict[Key, list[E.Entry]]:
        """Entries of ``keys`` as the engine answers now (without touching the maps)."""
        return {k: self._learn(k) for k in keys}

    def _remember(self, key: Key, ents: list[E.Entry], count: int, slot: int) -> list:
        item = self.describe(key, ents, count, slot)
        for e in ents:
            e.value.slot = slot
        old = self.loaded.get(key)
        if old is None or (old.variants, old.owners, old.denial, old.slot, old.soa_only) != (
            item.variants,
            item.owners,
            item.denial,
            slot,
            item.soa_only,
        ):
            self.version += 1
            self._index = None
        self.loaded[key] = item
        return [e.packed(self.body_max) for e in ents]

    def install(
        self,
        ranked: list[tuple[Key, int]],
        learned: dict[Key, list[E.Entry]] | None = None,
    ) -> dict[str, int]:
        """Make the maps hold exactly the entries of ``ranked`` (promote new, evict cooled).

        ``learned`` holds entries already learnt for some of the new keys (:meth:`learn`).
        """
        learned = learned or {}
        want = dict(ranked)
        evict = [k for k in self.loaded if k not in want]
        stats = {"evicted": self.drop(evict), "loaded": 0, "kept": 0, "not_cacheable": 0}
        batch: list[tuple[str, bytes, bytes]] = []
        for i, (key, count) in enumerate(ranked):
            if key in self.loaded:
                self.loaded[key].count = count
                stats["kept"] += 1
                continue
            ents = learned[key] if key in learned else self._learn(key)
            if not ents:
                stats["not_cacheable"] += 1
                continue
            batch += self._remember(key, ents, count, self._new_slot())
            stats["loaded"] += 1
            if self.progress and not i % 1000:
                self.progress(i, len(ranked))
        if batch:
            self.sink.load(batch)
        return stats

    def drop(self, keys: Iterable[Key]) -> int:
        """Delete ``keys`` from the maps; returns how many map entries were present."""
        gone = []
        for k in keys:
            item = self.loaded.pop(k, None)
            if item:
                gone += _map_keys(k, item.variants)
                self._slots_used.discard(item.slot)
                self._index = None
                self.version += 1
        return self.sink.invalidate(gone) if gone else 0

    # -- coherence -------------------------------------------------------------
    def _indexes(self, items: dict[Key, _Loaded] | None = None) -> tuple[dict, dict, dict, dict]:
        """(keys by own name, by every ancestor of their name, by owner in the answer, cuts)
        of the loaded keys (or of ``items``)."""
        if self._index is None or items is not None:
            own: dict[bytes, list[Key]] = {}
            below: dict[bytes, list[Key]] = {}
            by_owner: dict[bytes, list[Key]] = {}
            cuts: dict[bytes, Key] = {}
            for key, item in (self.loaded if items is None else items).items():
                own.setdefault(key[1], []).append(key)
                for anc in _ancestors(key[1]):
                    if anc == self.origin:
                        break
                    below.setdefault(anc, []).append(key)
                for o in item.owners:
                    by_owner.setdefault(o, []).append(key)
                if key[0] == "deleg":
                    cuts[key[1]] = key
            if items is not None:
                return own, below, by_owner, cuts
            self._index = (own, below, by_owner, cuts)  # type: ignore[assignment]
        return self._index  # type: ignore[return-value]

    def affected(
        self, changed: Iterable[dns.name.Name] | None, among: dict[Key, _Loaded] | None = None
    ) -> list[Key]:
        """Loaded keys (or keys of ``among``) whose answers a change at any of ``changed`` may
        alter (None: all).

        A change at a name touches: answers for it, for names below it (a new or
        removed cut, DNAME, or the wildcard's parent) and above it (glue below a
        cut, empty non-terminals), answers holding a record it owns, and every
        answer carrying the SOA or denial records (the serial moves on each
        commit). The apex counts only for itself and the answers holding its
        records: every commit touches it, and nothing at the apex redirects the
        names below it (a wildcard at the apex reaches every negative answer).
        """
        direct, denial = self._affected(changed, among)
        return [k for k in (self.loaded if among is None else among) if k in direct or k in denial]

    def _affected(
        self, changed: Iterable[dns.name.Name] | None, among: dict[Key, _Loaded] | None = None
    ) -> tuple[set[Key], set[Key]]:
        """(keys a changed name reaches, keys reached only because they carry denial data)."""
        items = self.loaded if among is None else among
        if changed is None:
            return set(items), set()
        own, below, by_owner, _ = self._indexes(among)
        out: set[Key] = set()
        for n in changed:
            w = n.canonicalize().to_wire()
            out.update(own.get(w, ()))
            if w == self.origin:  # every commit: the SOA-only answers are left to patch_soa
                out.update(k for k in by_owner.get(w, ()) if not items[k].soa_only)
                continue
            out.update(by_owner.get(w, ()))
            out.update(below.get(w, ()))
            if w[:2] == b"\x01*":
                if w[2:] == self.origin:  # a wildcard at the apex: every denial answer
                    out.update(k for k, v in items.items() if v.denial)
                out.update(below.get(w[2:], ()))
            for anc in _ancestors(w):
                if anc == self.origin:
                    break
                out.update(own.get(anc, ()))
        return out, {k for k, v in items.items() if v.denial and k not in out}

    def on_commit(self, changed: Iterable[dns.name.Name] | None) -> int:
        """Bring every entry a commit may have changed up to date: relearn those a changed
        name reaches; for answers that depend on the rest of the zone only through the SOA
        (unsigned negative answers), patch the new serial in place when that is all that
        changed. Returns how many keys were relearned or patched."""
        direct, denial = self._affected(changed)
        patch = [k for k in self.loaded if k in denial and self.loaded[k].soa_only]
        relearn = [k for k in self.loaded if k in direct or (k in denial and k not in patch)]
        return self.reload(relearn) + self.patch_soa(patch)

    def _values(self, key: Key) -> dict[int, maps.AnswerValue]:
        item = self.loaded.get(key)
        lookup = getattr(self.sink, "lookup", None)
        if item is None or lookup is None:
            return {}
        out = {}
        for v, (kind, mk) in zip(item.variants, _map_keys(key, item.variants), strict=True):
            raw = lookup(kind, mk)
            if raw is not None:
                out[v] = maps.AnswerValue.unpack(raw)
        return out

    def patch_soa(self, keys: list[Key]) -> int:
        """Move the SOA serial of ``keys``' entries to the zone's current one, in place.

        One key is relearnt from the engine as the reference: if its SOA record changed
        in nothing but the serial, every other entry carrying the same old SOA record
        gets the new serial written over the old (4 octets, checksum updated); any
        other entry, or every one when more than the serial changed, is relearnt.
        """
        keys = [k for k in keys if k in self.loaded]
        if not keys:
            return 0
        ref, rest = keys[0], keys[1:]
        before = self._values(ref)
        done = self.reload([ref])
        after = self._values(ref)
        old_soa = new_serial = None
        for v, val in before.items():
            o = _soa_in(val, ref[1])
            n = _soa_in(after[v], ref[1]) if v in after else None
            if o is None or n is None or o[1] != n[1]:
                old_soa = None
                break
            old_soa, new_serial = o[1], n[2]
        if old_soa is None:
            return done + self.reload(rest)
        batch: list[tuple[str, bytes, bytes]] = []
        fallback: list[Key] = []
        for k in rest:
            variants = self.loaded[k].variants
            mks = dict(zip(variants, _map_keys(k, variants), strict=True))
            vals = self._values(k)
            staged = []
            for v, val in vals.items():
                found = _soa_in(val, k[1])
                if found is None or found[1] != old_soa or val.fixups:
                    break
                body = bytearray(val.body)
                struct.pack_into("!I", body, found[0], new_serial)
                val.body = bytes(body)
                staged.append((*mks[v], val.pack(self.body_max)))
            else:
                if len(vals) == len(variants):
                    batch += staged
                    continue
            fallback.append(k)
        if batch:
            self.sink.load(batch)
        return done + len(rest) - len(fallback) + self.reload(fallback)

    def reload(self, keys: Iterable[Key]) -> int:
        """Relearn ``keys`` from the engine and replace them in the maps (delete if no longer
        cacheable). Returns how many are loaded afterwards.

        A key still cacheable is overwritten in place (readers see the old or the
        new answer); its variants that are no longer cacheable are deleted.
        """
        n = 0
        batch: list[tuple[str, bytes, bytes]] = []
        gone: list[tuple[str, bytes]] = []
        for k in keys:
            old = self.loaded.get(k)
            if old is None:
                continue
            ents = self._learn(k)
            if not ents:
                self.drop([k])
                continue
            batch += self._remember(k, ents, old.count, old.slot)
            lost = set(old.variants) - set(self.loaded[k].variants)
            gone += _map_keys(k, lost)
            n += 1
        if batch:
            self.sink.load(batch)
        if gone:
            self.sink.invalidate(gone)
        return n

    # -- sharing between processes ----------------------------------------------
    def export_state(self) -> bytes:
        """What another process's HotSet on the same maps needs to keep them coherent."""
        return marshal.dumps(
            {
                (k[0], k[1], int(k[2])): (
                    v.variants,
                    int(v.count),
                    v.owners,
                    v.denial,
                    v.slot,
                    v.soa_only,
                )
                for k, v in self.loaded.items()
            }
        )

    def import_state(self, data: bytes) -> None:
        self.loaded = {k: _Loaded(*v) for k, v in marshal.loads(data).items()}
        self._slots_used = {v.slot for v in self.loaded.values() if v.slot}
        self._index = None
        self.version += 1

    def summary(self) -> dict[str, Any]:
        kinds = Counter(k[0] for k in self.loaded)
        return {
            "keys": len(self.loaded),
            "delegations": kinds["deleg"],
            "exact": kinds["exact"],
            "entries": sum(len(v.variants) for v in self.loaded.values()),
            "rejected": dict(self.builder.rejected),
        }
