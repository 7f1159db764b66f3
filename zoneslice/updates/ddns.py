"""RFC 2136 UPDATE processing against one slice (or whole-zone) database.

:func:`process` takes a parsed UPDATE (``one_rr_per_rrset=True``, so records
keep their wire order) and applies it inside a SAVEPOINT of the caller's
transaction: zone section (FORMERR / NOTAUTH), prerequisites in RFC order
(§3.2), prescan of the update section (§3.4.1), ordered application (§3.4.2),
then one serial bump and one journal entry. Any refusal rolls the savepoint
back, so the zone and its serial stay as they were; committing (and fsyncing)
is the caller's job (:mod:`zoneslice.updates.queue`).

Rules beyond the RFC's pseudocode, as BIND and Knot apply them: a new TTL
applies to the whole RRset; CNAME coexists only with DNSSEC types; an update
that changes nothing does not bump the serial; an explicit SOA with a greater
serial is taken as is, otherwise the serial is incremented once (or set to the
current time with the ``unixtime`` policy).
"""

from __future__ import annotations

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


def canonical(rdtype: int, rdata: bytes) -> bytes:
    """RFC 4034 §6.2 canonical form of rdata, for RRset equality."""
    rd = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, rdata, 0, len(rdata))
    return rd.to_digestable()


def _record_ttls(wire: bytes) -> list[int]:
    """TTL of every prerequisite and update record, in wire order (dnspython drops them
    for empty-rdata records, which RFC 2136 requires to be 0)."""
    qd, an, ns = struct.unpack_from("!HHH", wire, 4)
    pos = 12
    out: list[int] = []
    for i in range(qd + an + ns):
        while True:
            ln = wire[pos]
            if ln >= 0xC0:
                pos += 2
                break
            pos += ln + 1
            if ln == 0:
                break
        if i < qd:
            pos += 4
            continue
        ttl, rdlen = struct.unpack_from("!IH", wire, pos + 4)
        out.append(ttl)
        pos += 10 + rdlen
    return out


class _Store:
    """Owned rows of one database, read and written through the caller's connection."""

    def __init__(self, conn: sqlite3.Connection, origin: dns.name.Name) -> None:
        self.conn = conn
        self.origin = origin

    def key(self, name: dns.name.Name) -> bytes:
        return name_key(name, self.origin)

    def rows(self, key: bytes) -> set[Row]:
        return set(
            self.conn.execute(
                "SELECT rdtype, covers, rdata, ttl FROM rr WHERE rkey = ? AND origin = ?",
                (key, OWNED),
            )
        )

    def types(self, key: bytes) -> set[int]:
        return {r[0] for r in self.rows(key)}

    def rrset(self, key: bytes, rdtype: int) -> list[Row]:
        return [r for r in self.rows(key) if r[0] == rdtype]

    def insert(self, key: bytes, rdtype: int, covers: int, rdata: bytes, ttl: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO rr (rkey, rdtype, covers, rdata, ttl, origin)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, rdtype, covers, rdata, ttl, OWNED),
        )

    def delete(self, key: bytes, rdtype: int, covers: int, rdata: bytes) -> None:
        self.conn.execute(
            "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND covers = ? AND rdata = ?"
            " AND origin = ?",
            (key, rdtype, covers, rdata, OWNED),
        )

    def delete_type(self, key: bytes, rdtype: int) -> None:
        self.conn.execute(
            "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND origin = ?", (key, rdtype, OWNED)
        )

    def set_ttl(self, key: bytes, rdtype: int, covers: int, ttl: int) -> None:
        self.conn.execute(
            "UPDATE rr SET ttl = ? WHERE rkey = ? AND rdtype = ? AND covers = ? AND origin = ?",
            (ttl, key, rdtype, covers, OWNED),
        )

    def soa(self) -> Row:
        rows = self.rrset(b"", T.SOA)
        if len(rows) != 1:
            raise UpdateRefused(R.SERVFAIL, f"{self.origin}: {len(rows)} SOA records at the apex")
        return rows[0]


