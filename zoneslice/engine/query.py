"""Decide the answer to a query from one slice database, exactly as NSD would for the whole zone.

:class:`Responder` is the engine's entry point: it takes a query message and
returns the response message (or None to drop it). The steady state is a
dictionary hit: answers are cached as rendered wire keyed by (lower-cased
question, EDNS presence, DO, size limit, address family) and only the ID, the
question's letter case and the RD/CD bits are patched in per packet. A miss
walks the slice with a few indexed SQLite lookups (exact node, ancestors,
subtree existence, canonical predecessor for NSEC/NSEC3), following NSD 4.6's
query.c and nsec3.c step by step, and :mod:`zoneslice.engine.answer` encodes
the result with NSD's compression and truncation rules.

NSD behaviours kept on purpose (the differential test checks them):

* positive answers carry the apex NS RRset in authority (and its glue in
  additional) unless the type is ANY, DS or DNSKEY, dropped silently when it
  does not fit;
* ANY gets one RRset (RFC 8482, NSD's choice: the first of A/AAAA/SOA/MX/PTR,
  else the last "normal" type, else the last of DNSKEY/RRSIG/NSEC), no NS in
  authority; the RRsets of a node are taken in BIND dump order (SOA, NS, then
  type number), which is the order of a signed or dumped zone file;
* glue that does not fit is left out without TC (answer/authority set TC, and
  so does a referral left without any address record);
* the negative-answer SOA has TTL min(SOA TTL, MINIMUM), its RRSIG too;
* CNAME chains are followed inside the zone until a loop repeats an RRset;
  DNAME synthesizes a CNAME with the DNAME's TTL (none for qtype CNAME);
* out-of-zone and out-of-slice names get REFUSED with EDE 20, other classes
  REFUSED, unknown opcodes NOTIMP (header echoed, no question, no OPT),
  malformed queries FORMERR (RD kept, no question, no OPT), EDNS version > 0
  BADVERS, AXFR over UDP NOTIMP.

Zone transfers: AXFR over TCP goes through :meth:`Responder.axfr` (a stream of
messages), only to clients ``axfr_allowed`` accepts; IXFR from them gets the
current SOA (no journal yet). UPDATE goes to ``Responder.update_handler`` when
one is set (issue 4), NOTIMP until then.

One deliberate difference: the CD bit is copied into the response (issue 3;
NSD clears it, following RFC 4035 3.1.6). ``Responder(copy_cd=False)`` gives
NSD's behaviour.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import dns.name

from zoneslice.engine import answer as wire
from zoneslice.engine.answer import (
    ADDITIONAL_A,
    ADDITIONAL_AAAA,
    ANSWER,
    AUTHORITY,
    OPTIONAL_AUTHORITY,
    Answer,
    Labels,
    RRset,
)
from zoneslice.engine.cache import AnswerCache, Entry
from zoneslice.errors import StoreError
from zoneslice.slicing import SlicePlan
from zoneslice.store.db import connect_readonly, read_meta
from zoneslice.store.keys import key_labels, labels_key, subtree_end

T_A, T_NS, T_CNAME, T_SOA, T_MB, T_MX, T_TXT, T_AAAA = 1, 2, 5, 6, 7, 15, 16, 28
T_SRV, T_KX, T_DNAME, T_OPT, T_DS, T_RRSIG, T_NSEC = 33, 36, 39, 41, 43, 46, 47
T_DNSKEY, T_NSEC3, T_NSEC3PARAM, T_TSIG, T_IXFR, T_AXFR, T_ANY = 48, 50, 51, 250, 251, 252, 255
T_PTR = 12

R_NOERROR, R_FORMERR, R_SERVFAIL, R_NXDOMAIN, R_NOTIMP, R_REFUSED = 0, 1, 2, 3, 4, 5
R_YXDOMAIN, R_NOTAUTH = 6, 9
C_IN, C_CH, C_ANY = 1, 3, 255
OP_QUERY, OP_NOTIFY, OP_UPDATE = 0, 4, 5

RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 9: "NOTAUTH", 16: "BADVERS",
}  # fmt: skip

_PREFERRED = frozenset((T_A, T_AAAA, T_SOA, T_MX, T_PTR))
_NON_PREFERRED = frozenset((T_DNSKEY, T_RRSIG, T_NSEC))
_NO_NS_AUTHORITY = frozenset((T_DNSKEY, T_DS, T_ANY))
_ADDITIONAL = {
    T_NS: (0, True),
    T_MB: (0, False),
    T_MX: (2, False),
    T_KX: (2, False),
    T_SRV: (6, False),
}
_NOT_NSEC3 = "NOT (rdtype = 50 OR (rdtype = 46 AND covers = 50))"
_UDP_PLAIN = 512
_TCP_MAX = 65535
_CNAME_LIMIT = 64
_HDR = struct.Struct("!HHHHHH")
_OPT_FIXED = struct.Struct("!HHBBHH")


def _dump_order(rdtype: int) -> int:
    """BIND's master-file order of RRsets at a node: SOA, NS, then by type number."""
    return 0 if rdtype == T_SOA else 1 if rdtype == T_NS else rdtype + 2


# ---------------------------------------------------------------- the slice data


class Node:
    """The RRsets stored at one owner name of the slice (empty for an empty non-terminal)."""

    __slots__ = ("rel", "owner", "data", "sigs", "nsec3_only")

    def __init__(self, rel: tuple[bytes, ...], owner: Labels, rows: list[tuple]) -> None:
        self.rel = rel
        self.owner = owner
        data: dict[int, list[tuple[bytes, int]]] = {}
        sigs: dict[int, list[tuple[int, bytes]]] = {}
        for rdtype, covers, rdata, ttl in rows:
            if rdtype == T_RRSIG:
                sigs.setdefault(covers, []).append((ttl, rdata))
            data.setdefault(rdtype, []).append((rdata, ttl))
        self.data = data
        self.sigs = sigs
        self.nsec3_only = (
            bool(data)
            and all(t in (T_NSEC3, T_RRSIG) for t in data)
            and all(c == T_NSEC3 for c in sigs)
        )

    def has(self, rdtype: int) -> bool:
        return rdtype in self.data

    def rrset(self, rdtype: int, owner: Labels | None = None, variant: object = None) -> RRset:
        rows = self.data[rdtype]
        rdatas = [rd for rd, _ in rows]
        if rdtype == T_RRSIG:
            rr = RRset(owner or self.owner, rdtype, rows[0][1], rdatas, None, variant)
            rr.ttls = [ttl for _, ttl in rows]
            return rr
        sigs = self.sigs.get(rdtype)
        if rdtype == T_SOA and sigs:
            sigs = [(rows[0][1], rd) for _, rd in sigs]
        return RRset(owner or self.owner, rdtype, rows[0][1], rdatas, sigs, variant)

    def types_in_order(self) -> list[int]:
        base = sorted((t for t in self.data if t != T_RRSIG), key=_dump_order)
        if T_RRSIG in self.data:
            for i, t in enumerate(base):
                if t in self.sigs:
                    base.insert(i + 1, T_RRSIG)
                    break
            else:
                base.append(T_RRSIG)
        return base


