"""RFC 2136 UPDATE processing against one slice (or whole-zone) database.

:func:`process` takes a parsed UPDATE (:func:`zoneslice.updates.wire.parse_update`,
records in wire order) and applies it to the rows of a :class:`Batch`, in memory:
zone section (FORMERR / NOTAUTH), prerequisites in RFC order (§3.2), prescan of
the update section (§3.4.1), ordered application (§3.4.2), then one serial bump
and one journal entry. A refusal is decided before anything is written, so the
zone and its serial stay as they were without a SAVEPOINT; the batch writes the
net change of all its messages at :meth:`Batch.finish`, and committing (and
fsyncing) is the caller's job (:mod:`zoneslice.updates.queue`).

Rules beyond the RFC's pseudocode, as BIND and Knot apply them: a new TTL
applies to the whole RRset; CNAME coexists only with DNSSEC types; an update
that changes nothing does not bump the serial; an explicit SOA with a greater
serial is taken as is, otherwise the serial is incremented once (or set to the
current time with the ``unixtime`` policy).
"""

from __future__ import annotations

import functools
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from zoneslice import journal
from zoneslice.errors import UpdateRefused
from zoneslice.slicing import SlicePlan
from zoneslice.store.keys import name_key
from zoneslice.store.models import OWNED
from zoneslice.updates.wire import Rec, Update

T = dns.rdatatype
R = dns.rcode
SERIAL_POLICIES = ("increment", "unixtime")
CNAME_COMPANIONS = frozenset({T.RRSIG, T.NSEC, T.KEY})
"""Types that may sit next to a CNAME (RFC 2181 §10.1, RFC 4035)."""
BAD_UPDATE_TYPES = frozenset({T.AXFR, T.IXFR, T.MAILA, T.MAILB, T.OPT, T.TSIG, T.TKEY})

Allowed = Callable[[dns.name.Name, int], bool]
"""Policy check for one update-section record: (owner, rdtype) -> may this client change it."""

Row = tuple[int, int, bytes, int]
"""(rdtype, covers, rdata, ttl) of one owned record."""


@dataclass
class Zone:
    """What an update needs to know about the database it changes."""

    origin: dns.name.Name
    plan: SlicePlan | None = None
    index: int = 0
    signed: bool = False

    @classmethod
    def from_conn(cls, conn: sqlite3.Connection) -> Zone:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        plan = None
        if int(meta.get("parts", "1") or 1) > 1:
            plan = SlicePlan.from_bounds_text(meta["origin"], [""] + meta.get("bounds", "").split())
        return cls(
            dns.name.from_text(meta["origin"]),
            plan,
            int(meta.get("index", "0") or 0),
            bool(meta.get("dnssec", "")),
        )

    @functools.cached_property
    def _tail(self) -> tuple[bytes, ...]:
        return tuple(lb.lower() for lb in self.origin.labels)

    def contains(self, name: dns.name.Name) -> bool:
        """``name.is_subdomain(origin)`` without dnspython's general comparison (~10x)."""
        tail = self._tail
        labels = name.labels
        n = len(tail)
        if len(labels) < n or not name.is_absolute():
            return False
        return tuple(lb.lower() for lb in labels[len(labels) - n :]) == tail

    def owns(self, name: dns.name.Name) -> bool:
        """Whether ``name`` (in the zone) belongs to this slice."""
        return self.plan is None or name == self.origin or self.plan.slice_for(name) == self.index


@dataclass
class UpdateResult:
    """The rcode of one UPDATE and, when it changed the zone, what changed."""

    rcode: int
    names: set[dns.name.Name] = field(default_factory=set)
    changeset: journal.Changeset | None = None
    reason: str = ""


def serial_gt(a: int, b: int) -> bool:
    """RFC 1982 ``a > b`` for 32-bit serials."""
    return a != b and ((a > b and a - b < 1 << 31) or (a < b and b - a > 1 << 31))


def next_serial(current: int, policy: str = "increment", now: int | None = None) -> int:
    """The serial after ``current`` (never 0, as BIND)."""
    if policy == "unixtime":
        stamp = int(time.time()) if now is None else now
        if serial_gt(stamp, current):
            return stamp
    nxt = (current + 1) & 0xFFFFFFFF
    return nxt or 1