def _rrset_canon(rows: list[Row]) -> set[bytes]:
    return {canonical(r[0], r[2]) for r in rows}


def process(
    conn: sqlite3.Connection,
    msg: dns.message.Message,
    wire: bytes,
    zone: Zone,
    *,
    allowed: Allowed | None = None,
    serial_policy: str = "increment",
) -> UpdateResult:
    """Apply one UPDATE in a SAVEPOINT of ``conn``'s open transaction; never raises for
    a refusal (the rcode says it), only for database failures (after rolling back)."""
    conn.execute("SAVEPOINT ddns")
    try:
        result = _process(conn, msg, wire, zone, allowed, serial_policy)
    except UpdateRefused as exc:
        conn.execute("ROLLBACK TO ddns")
        conn.execute("RELEASE ddns")
        return UpdateResult(exc.rcode, reason=str(exc))
    except BaseException:
        conn.execute("ROLLBACK TO ddns")
        conn.execute("RELEASE ddns")
        raise
    conn.execute("RELEASE ddns")
    return result


def check_zone(msg: dns.message.Message, zone: Zone) -> None:
    """RFC 2136 §3.1: one SOA-typed zone record naming our zone in class IN."""
    zsec = msg.sections[0]
    if len(zsec) != 1 or zsec[0].rdtype != T.SOA:
        raise UpdateRefused(R.FORMERR, "zone section must hold one SOA-typed record")
    if zsec[0].rdclass != dns.rdataclass.IN or zsec[0].name != zone.origin:
        raise UpdateRefused(R.NOTAUTH, f"not authoritative for {zsec[0].name}")


def _in_zone(name: dns.name.Name, zone: Zone) -> None:
    if not name.is_subdomain(zone.origin):
        raise UpdateRefused(R.NOTZONE, f"{name} is outside {zone.origin}")
    if not zone.owns(name):
        raise UpdateRefused(R.NOTAUTH, f"{name} is outside this slice")


def check_prerequisites(
    store: _Store, zone: Zone, prereqs: list[dns.rrset.RRset], ttls: list[int]
) -> None:
    """RFC 2136 §3.2.5, record by record; the value-dependent ones compared at the end."""
    temp: dict[tuple[dns.name.Name, int], set[bytes]] = {}
    for rrset, ttl in zip(prereqs, ttls, strict=True):
        name = rrset.name
        if ttl != 0:
            raise UpdateRefused(R.FORMERR, f"prerequisite {name} has TTL {ttl}")
        _in_zone(name, zone)
        key = store.key(name)
        if rrset.deleting == dns.rdataclass.ANY:
            if rrset.rdtype == T.ANY:
                if not store.rows(key):
                    raise UpdateRefused(R.NXDOMAIN, f"{name} is not in use")
            elif not store.rrset(key, rrset.rdtype):
                raise UpdateRefused(R.NXRRSET, f"{name} {T.to_text(rrset.rdtype)} does not exist")
        elif rrset.deleting == dns.rdataclass.NONE:
            if rrset.rdtype == T.ANY:
                if store.rows(key):
                    raise UpdateRefused(R.YXDOMAIN, f"{name} is in use")
            elif store.rrset(key, rrset.rdtype):
                raise UpdateRefused(R.YXRRSET, f"{name} {T.to_text(rrset.rdtype)} exists")
        elif rrset.rdclass == dns.rdataclass.IN:
            if T.is_metatype(rrset.rdtype) or len(rrset) != 1:
                raise UpdateRefused(R.FORMERR, f"bad value prerequisite at {name}")
            rd = rrset[0]
            temp.setdefault((name, rrset.rdtype), set()).add(rd.to_digestable())
        else:
            raise UpdateRefused(R.FORMERR, f"prerequisite {name} in class {rrset.rdclass}")
    for (name, rdtype), want in temp.items():
        if _rrset_canon(store.rrset(store.key(name), rdtype)) != want:
            raise UpdateRefused(R.NXRRSET, f"{name} {T.to_text(rdtype)} differs")