class SliceData:
    """Bounded, indexed lookups on one slice database (read-only connection)."""

    SQL_ROWS = "SELECT rdtype, covers, rdata, ttl FROM rr WHERE rkey = ?"
    SQL_BELOW = "SELECT 1 FROM rr WHERE rkey > ? AND rkey < ? LIMIT 1"
    SQL_AT_OR_BELOW = f"SELECT 1 FROM rr WHERE rkey >= ? AND rkey < ? AND {_NOT_NSEC3} LIMIT 1"
    SQL_NSEC_LE = (
        "SELECT rkey, rdtype, covers, rdata, ttl FROM rr WHERE rkey = (SELECT rkey FROM rr"
        " WHERE rdtype = 47 AND rkey <= ? ORDER BY rkey DESC LIMIT 1)"
        " AND (rdtype = 47 OR (rdtype = 46 AND covers = 47))"
    )
    SQL_NSEC_LT = "SELECT rkey FROM rr WHERE rdtype = 47 AND rkey < ? ORDER BY rkey DESC LIMIT 1"
    SQL_NSEC3_LE = "SELECT rkey FROM rr WHERE rdtype = 50 AND rkey <= ? ORDER BY rkey DESC LIMIT 1"
    SQL_NSEC3_LT = "SELECT rkey FROM rr WHERE rdtype = 50 AND rkey < ? ORDER BY rkey DESC LIMIT 1"
    SQL_NSEC3_MAX = "SELECT rkey FROM rr WHERE rdtype = 50 ORDER BY rkey DESC LIMIT 1"
    SQL_NSEC3_AT = (
        "SELECT rdtype, covers, rdata, ttl FROM rr WHERE rkey = ?"
        " AND (rdtype = 50 OR (rdtype = 46 AND covers = 50))"
    )
    SQL_HAS_NSEC3 = "SELECT 1 FROM rr WHERE rkey = ? AND rdtype = 50 LIMIT 1"

    def __init__(self, conn: sqlite3.Connection, origin: dns.name.Name) -> None:
        self.conn = conn
        self.origin = origin
        self.origin_labels: Labels = tuple(lb.lower() for lb in origin.labels[:-1])
        self._types_sql: dict[int, str] = {}

    def owner(self, rel: tuple[bytes, ...]) -> Labels:
        return rel[::-1] + self.origin_labels

    def rows(self, key: bytes) -> list[tuple]:
        return self.conn.execute(self.SQL_ROWS, (key,)).fetchall()

    def has_below(self, key: bytes) -> bool:
        return self.conn.execute(self.SQL_BELOW, (key, subtree_end(key))).fetchone() is not None

    def exists(self, key: bytes) -> bool:
        """True when ``key`` or a descendant owns a (non-NSEC3) record."""
        end = subtree_end(key)
        return self.conn.execute(self.SQL_AT_OR_BELOW, (key, end)).fetchone() is not None

    def rows_many(self, keys: list[bytes]) -> dict[bytes, list[tuple]]:
        """All rows at each of ``keys`` (one statement)."""
        sql = self._types_sql.get(-len(keys))
        if sql is None:
            marks = ",".join("?" * len(keys))
            sql = f"SELECT rkey, rdtype, covers, rdata, ttl FROM rr WHERE rkey IN ({marks})"
            self._types_sql[-len(keys)] = sql
        out: dict[bytes, list[tuple]] = {}
        for rkey, *row in self.conn.execute(sql, keys):
            out.setdefault(rkey, []).append(tuple(row))
        return out

    def cut_types(self, keys: list[bytes]) -> dict[bytes, set[int]]:
        """NS and DNAME presence at each of ``keys``."""
        sql = self._types_sql.get(len(keys))
        if sql is None:
            marks = ",".join("?" * len(keys))
            sql = f"SELECT rkey, rdtype FROM rr WHERE rkey IN ({marks}) AND rdtype IN (2, 39)"
            self._types_sql[len(keys)] = sql
        out: dict[bytes, set[int]] = {}
        for rkey, rdtype in self.conn.execute(sql, keys):
            out.setdefault(rkey, set()).add(rdtype)
        return out

    def nsec_le(self, key: bytes) -> tuple[bytes, list[tuple]] | None:
        rows = self.conn.execute(self.SQL_NSEC_LE, (key,)).fetchall()
        if not rows:
            return None
        return rows[0][0], [r[1:] for r in rows]

    def nsec3_le(self, key: bytes) -> bytes | None:
        row = self.conn.execute(self.SQL_NSEC3_LE, (key,)).fetchone()
        return row[0] if row else None

    def nsec3_max(self) -> bytes | None:
        row = self.conn.execute(self.SQL_NSEC3_MAX).fetchone()
        return row[0] if row else None

    def nsec3_rows(self, key: bytes) -> list[tuple]:
        return self.conn.execute(self.SQL_NSEC3_AT, (key,)).fetchall()

    def has_nsec3(self, key: bytes) -> bool:
        return self.conn.execute(self.SQL_HAS_NSEC3, (key,)).fetchone() is not None

    def pred(self, kind: str, key: bytes, skip: set[bytes]) -> bytes | None:
        """Greatest NSEC or NSEC3 owner below ``key`` not in ``skip`` (NSEC3 wraps)."""
        sql = self.SQL_NSEC_LT if kind == "nsec" else self.SQL_NSEC3_LT
        probe = key
        while True:
            row = self.conn.execute(sql, (probe,)).fetchone()
            if row is None:
                if kind == "nsec3":
                    last = self.nsec3_max()
                    return last if last is None or last not in skip else None
                return None
            if row[0] not in skip:
                return row[0]
            probe = row[0]


# ---------------------------------------------------------------- parsing


class Query:
    """A parsed query message (the question lower-cased in ``qlow``; case kept in the wire)."""

    __slots__ = (
        "ident", "flags", "opcode", "rel", "labels", "qtype", "qclass", "qend", "edns",
        "version", "payload", "do", "tsig",
    )  # fmt: skip

    def __init__(self) -> None:
        self.edns = False
        self.version = 0
        self.payload = 0
        self.do = False
        self.tsig = False


class _Malformed(Exception):
    """The query cannot be parsed: FORMERR."""


class _QdCount(_Malformed):
    """Not exactly one question: FORMERR with the flags cleared (as NSD)."""


def _skip_name(msg: bytes, pos: int) -> int:
    n = len(msg)
    while True:
        if pos >= n:
            raise _Malformed
        ln = msg[pos]
        if ln == 0:
            return pos + 1
        if ln & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise _Malformed
            return pos + 2
        if ln & 0xC0:
            raise _Malformed
        pos += ln + 1


def _skip_rr(msg: bytes, pos: int) -> int:
    pos = _skip_name(msg, pos)
    if pos + 10 > len(msg):
        raise _Malformed
    rdlen = (msg[pos + 8] << 8) | msg[pos + 9]
    pos += 10 + rdlen
    if pos > len(msg):
        raise _Malformed
    return pos