_WIRE_IS_CANONICAL = frozenset({T.A, T.AAAA, T.TXT, T.DS, T.DNSKEY, T.SSHFP, T.TLSA})
_ONE_NAME = frozenset({T.NS, T.CNAME, T.PTR, T.DNAME})


def canonical(rdtype: int, rdata: bytes) -> bytes:
    """RFC 4034 §6.2 canonical form of rdata, for RRset equality."""
    if rdtype in _WIRE_IS_CANONICAL:
        return rdata
    if rdtype in _ONE_NAME:
        return rdata.lower()  # length octets are < 64, so only ASCII letters change
    rd = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, rdata, 0, len(rdata))
    return rd.to_digestable()


class Batch:
    """What the messages of one transaction (one group commit) share: the owned rows of
    every node they read, as the database held them before the batch (``stored``) and as
    the messages left them (``rows``), and the SOA; :meth:`finish` writes the difference
    once (writing it twice changes nothing more), so a
    batch costs two ``executemany`` rather than a statement per record and a SAVEPOINT
    per message."""

    def __init__(self) -> None:
        self.rows: dict[bytes, set[Row]] = {}
        self.stored: dict[bytes, frozenset[Row]] = {}
        self.soa: Row | None = None
        self.dirty = False

    def finish(self, conn: sqlite3.Connection) -> None:
        """Write the batch's net change, the SOA and the meta serial; call before the
        commit. A database error here leaves the transaction for the caller to roll back."""
        gone: list[tuple[bytes, int, int, bytes, int]] = []
        come: list[tuple[bytes, int, int, bytes, int, int]] = []
        for key, now in self.rows.items():
            was = self.stored[key]
            if now == was:
                continue
            gone += [(key, r[0], r[1], r[2], OWNED) for r in was - now if r[0] != T.SOA]
            come += [(key, *r, OWNED) for r in now - was if r[0] != T.SOA]
        if gone:
            conn.executemany(
                "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND covers = ? AND rdata = ?"
                " AND origin = ?",
                gone,
            )
        if come:
            conn.executemany(
                "INSERT OR REPLACE INTO rr (rkey, rdtype, covers, rdata, ttl, origin)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                come,
            )
        if not self.dirty or self.soa is None:
            return
        conn.execute("DELETE FROM rr WHERE rkey = x'' AND rdtype = ? AND origin = ?", (T.SOA, OWNED))
        conn.execute(
            "INSERT INTO rr (rkey, rdtype, covers, rdata, ttl, origin) VALUES (x'', ?, 0, ?, ?, ?)",
            (T.SOA, self.soa[2], self.soa[3], OWNED),
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('serial', ?)",
            (str(journal.soa_serial(self.soa[2])),),
        )
        self.dirty = False


class _Store:
    """Owned rows of one database through the caller's connection, read once per batch
    into the :class:`Batch` (which writes them back)."""

    def __init__(self, conn: sqlite3.Connection, origin: dns.name.Name, batch: Batch) -> None:
        self.conn = conn
        self.origin = origin
        self.batch = batch
        self.cache = batch.rows

    def key(self, name: dns.name.Name) -> bytes:
        return name_key(name, self.origin)

    def rows(self, key: bytes) -> set[Row]:
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache[key] = set(
                self.conn.execute(
                    "SELECT rdtype, covers, rdata, ttl FROM rr WHERE rkey = ? AND origin = ?",
                    (key, OWNED),
                )
            )
            self.batch.stored[key] = frozenset(cached)
        if not key and self.batch.soa is not None:
            return {r for r in cached if r[0] != T.SOA} | {self.batch.soa}
        return set(cached)

    def types(self, key: bytes) -> set[int]:
        return {r[0] for r in self.rows(key)}

    def rrset(self, key: bytes, rdtype: int) -> list[Row]:
        return [r for r in self.rows(key) if r[0] == rdtype]

    def store(self, key: bytes, rows: set[Row]) -> None:
        """The node's rows after a message that passed every check (written at finish)."""
        self.cache[key] = set(rows)

    def soa(self) -> Row:
        rows = self.rrset(b"", T.SOA)
        if len(rows) != 1:
            raise UpdateRefused(R.SERVFAIL, f"{self.origin}: {len(rows)} SOA records at the apex")
        self.batch.soa = rows[0]
        return rows[0]