def prescan(
    zone: Zone, updates: list[dns.rrset.RRset], ttls: list[int], allowed: Allowed | None
) -> None:
    """RFC 2136 §3.4.1, then the policy (as BIND): reject the whole message before any
    record is applied."""
    for rrset, ttl in zip(updates, ttls, strict=True):
        _in_zone(rrset.name, zone)
        rdtype = rrset.rdtype
        if rrset.deleting is None:
            if rrset.rdclass != dns.rdataclass.IN:
                raise UpdateRefused(R.FORMERR, f"update {rrset.name} in class {rrset.rdclass}")
            if rdtype == T.ANY or rdtype in BAD_UPDATE_TYPES or T.is_metatype(rdtype):
                raise UpdateRefused(R.FORMERR, f"cannot add type {T.to_text(rdtype)}")
        elif rrset.deleting == dns.rdataclass.ANY:
            if ttl != 0 or len(rrset) or rdtype in BAD_UPDATE_TYPES:
                raise UpdateRefused(R.FORMERR, f"bad delete of {rrset.name}")
        elif rrset.deleting == dns.rdataclass.NONE:
            if ttl != 0 or rdtype == T.ANY or rdtype in BAD_UPDATE_TYPES:
                raise UpdateRefused(R.FORMERR, f"bad delete of a record at {rrset.name}")
    if allowed is not None:
        for rrset in updates:
            if not allowed(rrset.name, rrset.rdtype):
                raise UpdateRefused(R.REFUSED, f"not allowed to update {rrset.name}")


class _Applier:
    """§3.4.2 on the store, remembering each touched node as it was before."""

    def __init__(self, store: _Store, zone: Zone) -> None:
        self.store = store
        self.zone = zone
        self.before: dict[bytes, tuple[dns.name.Name, set[Row]]] = {}
        self.soa_set = False

    def touch(self, name: dns.name.Name) -> bytes:
        key = self.store.key(name)
        if key not in self.before:
            self.before[key] = (name, self.store.rows(key))
        return key

    def apply(self, rrset: dns.rrset.RRset, ttl: int) -> None:
        if rrset.deleting is None:
            self.add(rrset, ttl)
        elif rrset.deleting == dns.rdataclass.ANY:
            self.delete_rrsets(rrset.name, rrset.rdtype)
        else:
            self.delete_rr(rrset)

    def add(self, rrset: dns.rrset.RRset, ttl: int) -> None:
        s = self.store
        name, rdtype, rd = rrset.name, rrset.rdtype, rrset[0]
        key = self.touch(name)
        types = s.types(key)
        if rdtype == T.CNAME and types - {T.CNAME} - CNAME_COMPANIONS:
            return
        if rdtype not in (T.CNAME, *CNAME_COMPANIONS) and T.CNAME in types:
            return
        rdata = rd.to_wire()
        covers = int(rd.covers())
        if rdtype == T.SOA:
            if name != self.zone.origin:
                return
            old = s.soa()
            if not serial_gt(rd.serial, journal.soa_serial(old[2])):
                return
            s.delete_type(key, T.SOA)
            s.insert(key, T.SOA, 0, rdata, rrset.ttl)
            self.soa_set = True
            return
        if rdtype == T.CNAME:
            s.delete_type(key, T.CNAME)
            s.insert(key, rdtype, covers, rdata, rrset.ttl)
            return
        want = rd.to_digestable()
        for r in s.rrset(key, rdtype):
            if r[1] == covers and canonical(rdtype, r[2]) == want:
                s.delete(key, rdtype, covers, r[2])
        s.insert(key, rdtype, covers, rdata, rrset.ttl)
        s.set_ttl(key, rdtype, covers, rrset.ttl)

    def delete_rrsets(self, name: dns.name.Name, rdtype: int) -> None:
        s = self.store
        apex = name == self.zone.origin
        if apex and rdtype in (T.SOA, T.NS):
            return
        key = self.touch(name)
        if rdtype != T.ANY:
            s.delete_type(key, rdtype)
            return
        for t in s.types(key):
            if not (apex and t in (T.SOA, T.NS)):
                s.delete_type(key, t)

    def delete_rr(self, rrset: dns.rrset.RRset) -> None:
        s = self.store
        name, rdtype, rd = rrset.name, rrset.rdtype, rrset[0]
        if rdtype == T.SOA:
            return
        key = self.touch(name)
        current = s.rrset(key, rdtype)
        want = rd.to_digestable()
        covers = int(rd.covers())
        hits = [r for r in current if r[1] == covers and canonical(rdtype, r[2]) == want]
        if rdtype == T.NS and name == self.zone.origin and len(hits) == len(current):
            return
        for r in hits:
            s.delete(key, rdtype, covers, r[2])

    def diff(self) -> tuple[list[journal.RR], list[journal.RR], set[dns.name.Name]]:
        """Net deleted and added records (SOA aside) and the owners that changed."""
        deleted: list[journal.RR] = []
        added: list[journal.RR] = []
        names: set[dns.name.Name] = set()
        for key, (name, before) in sorted(self.before.items()):
            after = self.store.rows(key)
            gone = sorted(r for r in before - after if r[0] != T.SOA)
            new = sorted(r for r in after - before if r[0] != T.SOA)
            if gone or new:
                names.add(name)
            deleted += [(name, r[0], r[3], r[2]) for r in gone]
            added += [(name, r[0], r[3], r[2]) for r in new]
        return deleted, added, names