def parse_question(msg: bytes) -> tuple[list[bytes], int]:
    """Labels (case kept) of the question name at offset 12 and the offset after the name."""
    labels = []
    pos = 12
    n = len(msg)
    while True:
        if pos >= n:
            raise _Malformed
        ln = msg[pos]
        if ln == 0:
            break
        if ln > 63 or pos + 1 + ln > n:
            raise _Malformed
        labels.append(msg[pos + 1 : pos + 1 + ln])
        pos += ln + 1
        if pos - 12 > 254:
            raise _Malformed
    return labels, pos + 1


def parse_query(msg: bytes) -> Query:
    """Parse a QUERY-opcode message (header already checked); raise _Malformed for FORMERR."""
    q = Query()
    q.ident, q.flags, qd, an, ns, ar = _HDR.unpack_from(msg)
    q.opcode = (q.flags >> 11) & 0xF
    if q.flags & 0x000F:
        raise _Malformed
    labels, pos = parse_question(msg)
    if pos + 4 > len(msg):
        raise _Malformed
    if qd != 1:
        raise _QdCount
    q.labels = labels
    q.qtype, q.qclass = struct.unpack_from("!HH", msg, pos)
    q.qend = pos + 4
    pos = q.qend
    if an:
        raise _Malformed
    if ns:
        if q.qtype != T_IXFR or ns > 64:
            raise _Malformed
        for _ in range(ns):
            pos = _skip_rr(msg, pos)
    for i in range(ar):
        start = pos
        pos = _skip_name(msg, pos)
        if pos + 10 > len(msg):
            raise _Malformed
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
        rd_start = pos + 10
        pos = rd_start + rdlen
        if pos > len(msg):
            raise _Malformed
        if rtype == T_OPT:
            if q.edns or q.tsig or msg[start] != 0 or pos != rd_start + rdlen:
                raise _Malformed
            opt = rd_start
            while opt < pos:
                if opt + 4 > pos:
                    raise _Malformed
                olen = (msg[opt + 2] << 8) | msg[opt + 3]
                opt += 4 + olen
                if opt > pos:
                    raise _Malformed
            q.edns = True
            q.payload = rclass
            q.version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & 0x8000)
        elif rtype == T_TSIG and i == ar - 1:
            q.tsig = True
        else:
            raise _Malformed
    return q


# ---------------------------------------------------------------- resolution


class _Ctx:
    """State of one resolution: the answer being built and what it depended on."""

    __slots__ = (
        "qtype", "dnssec", "nsec3", "class_any", "v6", "answer", "aa", "rcode",
        "cname_count", "deps", "subtree", "gaps", "nodes", "cuts", "synth_qname", "qrel",
        "qce_depth", "referral",
    )  # fmt: skip

    def __init__(self, qtype: int, dnssec: bool, nsec3: bool, class_any: bool, v6: bool) -> None:
        self.qtype = qtype
        self.dnssec = dnssec
        self.nsec3 = dnssec and nsec3
        self.class_any = class_any
        self.v6 = v6
        self.answer = Answer()
        self.aa = False
        self.rcode = R_NOERROR
        self.cname_count = 0
        self.deps: set[bytes] = set()
        self.subtree: set[bytes] = set()
        self.gaps: set[tuple[str, bytes]] = set()
        self.nodes: dict[tuple, Node | None] = {}
        self.cuts: dict[bytes, set[int]] = {}
        self.synth_qname = False
        self.qrel: tuple[bytes, ...] = ()
        self.qce_depth = -1
        self.referral = False