def _rrset_canon(rows: list[Row]) -> set[bytes]:
    return {canonical(r[0], r[2]) for r in rows}


def process(
    conn: sqlite3.Connection,
    upd: Update,
    zone: Zone,
    *,
    allowed: Allowed | None = None,
    serial_policy: str = "increment",
    batch: Batch | None = None,
) -> UpdateResult:
    """Apply one UPDATE (:func:`zoneslice.updates.wire.parse_update`) to ``batch`` inside
    ``conn``'s open transaction; never raises for a refusal (the rcode says it, and nothing
    was changed), only for database failures (the caller rolls the transaction back).

    Messages of one transaction share a :class:`Batch`, whose ``finish`` must run
    before the commit; without one, the change is written before returning.
    """
    b = Batch() if batch is None else batch
    try:
        result = _process(conn, upd, zone, allowed, serial_policy, b)
    except UpdateRefused as exc:
        return UpdateResult(exc.rcode, reason=str(exc))
    if batch is None:
        b.finish(conn)
    return result


def check_zone(upd: Update, zone: Zone) -> None:
    """RFC 2136 §3.1: one SOA-typed zone record naming our zone in class IN."""
    if len(upd.zone) != 1 or upd.zone[0].rdtype != T.SOA:
        raise UpdateRefused(R.FORMERR, "zone section must hold one SOA-typed record")
    z = upd.zone[0]
    if z.rdclass != dns.rdataclass.IN or z.name != zone.origin:
        raise UpdateRefused(R.NOTAUTH, f"not authoritative for {z.name}")


def _in_zone(name: dns.name.Name, zone: Zone) -> None:
    if not zone.contains(name):
        raise UpdateRefused(R.NOTZONE, f"{name} is outside {zone.origin}")
    if not zone.owns(name):
        raise UpdateRefused(R.NOTAUTH, f"{name} is outside this slice")


def check_prerequisites(store: _Store, zone: Zone, prereqs: list[Rec]) -> None:
    """RFC 2136 §3.2.5, record by record; the value-dependent ones compared at the end."""
    temp: dict[tuple[dns.name.Name, int], set[bytes]] = {}
    for rec in prereqs:
        name = rec.name
        if rec.ttl != 0:
            raise UpdateRefused(R.FORMERR, f"prerequisite {name} has TTL {rec.ttl}")
        _in_zone(name, zone)
        key = store.key(name)
        if rec.rdclass == dns.rdataclass.ANY:
            if rec.rdata:
                raise UpdateRefused(R.FORMERR, f"prerequisite {name} class ANY with data")
            if rec.rdtype == T.ANY:
                if not store.rows(key):
                    raise UpdateRefused(R.NXDOMAIN, f"{name} is not in use")
            elif not store.rrset(key, rec.rdtype):
                raise UpdateRefused(R.NXRRSET, f"{name} {T.to_text(rec.rdtype)} does not exist")
        elif rec.rdclass == dns.rdataclass.NONE:
            if rec.rdata:
                raise UpdateRefused(R.FORMERR, f"prerequisite {name} class NONE with data")
            if rec.rdtype == T.ANY:
                if store.rows(key):
                    raise UpdateRefused(R.YXDOMAIN, f"{name} is in use")
            elif store.rrset(key, rec.rdtype):
                raise UpdateRefused(R.YXRRSET, f"{name} {T.to_text(rec.rdtype)} exists")
        elif rec.rdclass == dns.rdataclass.IN:
            if T.is_metatype(rec.rdtype) or not rec.rdata:
                raise UpdateRefused(R.FORMERR, f"bad value prerequisite at {name}")
            temp.setdefault((name, rec.rdtype), set()).add(canonical(rec.rdtype, rec.rdata))
        else:
            raise UpdateRefused(R.FORMERR, f"prerequisite {name} in class {rec.rdclass}")
    for (name, rdtype), want in temp.items():
        if _rrset_canon(store.rrset(store.key(name), rdtype)) != want:
            raise UpdateRefused(R.NXRRSET, f"{name} {T.to_text(rdtype)} differs")