def _process(
    conn: sqlite3.Connection,
    msg: dns.message.Message,
    wire: bytes,
    zone: Zone,
    allowed: Allowed | None,
    serial_policy: str,
) -> UpdateResult:
    check_zone(msg, zone)
    prereqs, updates = list(msg.sections[1]), list(msg.sections[2])
    try:
        ttls = _record_ttls(wire)
    except (IndexError, struct.error) as exc:
        raise UpdateRefused(R.FORMERR, "truncated message") from exc
    if len(ttls) < len(prereqs) + len(updates):
        raise UpdateRefused(R.FORMERR, "record count mismatch")
    store = _Store(conn, zone.origin)
    check_prerequisites(store, zone, prereqs, ttls[: len(prereqs)])
    prescan(zone, updates, ttls[len(prereqs) : len(prereqs) + len(updates)], allowed)
    if zone.signed and updates:
        raise UpdateRefused(R.REFUSED, f"{zone.origin} is signed; updates need online signing")
    old_soa = store.soa()
    applier = _Applier(store, zone)
    for rrset, ttl in zip(updates, ttls[len(prereqs) :], strict=False):
        applier.apply(rrset, ttl)
    deleted, added, names = applier.diff()
    if not (deleted or added or applier.soa_set):
        return UpdateResult(R.NOERROR)
    if applier.soa_set:
        new_soa = store.soa()
    else:
        serial = next_serial(journal.soa_serial(old_soa[2]), serial_policy)
        rdata = old_soa[2][:-20] + struct.pack("!I", serial) + old_soa[2][-16:]
        store.delete_type(b"", T.SOA)
        store.insert(b"", T.SOA, 0, rdata, old_soa[3])
        new_soa = (T.SOA, 0, rdata, old_soa[3])
    cs = journal.Changeset(old_soa[2], new_soa[2], deleted, added)
    journal.append(conn, cs)
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('serial', ?)", (str(cs.serial_to),)
    )
    names.add(zone.origin)
    return UpdateResult(R.NOERROR, names, cs)