class Resolver:
    """NSD's answer_lookup_zone / answer_authoritative / nsec3 logic on a :class:`SliceData`."""

    def __init__(self, data: SliceData, dnssec_mode: str) -> None:
        self.data = data
        self.dnssec_mode = dnssec_mode
        self.reload()

    def reload(self) -> None:
        """(Re)read what every answer uses: apex node, negative SOA, NSEC3 parameters."""
        data = self.data
        self.apex = Node((), data.origin_labels, data.rows(b""))
        if not self.apex.has(T_SOA):
            raise StoreError(f"slice of {data.origin}: no SOA record at the apex")
        soa = self.apex.rrset(T_SOA)
        minimum = int.from_bytes(soa.rdatas[0][-4:], "big")
        self.soa_nx = soa.with_ttl(min(soa.ttl, minimum), "nx")
        self.apex_ns = self.apex.rrset(T_NS) if self.apex.has(T_NS) else None
        self.secure = bool(self.dnssec_mode) and self.apex.has(T_RRSIG)
        self.nsec3 = False
        if self.dnssec_mode == "nsec3" and self.apex.has(T_NSEC3PARAM):
            for rd, _ in self.apex.data[T_NSEC3PARAM]:
                if rd[0] == 1 and rd[1] == 0:
                    self.n3_iterations = int.from_bytes(rd[2:4], "big")
                    self.n3_salt = rd[5 : 5 + rd[4]]
                    self.nsec3 = True
                    break
        self.nsec3_last = data.nsec3_max() if self.nsec3 else None
        wild_key = labels_key((b"*",))
        self.apex_wild_key = wild_key
        rows = data.rows(wild_key)
        if rows or data.has_below(wild_key):
            self.apex_wild: Node | None = Node((b"*",), data.owner((b"*",)), rows)
        else:
            self.apex_wild = None

    # -- node access (memoized per query, dependencies recorded) ---------------

    def node(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> Node | None:
        """The node at ``rel`` if it exists (records or descendants), else None."""
        if rel in ctx.nodes:
            return ctx.nodes[rel]
        key = labels_key(rel)
        ctx.deps.add(key)
        if not rel:
            node: Node | None = self.apex
        elif rel == (b"*",):
            ctx.subtree.add(key)
            node = self.apex_wild
        else:
            rows = self.data.rows(key)
            if rows:
                node = Node(rel, self.data.owner(rel), rows)
            else:
                ctx.subtree.add(key)
                node = Node(rel, self.data.owner(rel), []) if self.data.has_below(key) else None
        ctx.nodes[rel] = node
        return node

    def exists(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> bool:
        if not rel:
            return True
        cached = ctx.nodes.get(rel, False)
        if cached is not False:
            return cached is not None and not cached.nsec3_only
        key = labels_key(rel)
        ctx.subtree.add(key)
        return self.data.exists(key)

    def cut_info(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> list[set[int]]:
        """NS/DNAME presence at each ancestor-or-self of ``rel`` below the apex (top first)."""
        keys = [labels_key(rel[: i + 1]) for i in range(len(rel))]
        missing = [k for k in keys if k not in ctx.cuts]
        if missing:
            nodes = ctx.nodes
            for i, k in enumerate(keys):
                if k in missing:
                    known = nodes.get(rel[: i + 1], False)
                    if known is not False:
                        data = known.data if known is not None else ()
                        ctx.cuts[k] = {t for t in (T_NS, T_DNAME) if t in data}
            missing = [k for k in keys if k not in ctx.cuts]
        if missing:
            found = self.data.cut_types(missing)
            for k in missing:
                ctx.cuts[k] = found.get(k, set())
                ctx.deps.add(k)
        return [ctx.cuts[k] for k in keys]

    def lookup(
        self, ctx: _Ctx, rel: tuple[bytes, ...]
    ) -> tuple[bool, tuple[bytes, ...], Node | None]:
        """(exact, closest existing encloser, node) for ``rel``."""
        node = self.node(ctx, rel)
        if node is not None and not node.nsec3_only:
            return True, rel, node
        for i in range(len(rel) - 1, 0, -1):
            if self.exists(ctx, rel[:i]):
                ctx.subtree.add(labels_key(rel[: i + 1]))
                return False, rel[:i], None
        if rel:
            ctx.subtree.add(labels_key(rel[:1]))
        return False, (), None

    # -- adding RRsets (with NSD's additional-section processing) --------------

    def add(self, ctx: _Ctx, section: int, rrset: RRset) -> bool:
        result = ctx.answer.add(section, rrset)
        extra = _ADDITIONAL.get(rrset.rdtype)
        if extra is not None:
            self.additional(ctx, rrset, extra[0], extra[1])
        return result

    def prefetch(self, ctx: _Ctx, rrset: RRset, offset: int) -> None:
        """Load the in-zone target nodes of ``rrset`` in one statement."""
        want: dict[bytes, tuple] = {}
        for rdata in rrset.rdatas:
            rel = self.relative(wire.name_labels(rdata, offset)[0])
            if rel and rel not in ctx.nodes:
                want[labels_key(rel)] = rel
        if len(want) < 2:
            return
        found = self.data.rows_many(list(want))
        for key, rows in found.items():
            rel = want[key]
            ctx.deps.add(key)
            ctx.nodes[rel] = Node(rel, self.data.owner(rel), rows)

    def additional(self, ctx: _Ctx, rrset: RRset, offset: int, allow_glue: bool) -> None:
        origin = self.data.origin_labels
        depth = len(origin)
        swap = ctx.v6 and rrset.rdtype == T_NS
        self.prefetch(ctx, rrset, offset)
        for rdata in rrset.rdatas:
            labels, _ = wire.name_labels(rdata, offset)
            low = wire.lower_labels(labels)
            if len(low) < depth or (depth and low[-depth:] != origin):
                continue
            rel = low[: len(low) - depth][::-1]
            if not rel:
                node: Node | None = self.apex
            else:
                if not allow_glue and any(T_NS in t for t in self.cut_info(ctx, rel)):
                    continue
                node = self.node(ctx, rel)
                if node is None or node.nsec3_only:
                    _, ce, _ = self.lookup(ctx, rel)
                    wild = self.node(ctx, ce + (b"*",))
                    if wild is None:
                        continue
                    node = wild
                    owner = self.data.owner(rel)
                    for t, sec in ((T_A, ADDITIONAL_A), (T_AAAA, ADDITIONAL_AAAA)):
                        if node.has(t):
                            sec = (
                                (ADDITIONAL_AAAA if sec == ADDITIONAL_A else ADDITIONAL_A)
                                if swap
                                else sec
                            )
                            ctx.answer.add(sec, node.rrset(t, owner, ("wild", wild.rel)))
                    continue
            for t, sec in ((T_A, ADDITIONAL_A), (T_AAAA, ADDITIONAL_AAAA)):
                if node.has(t):
                    if swap:
                        sec = ADDITIONAL_AAAA if sec == ADDITIONAL_A else ADDITIONAL_A
                    ctx.answer.add(sec, node.rrset(t))

    # -- NSD's answer_lookup_zone ------------------------------------------------

    def resolve(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> None:
        ctx.qrel = rel
        self.lookup_zone(ctx, rel)

    def lookup_zone(self, ctx: _Ctx, rel: tuple[bytes, ...], after_dname: bool = False) -> None:
        exact, ce, node = self.lookup(ctx, rel)
        if ctx.qce_depth < 0:
            ctx.qce_depth = len(ce)
        if exact and ctx.qtype == T_DS and not ce:
            ctx.aa = not ctx.class_any
            self.answer_nodata(ctx, ())
            return
        cuts = self.cut_info(ctx, ce)
        deleg = None
        for i, types in enumerate(cuts):
            if T_NS in types:
                deleg = ce[: i + 1]
                break
        if deleg is not None and any(T_DNAME in t for t in cuts[: len(deleg) - 1]):
            deleg = None
        ctx.referral = deleg is not None
        if deleg is None or (exact and ctx.qtype == T_DS and ce == deleg):
            ctx.aa = not ctx.class_any
            self.answer_authoritative(ctx, rel, exact, ce, node, after_dname)
        else:
            self.answer_delegation(ctx, deleg)

    def answer_delegation(self, ctx: _Ctx, deleg: tuple[bytes, ...]) -> None:
        ctx.aa = ctx.cname_count > 0
        node = self.node(ctx, deleg)
        self.add(ctx, AUTHORITY, node.rrset(T_NS))
        if ctx.dnssec and self.secure:
            if node.has(T_DS):
                self.add(ctx, AUTHORITY, node.rrset(T_DS))
            elif self.nsec3:
                self.nsec3_ds_proof(ctx, deleg, delegpt=True)
            elif node.has(T_NSEC):
                self.add(ctx, AUTHORITY, node.rrset(T_NSEC))

    def answer_authoritative(
        self,
        ctx: _Ctx,
        rel: tuple[bytes, ...],
        exact: bool,
        ce: tuple[bytes, ...],
        node: Node | None,
        after_dname: bool = False,
    ) -> None:
        """NSD's answer_authoritative; after a DNAME, NSD's "closest match" for the NSEC
        proof is the closest encloser of the new name (its temporary domains are skipped)."""
        cuts = self.cut_info(ctx, ce)
        for i, types in enumerate(cuts[:-1] if ce else []):
            if T_DNAME in types:
                ce = ce[: i + 1]
                exact = False
                node = None
                break
        original: tuple[bytes, ...] = rel
        match: Node | None = None
        owner: Labels | None = None
        wild_variant = None
        if exact:
            match = node
        else:
            ce_node = self.node(ctx, ce)
            if ce_node is not None and ce_node.has(T_DNAME):
                self.process_dname(ctx, rel, ce, ce_node)
                return
            wild = self.node(ctx, ce + (b"*",))
            if wild is not None and not wild.nsec3_only:
                match = wild
                original = wild.rel
                owner = self.data.owner(rel)
                wild_variant = ("wild", wild.rel)
                if not ctx.cname_count and rel == ctx.qrel:
                    ctx.synth_qname = True
                if ctx.nsec3 and self.nsec3:
                    self.nsec3_nonexist_proof(ctx, wild.rel, rel)
        if ctx.nsec3 and self.nsec3:
            if match is not None and not match.data:
                self.nsec3_answer_nodata(ctx, match.rel)
            elif match is None:
                self.nsec3_closest_encloser_proof(ctx, ce, rel)
                self.nsec3_add_cover(ctx, ce + (b"*",))
        elif ctx.dnssec and self.secure:
            if not exact:
                self.nsec_cover(ctx, labels_key(ce if after_dname else rel))
            if match is None:
                self.nsec_cover(ctx, labels_key(ce + (b"*",)))
        if ctx.rcode != R_NOERROR:
            return
        if match is not None:
            self.answer_domain(ctx, match, original, owner, wild_variant)
        else:
            ctx.rcode = R_NXDOMAIN
            self.answer_soa(ctx)

    def answer_soa(self, ctx: _Ctx) -> None:
        if not ctx.class_any:
            ctx.deps.add(b"")
            self.add(ctx, AUTHORITY, self.soa_nx)

    def answer_nodata(self, ctx: _Ctx, original: tuple[bytes, ...]) -> None:
        self.answer_soa(ctx)
        if ctx.nsec3 and self.nsec3:
            self.nsec3_answer_nodata(ctx, original)
        elif ctx.dnssec and self.secure:
            self.nsec_cover(ctx, labels_key(original))

    def answer_domain(
        self,
        ctx: _Ctx,
        match: Node,
        original: tuple[bytes, ...],
        owner: Labels | None,
        variant: object,
    ) -> None:
        qtype = ctx.qtype
        if qtype == T_ANY:
            preferred = normal = non_preferred = None
            skip_sigs = ctx.dnssec and self.secure
            for t in match.types_in_order():
                if t == T_NSEC3 or (skip_sigs and t == T_RRSIG):
                    continue
                if t in _PREFERRED:
                    preferred = t
                    break
                if t in _NON_PREFERRED:
                    non_preferred = t
                else:
                    normal = t
            pick = preferred or normal or non_preferred
            if pick is None:
                self.answer_nodata(ctx, original)
                return
            self.add(ctx, ANSWER, match.rrset(pick, owner, variant))
        elif qtype == T_NSEC3:
            self.answer_nodata(ctx, original)
            return
        elif match.has(qtype):
            self.add(ctx, ANSWER, match.rrset(qtype, owner, variant))
        elif match.has(T_CNAME):
            cname = match.rrset(T_CNAME, owner, variant)
            if self.add(ctx, ANSWER, cname) and ctx.cname_count < _CNAME_LIMIT:
                ctx.cname_count += 1
                target, _ = wire.name_labels(cname.rdatas[0], 0)
                rel = self.relative(target)
                if rel is not None:
                    self.lookup_zone(ctx, rel)
            return
        else:
            self.answer_nodata(ctx, original)
            return
        if not ctx.class_any and self.apex_ns is not None and qtype not in _NO_NS_AUTHORITY:
            ctx.deps.add(b"")
            self.add(ctx, OPTIONAL_AUTHORITY, self.apex_ns)

    def relative(self, labels: Labels) -> tuple[bytes, ...] | None:
        """``labels`` (absolute, lowest first) relative to the origin, top first; None if outside."""
        origin = self.data.origin_labels
        depth = len(origin)
        low = wire.lower_labels(labels)
        if len(low) < depth or (depth and low[-depth:] != origin):
            return None
        return low[: len(low) - depth][::-1]

    def process_dname(
        self, ctx: _Ctx, rel: tuple[bytes, ...], src: tuple[bytes, ...], node: Node
    ) -> None:
        dname = node.rrset(T_DNAME)
        dest, _ = wire.name_labels(dname.rdatas[0], 0)
        dest_low = wire.lower_labels(dest)
        src_abs = self.data.owner(src)
        if not self.add(ctx, ANSWER, dname):
            if dest_low[len(dest_low) - len(src_abs) :] == src_abs and len(dest_low) >= len(
                src_abs
            ):
                return
        name = self.data.owner(rel)
        prefix = name[: len(name) - len(src_abs)]
        newname = prefix + dest
        ctx.cname_count += 1
        if sum(len(lb) + 1 for lb in newname) + 1 > 255:
            ctx.rcode = R_YXDOMAIN
            return
        new_low = wire.lower_labels(newname)
        ident = (name, T_CNAME, ("dname", new_low))
        if ctx.answer.has(ident):
            return
        target = b"".join(bytes((len(lb),)) + lb for lb in newname) + b"\x00"
        synth = RRset(name, T_CNAME, dname.ttl, [target], None, ("dname", new_low))
        if rel == ctx.qrel and ctx.cname_count == 1:
            ctx.synth_qname = True
        if not self.add(ctx, ANSWER, synth):
            return
        if ctx.qtype == T_CNAME or ctx.cname_count > _CNAME_LIMIT:
            return
        new_rel = self.relative(newname)
        if new_rel is not None:
            self.lookup_zone(ctx, new_rel, after_dname=True)

    # -- NSEC ----------------------------------------------------------------------

    def nsec_cover(self, ctx: _Ctx, key: bytes) -> None:
        """Add the NSEC of the greatest owner at or before ``key`` (NSD's find_covering_nsec)."""
        found = self.data.nsec_le(key)
        if found is None:
            return
        owner_key, rows = found
        ctx.deps.add(owner_key)
        ctx.gaps.add(("nsec", owner_key))
        rel = tuple(key_labels(owner_key))
        node = Node(rel, self.data.owner(rel), rows)
        self.add(ctx, AUTHORITY, node.rrset(T_NSEC))

    # -- NSEC3 (nsec3.c) -----------------------------------------------------------

    def nsec3_hash_key(self, rel: tuple[bytes, ...]) -> bytes:
        name = b"".join(bytes((len(lb),)) + lb for lb in self.data.owner(rel)) + b"\x00"
        salt = self.n3_salt
        digest = hashlib.sha1(name + salt).digest()
        for _ in range(self.n3_iterations):
            digest = hashlib.sha1(digest + salt).digest()
        return base64.b32hexencode(digest).lower() + b"\x00"

    def nsec3_cover(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> tuple[bytes | None, bool]:
        """(owner key of the NSEC3 matching or covering hash(rel), exact)."""
        h = self.nsec3_hash_key(rel)
        owner = self.data.nsec3_le(h)
        if owner is None:
            owner = self.nsec3_last
        if owner is not None:
            ctx.deps.add(owner)
            ctx.gaps.add(("nsec3", owner))
        ctx.deps.add(h)
        return owner, owner == h

    def nsec3_exact(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> bytes | None:
        h = self.nsec3_hash_key(rel)
        ctx.deps.add(h)
        return h if self.data.has_nsec3(h) else None

    def nsec3_add(self, ctx: _Ctx, owner_key: bytes | None) -> None:
        if owner_key is None:
            return
        rows = self.data.nsec3_rows(owner_key)
        if not rows:
            return
        rel = (owner_key[:-1],)
        node = Node(rel, self.data.owner(rel), rows)
        ctx.answer.add(AUTHORITY, node.rrset(T_NSEC3))

    def nsec3_add_cover(self, ctx: _Ctx, rel: tuple[bytes, ...]) -> None:
        self.nsec3_add(ctx, self.nsec3_cover(ctx, rel)[0])

    def nsec3_nonexist_proof(
        self, ctx: _Ctx, encloser: tuple[bytes, ...], rel: tuple[bytes, ...]
    ) -> None:
        common = 0
        for a, b in zip(encloser, rel, strict=False):
            if a != b:
                break
            common += 1
        to_prove = rel[: common + 1]
        owner, exact = self.nsec3_cover(ctx, to_prove)
        if exact:
            ctx.rcode = R_SERVFAIL
            return
        self.nsec3_add(ctx, owner)

    def nsec3_closest_encloser_proof(
        self, ctx: _Ctx, ce: tuple[bytes, ...], rel: tuple[bytes, ...]
    ) -> None:
        self.nsec3_nonexist_proof(ctx, ce, rel)
        self.nsec3_add(ctx, self.nsec3_exact(ctx, ce))

    def nsec3_ds_proof(self, ctx: _Ctx, rel: tuple[bytes, ...], delegpt: bool) -> None:
        node = self.node(ctx, rel)
        dshash = node is not None and (node.has(T_DS) or node.has(T_NS))
        owner, exact = self.nsec3_cover(ctx, rel)
        if exact and (dshash or not delegpt):
            self.nsec3_add(ctx, owner)
            return
        par = rel[:-1]
        prev = None
        while par and self.nsec3_exact(ctx, par) is None:
            prev = par
            par = par[:-1]
        self.nsec3_add(ctx, self.nsec3_exact(ctx, par))
        if prev is not None:
            self.nsec3_add_cover(ctx, prev)
        elif dshash:
            self.nsec3_add(ctx, owner)

    def nsec3_answer_nodata(self, ctx: _Ctx, original: tuple[bytes, ...]) -> None:
        wild = bool(original) and original[-1] == b"*"
        if ctx.qtype == T_DS:
            if not original:
                self.nsec3_add(ctx, self.nsec3_exact(ctx, ()))
                return
            self.nsec3_ds_proof(ctx, original, delegpt=False)
            if wild:
                self.nsec3_add(ctx, self.nsec3_exact(ctx, original[:-1]))
        elif wild:
            self.nsec3_add(ctx, self.nsec3_exact(ctx, original[:-1]))
            self.nsec3_add_cover(ctx, original)
        else:
            owner, exact = self.nsec3_cover(ctx, original)
            if not exact:
                while original and self.nsec3_exact(ctx, original[:-1]) is None:
                    original = original[:-1]
                owner, exact = self.nsec3_cover(ctx, original)
            self.nsec3_add(ctx, owner)
            if not exact and original:
                self.nsec3_add(ctx, self.nsec3_exact(ctx, original[:-1]))


# ---------------------------------------------------------------- the responder


def _mode(edns: bool, do: bool, v6: bool, limit: int) -> bytes:
    """The cache-key suffix: EDNS present, DO, IPv6 client, size limit."""
    return bytes((edns | (do << 1) | (v6 << 2), limit >> 8, limit & 0xFF))


_PLAIN_MODES = {
    (tcp, v6): _mode(False, False, v6, _TCP_MAX if tcp else _UDP_PLAIN)
    for tcp in (False, True)
    for v6 in (False, True)
}


class Responder:
    """Answers queries for one slice database; see the module docstring for the rules."""

    def __init__(
        self,
        slice_db: str | os.PathLike[str],
        *,
        axfr_allowed: Callable[[str], bool] | None = None,
        copy_cd: bool = True,
        cache_size: int = 1_000_000,
    ) -> None:
        self.path = Path(slice_db)
        self.conn = connect_readonly(self.path)
        meta = read_meta(self.conn)
        self.meta = meta
        self.origin = dns.name.from_text(meta["origin"])
        bounds = meta.get("bounds", "").split()
        self.plan = SlicePlan.from_bounds_text(meta["origin"], [""] + bounds)
        self.index = int(meta.get("index", "0"))
        self.data = SliceData(self.conn, self.origin)
        self.resolver = Resolver(self.data, meta.get("dnssec", ""))
        self.axfr_allowed = axfr_allowed
        self.copy_cd = copy_cd
        self.cd_mask = 0x0010 if copy_cd else 0
        self.cache = AnswerCache(cache_size)
        self.update_handler: Callable[[bytes, object], bytes | None] | None = None
        self._origin_wire = self.origin.to_wire().lower()
        self._depth = len(self.origin.labels) - 1
        self.counters: dict[str, int] = {
            "queries": 0,
            "responses": 0,
            "dropped": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "truncated": 0,
            "errors": 0,
        }
        for name in RCODE_NAMES.values():
            self.counters[name] = 0

    def close(self) -> None:
        self.conn.close()

    # -- the per-packet path -------------------------------------------------------

    def respond(
        self, msg: bytes, *, tcp: bool, client: tuple[str, int] | None = None
    ) -> bytes | None:
        """The response to one query message (None: drop it).

        A standard query (one question, no records but an optional OPT without
        options) whose answer is cached costs a header check, a walk over the
        question's labels, one dictionary lookup and four slices joined.
        """
        c = self.counters
        c["queries"] += 1
        if type(msg) is not bytes:
            msg = bytes(msg)
        v6 = client is not None and ":" in client[0]
        try:
            key, qend = self._fast_key(msg, tcp, v6)
            if key is not None:
                entry = self.cache.entries.get(key)
                if entry is not None:
                    c["cache_hits"] += 1
                    c["responses"] += 1
                    c[entry.rcode_name] += 1
                    return (
                        msg[:2]
                        + entry.heads[(msg[2] & 1) | ((msg[3] >> 3) & 2)]
                        + msg[12:qend]
                        + entry.tail
                    )
            out = self._slow(msg, tcp, v6, client)
        except Exception:  # noqa: BLE001 - a packet must never take the engine down
            c["errors"] += 1
            out = self._servfail(msg)
        if out is None:
            c["dropped"] += 1
        else:
            c["responses"] += 1
        return out

    @staticmethod
    def _fast_key(msg: bytes, tcp: bool, v6: bool) -> tuple[bytes | None, int]:
        """Cache key and question end of a standard query; (None, 0) for anything else."""
        n = len(msg)
        if n < 17 or msg[2] & 0xF8 or msg[3] & 0x0F or msg[4:10] != b"\x00\x01\x00\x00\x00\x00":
            return None, 0
        pos = 12
        ln = msg[12]
        while ln:
            if ln > 63:
                return None, 0
            pos += ln + 1
            if pos >= n:
                return None, 0
            ln = msg[pos]
        qend = pos + 5
        if qend > n or pos > 266:
            return None, 0
        ar = msg[11] | (msg[10] << 8)
        if ar == 0:
            mode = _PLAIN_MODES[tcp, v6]
        elif (
            ar == 1
            and qend + 11 <= n
            and msg[qend] == 0
            and msg[qend + 1] == 0
            and msg[qend + 2] == T_OPT
            and not msg[qend + 6]
            and not msg[qend + 9]
            and not msg[qend + 10]
        ):
            if tcp:
                limit = _TCP_MAX
            else:
                limit = (msg[qend + 3] << 8) | msg[qend + 4]
                if limit < _UDP_PLAIN:
                    limit = _UDP_PLAIN
                elif limit > wire.OUR_EDNS_SIZE:
                    limit = wire.OUR_EDNS_SIZE
            mode = bytes((1 | ((msg[qend + 7] & 0x80) >> 6) | (v6 << 2), limit >> 8, limit & 0xFF))
        else:
            return None, 0
        return msg[12 : pos + 1].lower() + msg[pos + 1 : qend] + mode, qend

    def _count(self, rcode: int) -> None:
        self.counters[RCODE_NAMES.get(rcode, "OTHER")] = (
            self.counters.get(RCODE_NAMES.get(rcode, "OTHER"), 0) + 1
        )

    def _servfail(self, msg: bytes) -> bytes | None:
        if len(msg) < 12 or msg[2] & 0x80:
            return None
        self._count(R_SERVFAIL)
        ident, flags = struct.unpack_from("!HH", msg)
        return wire.header_only(ident, 0x8000 | (flags & (0x7900 | self.cd_mask)) | R_SERVFAIL)

    def _error(self, msg: bytes, rcode: int) -> bytes:
        """FORMERR/NOTIMP-style reply: header only (NSD's query_error)."""
        ident, flags = struct.unpack_from("!HH", msg)
        self._count(rcode)
        if rcode == R_FORMERR:
            flags = 0x8000 | (flags & 0x7900) | R_FORMERR
        else:
            flags = (flags | 0x8000) & ~0x0020 & ~0x000F | rcode
        return wire.header_only(ident, flags)

    def _slow(self, msg: bytes, tcp: bool, v6: bool, client: object) -> bytes | None:
        if len(msg) < 12 or msg[2] & 0x80:
            return None
        opcode = (msg[2] >> 3) & 0xF
        if opcode != OP_QUERY:
            if opcode == OP_UPDATE and self.update_handler is not None:
                return self.update_handler(msg, client)
            return self._error(msg, R_NOTIMP)
        try:
            q = parse_query(msg)
        except _QdCount:
            self._count(R_FORMERR)
            return wire.header_only((msg[0] << 8) | msg[1], 0x8000 | R_FORMERR)
        except (_Malformed, struct.error, IndexError):
            return self._error(msg, R_FORMERR)
        question = msg[12 : q.qend]
        rd_cd = q.flags & (0x0100 | self.cd_mask)
        base_flags = 0x8000 | rd_cd
        if q.tsig:
            return self._error(msg, R_NOTAUTH)
        if q.edns and q.version > 0:
            self._count(16)
            return wire.header_only(q.ident, base_flags, question, wire.opt_record(False, 1))
        opt = wire.opt_record(q.do) if q.edns else None
        if tcp:
            limit = _TCP_MAX
        elif q.edns:
            limit = min(max(q.payload, _UDP_PLAIN), wire.OUR_EDNS_SIZE)
        else:
            limit = _UDP_PLAIN
        if q.qclass not in (C_IN, C_ANY):
            self._count(R_REFUSED)
            if q.qclass == C_CH:
                ch_opt = (
                    wire.opt_record(q.do, 0, wire.ede_option(wire.EDE_NOT_SUPPORTED))
                    if q.edns
                    else None
                )
                return wire.header_only(q.ident, base_flags | R_REFUSED, question, ch_opt)
            ede = (
                wire.opt_record(q.do, 0, wire.ede_option(wire.EDE_NOT_SUPPORTED))
                if q.edns
                else None
            )
            return wire.header_only(q.ident, base_flags | R_REFUSED, b"", ede)
        rel = self._relative(q.labels)
        owned = rel is not None and (not rel or self.plan.slice_for_label(rel[0]) == self.index)
        if q.qtype in (T_AXFR, T_IXFR):
            return self._xfr_reply(q, question, base_flags, opt, tcp, client, rel)
        if not owned:
            self._count(R_REFUSED)
            ede = (
                wire.opt_record(q.do, 0, wire.ede_option(wire.EDE_NOT_AUTHORITATIVE))
                if q.edns
                else None
            )
            out = wire.header_only(q.ident, base_flags | R_REFUSED, question, ede)
            self._store(msg, q, tcp, v6, out, R_REFUSED, None)
            return out
        self.counters["cache_misses"] += 1
        r = self.resolver
        ctx = _Ctx(q.qtype, q.do, r.nsec3, q.qclass == C_ANY, v6)
        r.resolve(ctx, rel)
        flags = base_flags | (0x0400 if ctx.aa else 0) | (ctx.rcode & 0xF)
        seeds = self._seeds(q.labels, rel, ctx)
        out = wire.encode(
            q.ident,
            flags,
            question,
            ctx.answer,
            limit=limit,
            tcp=tcp,
            dnssec=q.do and r.secure,
            opt=opt,
            seeds=seeds,
            minimal_size=wire.IPV6_MINIMAL_RESPONSE_SIZE if v6 else wire.IPV4_MINIMAL_RESPONSE_SIZE,
            referral=ctx.referral,
        )
        self._count(ctx.rcode)
        if out[2] & 0x02:
            self.counters["truncated"] += 1
        self._store(msg, q, tcp, v6, out, ctx.rcode, ctx)
        return out

    def _relative(self, labels: list[bytes]) -> tuple[bytes, ...] | None:
        depth = self._depth
        low = [lb.lower() for lb in labels]
        origin = self.data.origin_labels
        if len(low) < depth or (depth and tuple(low[len(low) - depth :]) != origin):
            return None
        return tuple(low[: len(low) - depth][::-1])

    @staticmethod
    def _seeds(labels: list[bytes], rel: tuple[bytes, ...], ctx: _Ctx) -> dict:
        """Compression targets in the question: the closest encloser and above (as NSD).

        The whole question name is a target too when an owner was synthesized
        for it (wildcard, DNAME), like NSD's domain number 0.
        """
        low = tuple(lb.lower() for lb in labels)
        first = 0 if ctx.synth_qname else len(rel) - max(ctx.qce_depth, 0)
        seeds: dict = {}
        off = 12
        for i in range(len(low)):
            if i >= first:
                seeds[low[i:]] = off
            off += len(low[i]) + 1
        return seeds

    def _store(
        self,
        msg: bytes,
        q: Query,
        tcp: bool,
        v6: bool,
        out: bytes,
        rcode: int,
        ctx: _Ctx | None,
    ) -> None:
        """Cache ``out`` under the key the fast path computes for this query (if it has one)."""
        if q.tsig:
            return
        key, _ = self._fast_key(msg, tcp, v6)
        if key is None:
            return
        flags = ((out[2] << 8) | out[3]) & ~(0x0100 | 0x0010)
        counts = out[4:12]
        heads = tuple(
            (flags | (0x0100 if i & 1 else 0) | (self.cd_mask if i & 2 else 0)).to_bytes(2, "big")
            + counts
            for i in range(4)
        )
        entry = Entry(heads, out[q.qend :], RCODE_NAMES.get(rcode, "OTHER"))
        if ctx is None:
            self.cache.put(key, entry, (), (), ())
        else:
            self.cache.put(key, entry, ctx.deps, ctx.subtree, ctx.gaps)

    # -- zone transfers ------------------------------------------------------------

    def _xfr_allowed(self, client: object) -> bool:
        if self.axfr_allowed is None or client is None:
            return False
        addr = client[0] if isinstance(client, tuple) else str(client)
        return bool(self.axfr_allowed(addr))

    def _xfr_reply(
        self,
        q: Query,
        question: bytes,
        base_flags: int,
        opt: bytes | None,
        tcp: bool,
        client: object,
        rel: tuple[bytes, ...] | None,
    ) -> bytes:
        if q.qtype == T_AXFR and not tcp:
            self._count(R_NOTIMP)
            return wire.header_only(q.ident, base_flags | R_NOTIMP, question)
        if rel != () or not self._xfr_allowed(client):
            self._count(R_REFUSED)
            return wire.header_only(q.ident, base_flags | R_REFUSED, question)
        if q.qtype == T_AXFR:
            self._count(R_NOTIMP)
            return wire.header_only(q.ident, base_flags | R_NOTIMP, question)
        ans = Answer()
        ans.add(ANSWER, self.resolver.apex.rrset(T_SOA))
        self._count(R_NOERROR)
        return wire.encode(
            q.ident,
            base_flags | 0x0400,
            question,
            ans,
            limit=_TCP_MAX if tcp else _UDP_PLAIN,
            tcp=tcp,
            dnssec=False,
            opt=opt,
            seeds={wire.lower_labels(tuple(q.labels)): 12},
        )

    def axfr(self, query_wire: bytes, client: object) -> Iterator[bytes] | bytes:
        """AXFR of this slice over TCP: its own records (slice 0 adds the NSEC3 chain), SOA first and last.

        Returns the refusal as bytes when the client is not allowed or the query is
        not an AXFR for the zone apex.
        """
        try:
            q = parse_query(query_wire)
        except (_Malformed, struct.error, IndexError):
            return self._error(query_wire, R_FORMERR)
        question = query_wire[12 : q.qend]
        flags = 0x8000 | (q.flags & (0x0100 | self.cd_mask))
        if q.qtype == T_IXFR or q.edns or q.tsig:
            # IXFR, slice-projected and TSIG-signed transfers (issue 4): zoneslice.xfr.transfer
            from zoneslice.xfr.transfer import serve_transfer

            out = serve_transfer(self, query_wire, client)
            if out is not None:
                if isinstance(out, bytes):
                    self._count(out[3] & 0xF)
                else:
                    self._count(R_NOERROR)
                return out
        rel = self._relative(q.labels)
        if q.qtype != T_AXFR or rel != () or not self._xfr_allowed(client):
            self._count(R_REFUSED)
            return wire.header_only(q.ident, flags | R_REFUSED, question)
        self._count(R_NOERROR)
        return self._axfr_stream(q, question, flags | 0x0400)

    def _axfr_stream(self, q: Query, question: bytes, flags: int) -> Iterator[bytes]:
        soa = self.resolver.apex.rrset(T_SOA)
        origin_q = {wire.lower_labels(tuple(q.labels)): 12}
        include_nsec3 = self.index == 0
        sql = (
            "SELECT rkey, rdtype, covers, rdata, ttl FROM rr WHERE origin = 1"
            + (" OR origin = 4" if include_nsec3 else "")
            + " ORDER BY rkey, rdtype, covers"
        )

        def encode(batch: Answer) -> bytes:
            return wire.encode(
                q.ident, flags, question, batch, limit=_TCP_MAX, tcp=True, dnssec=False,
                opt=None, seeds=origin_q,
            )

        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            batch = Answer()
            batch.add(ANSWER, soa)
            size = 0
            count = 0
            for rkey, rdtype, _covers, rdata, ttl in conn.execute(sql):
                if rdtype == T_SOA:
                    continue
                rel = tuple(key_labels(rkey))
                rr = RRset(self.data.owner(rel), rdtype, ttl, [rdata], None, count)
                count += 1
                batch.add(ANSWER, rr)
                size += len(rdata) + 64
                if size > 12000:
                    yield encode(batch)
                    batch = Answer()
                    size = 0
            batch.add(ANSWER, soa.with_owner(soa.owner, "last"))
            yield encode(batch)
        finally:
            conn.close()

    # -- cache invalidation ----------------------------------------------------------

    def soa_moved(self) -> bool:
        """The apex changed in nothing but its SOA serial (a commit elsewhere in the zone):
        re-read the apex and move the serial inside every cached answer that carries the
        SOA (negative answers, the SOA itself) instead of dropping them all.

        Returns False, having changed nothing in the cache, when more than the serial
        moved (TTL, names, timers): the caller must then invalidate the apex.
        """
        old = self.resolver.apex.rrset(T_SOA)
        self.resolver.reload()
        new = self.resolver.apex.rrset(T_SOA)
        a, b = old.rdatas[0], new.rdatas[0]
        if new.ttl != old.ttl or a[:-20] != b[:-20] or a[-16:] != b[-16:]:
            return False
        if a != b:
            self.cache.rewrite(b"", a[-20:], b[-20:])
        return True

    def invalidate(self, names: Iterable[dns.name.Name | str] | None = None) -> None:
        """Drop the cached answers that used data at ``names`` (None: everything).

        An answer is dropped when one of the names is a node it read, is at or below
        a name whose (non-)existence it relied on, or falls in an NSEC/NSEC3 gap it
        used; apex changes also refresh the SOA/NS/NSEC3 parameters held in memory.
        """
        if names is None:
            self.cache.clear()
            self.resolver.reload()
            return
        keys: set[bytes] = set()
        for name in names:
            if isinstance(name, str):
                name = dns.name.from_text(name, self.origin)
            elif not name.is_absolute():
                name = name.derelativize(self.origin)
            rel = self._relative(list(name.labels[:-1]))
            if rel is not None:
                keys.add(labels_key(rel))
        if not keys:
            return
        if (
            b"" in keys
            or any(k.startswith(self.resolver.apex_wild_key) for k in keys)
            or (self.resolver.nsec3 and any(k.count(b"\x00") == 1 for k in keys))
        ):
            self.resolver.reload()
        gaps: set[tuple[str, bytes]] = set()
        mode = self.resolver.dnssec_mode
        for key in keys:
            if mode == "nsec":
                lo = self.data.pred("nsec", key, keys)
                if lo is not None:
                    gaps.add(("nsec", lo))
            elif mode == "nsec3":
                lo = self.data.pred("nsec3", key, keys)
                if lo is not None:
                    gaps.add(("nsec3", lo))
        self.cache.invalidate(keys, gaps)