def prescan(zone: Zone, updates: list[Rec], allowed: Allowed | None) -> None:
    """RFC 2136 §3.4.1, then the policy (as BIND): reject the whole message before any
    record is applied."""
    for rec in updates:
        _in_zone(rec.name, zone)
        rdtype = rec.rdtype
        if rec.rdclass == dns.rdataclass.IN:
            if rdtype == T.ANY or rdtype in BAD_UPDATE_TYPES or T.is_metatype(rdtype):
                raise UpdateRefused(R.FORMERR, f"cannot add type {T.to_text(rdtype)}")
            if not rec.rdata:
                raise UpdateRefused(R.FORMERR, f"add of {rec.name} without data")
        elif rec.rdclass == dns.rdataclass.ANY:
            if rec.ttl != 0 or rec.rdata or rdtype in BAD_UPDATE_TYPES:
                raise UpdateRefused(R.FORMERR, f"bad delete of {rec.name}")
        elif rec.rdclass == dns.rdataclass.NONE:
            if rec.ttl != 0 or rdtype == T.ANY or rdtype in BAD_UPDATE_TYPES or not rec.rdata:
                raise UpdateRefused(R.FORMERR, f"bad delete of a record at {rec.name}")
        else:
            raise UpdateRefused(R.FORMERR, f"update {rec.name} in class {rec.rdclass}")
    if allowed is not None:
        for rec in updates:
            if not allowed(rec.name, rec.rdtype):
                raise UpdateRefused(R.REFUSED, f"not allowed to update {rec.name}")


class _Applier:
    """§3.4.2 on the store, keeping each touched node in memory (one SELECT per node)
    and remembering it as it was before."""

    def __init__(self, store: _Store, zone: Zone) -> None:
        self.store = store
        self.zone = zone
        self.before: dict[bytes, tuple[dns.name.Name, set[Row]]] = {}
        self.cur: dict[bytes, set[Row]] = {}
        self.soa_set = False

    def touch(self, name: dns.name.Name) -> bytes:
        key = self.store.key(name)
        if key not in self.before:
            rows = self.store.rows(key)
            self.before[key] = (name, rows)
            self.cur[key] = set(rows)
        return key

    def _insert(self, key: bytes, row: Row) -> None:
        rdtype, covers, rdata, _ttl = row
        cur = self.cur[key]
        for r in [r for r in cur if r[0] == rdtype and r[1] == covers and r[2] == rdata]:
            cur.discard(r)
        cur.add(row)

    def _delete_rows(self, key: bytes, rows: list[Row]) -> None:
        cur = self.cur[key]
        for r in rows:
            cur.discard(r)

    def _delete_type(self, key: bytes, rdtype: int) -> None:
        cur = self.cur[key]
        for r in [r for r in cur if r[0] == rdtype]:
            cur.discard(r)

    def apply(self, rec: Rec) -> None:
        if rec.rdclass == dns.rdataclass.IN:
            self.add(rec)
        elif rec.rdclass == dns.rdataclass.ANY:
            self.delete_rrsets(rec.name, rec.rdtype)
        else:
            self.delete_rr(rec)

    def add(self, rec: Rec) -> None:
        name, rdtype, rdata = rec.name, rec.rdtype, rec.rdata
        key = self.touch(name)
        cur = self.cur[key]
        types = {r[0] for r in cur}
        if rdtype == T.CNAME and types - {T.CNAME} - CNAME_COMPANIONS:
            return
        if rdtype not in (T.CNAME, *CNAME_COMPANIONS) and T.CNAME in types:
            return
        covers = rec.covers
        if rdtype == T.SOA:
            if name != self.zone.origin:
                return
            old = [r for r in cur if r[0] == T.SOA]
            if len(old) != 1:
                raise UpdateRefused(R.SERVFAIL, f"{self.zone.origin}: {len(old)} SOA records")
            if not serial_gt(journal.soa_serial(rdata), journal.soa_serial(old[0][2])):
                return
            self._delete_type(key, T.SOA)
            self._insert(key, (T.SOA, 0, rdata, rec.ttl))
            self.soa_set = True
            return
        if rdtype == T.CNAME:
            self._delete_type(key, T.CNAME)
            self._insert(key, (rdtype, covers, rdata, rec.ttl))
            return
        want = canonical(rdtype, rdata)
        self._delete_rows(key, [r for r in cur if r[0] == rdtype and r[1] == covers
                                and canonical(rdtype, r[2]) == want])
        self._insert(key, (rdtype, covers, rdata, rec.ttl))
        for r in [r for r in cur if r[0] == rdtype and r[1] == covers and r[3] != rec.ttl]:
            cur.discard(r)
            cur.add((r[0], r[1], r[2], rec.ttl))

    def delete_rrsets(self, name: dns.name.Name, rdtype: int) -> None:
        apex = name == self.zone.origin
        if apex and rdtype in (T.SOA, T.NS):
            return
        key = self.touch(name)
        if rdtype != T.ANY:
            self._delete_type(key, rdtype)
            return
        for t in {r[0] for r in self.cur[key]}:
            if not (apex and t in (T.SOA, T.NS)):
                self._delete_type(key, t)

    def delete_rr(self, rec: Rec) -> None:
        name, rdtype = rec.name, rec.rdtype
        if rdtype == T.SOA:
            return
        key = self.touch(name)
        current = [r for r in self.cur[key] if r[0] == rdtype]
        want = canonical(rdtype, rec.rdata)
        covers = rec.covers
        hits = [r for r in current if r[1] == covers and canonical(rdtype, r[2]) == want]
        if rdtype == T.NS and name == self.zone.origin and len(hits) == len(current):
            return
        self._delete_rows(key, hits)

    def diff(self) -> tuple[list[journal.RR], list[journal.RR], set[dns.name.Name]]:
        """Net deleted and added records (SOA aside) and the owners that changed."""
        deleted: list[journal.RR] = []
        added: list[journal.RR] = []
        names: set[dns.name.Name] = set()
        for key, (name, before) in sorted(self.before.items()):
            after = self.cur[key]
            gone = sorted(r for r in before - after if r[0] != T.SOA)
            new = sorted(r for r in after - before if r[0] != T.SOA)
            if gone or new:
                names.add(name)
            deleted += [(name, r[0], r[3], r[2]) for r in gone]
            added += [(name, r[0], r[3], r[2]) for r in new]
        return deleted, added, names


def _process(
    conn: sqlite3.Connection,
    upd: Update,
    zone: Zone,
    allowed: Allowed | None,
    serial_policy: str,
    batch: Batch,
) -> UpdateResult:
    check_zone(upd, zone)
    store = _Store(conn, zone.origin, batch)
    check_prerequisites(store, zone, upd.prereqs)
    prescan(zone, upd.updates, allowed)
    if zone.signed and upd.updates:
        raise UpdateRefused(R.REFUSED, f"{zone.origin} is signed; updates need online signing")
    old_soa = store.soa()
    applier = _Applier(store, zone)
    for rec in upd.updates:
        applier.apply(rec)
    deleted, added, names = applier.diff()
    if not (deleted or added or applier.soa_set):
        return UpdateResult(R.NOERROR)
    for key, rows in applier.cur.items():
        store.store(key, rows)
    if applier.soa_set:
        (new_soa,) = [r for r in applier.cur[b""] if r[0] == T.SOA]
    else:
        serial = next_serial(journal.soa_serial(old_soa[2]), serial_policy)
        rdata = old_soa[2][:-20] + struct.pack("!I", serial) + old_soa[2][-16:]
        new_soa = (T.SOA, 0, rdata, old_soa[3])
    batch.soa = new_soa
    batch.dirty = True
    cs = journal.Changeset(old_soa[2], new_soa[2], deleted, added)
    journal.append(conn, cs)
    names.add(zone.origin)
    return UpdateResult(R.NOERROR, names, cs)
