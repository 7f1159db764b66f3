"""Hot entries: the engine's own answers, cut into what the XDP program appends.

An entry is learnt by asking the engine (``respond(query_wire) -> response``)
and keeping everything after the echoed question (the "body"), the header
flags and counts. It is kept only if the engine's answer provably does not
depend on what the program changes per query: other IDs, case and RD/AD/CD
bits must give the same body (the flags the engine copies become the
``copy_mask``), and for a delegation, other names at and below the cut must
give the body the program would build. Anything else is simply not cached,
so the program passes it up and the engine answers.

Exact entries answer one (name, type, EDNS variant). A delegation entry
answers every name at or below the cut (any type but DS, NSEC, RRSIG at the
cut itself): the referral's compression pointers into the question or into
the body are recorded as fix-ups and rewritten by the program for each query.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import dns.name
import dns.rdatatype

from zoneslice.xdp import maps

Respond = Callable[[bytes], "bytes | None"]

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_AD = 0x0020
FLAG_CD = 0x0010
COPYABLE = FLAG_RD | FLAG_AD | FLAG_CD

EDNS_PAYLOAD = 1232
T_OPT = 41
O_COOKIE = 10

# rdata layouts with domain names: (octets to skip, names) repeated
_NAME_FIELDS: dict[int, tuple[tuple[int, int], ...]] = {
    **{t: ((0, 1),) for t in (2, 3, 4, 5, 7, 8, 9, 12, 39)},
    6: ((0, 2),),
    14: ((0, 2),),
    17: ((0, 2),),
    **{t: ((2, 1),) for t in (15, 18, 21, 36)},
    26: ((2, 2),),
    33: ((6, 1),),
    46: ((18, 1),),
    47: ((0, 1),),
}


class NotCacheable(Exception):
    """The engine's answer cannot be served from XDP exactly; the reason is the message."""


def variant_of(edns: bool, do: bool) -> int:
    return (maps.V_EDNS_DO if do else maps.V_EDNS) if edns else maps.V_PLAIN


def opt_record(payload: int = EDNS_PAYLOAD, do: bool = False, options: bytes = b"") -> bytes:
    return (
        struct.pack("!BHHBBHH", 0, T_OPT, payload, 0, 0, 0x8000 if do else 0, len(options))
        + options
    )


def make_query(
    qname: bytes,
    qtype: int,
    variant: int = maps.V_PLAIN,
    *,
    qid: int = 0,
    flags: int = 0,
    payload: int = EDNS_PAYLOAD,
    options: bytes = b"",
) -> bytes:
    """A query for wire name ``qname`` (case kept), class IN, with an OPT unless V_PLAIN."""
    ar = 0 if variant == maps.V_PLAIN else 1
    wire = struct.pack("!6H", qid, flags, 1, 0, 0, ar) + qname + struct.pack("!HH", qtype, 1)
    if ar:
        wire += opt_record(payload, variant == maps.V_EDNS_DO, options)
    return wire


def mixed_case(qname: bytes, rnd: random.Random) -> bytes:
    """``qname`` with letters randomly upper- or lower-cased (0x20 style)."""
    out = bytearray(qname)
    for i, c in enumerate(out):
        if 97 <= c <= 122 or 65 <= c <= 90:
            out[i] = c ^ 0x20 if rnd.random() < 0.5 else c
    return bytes(out)


def name_end(wire: bytes, p: int) -> int:
    """Offset after the (possibly compressed) name at ``p``."""
    while True:
        b = wire[p]
        if b == 0:
            return p + 1
        if b & 0xC0 == 0xC0:
            return p + 2
        if b & 0xC0:
            raise NotCacheable("extended label type in the answer")
        p += b + 1


def _name_pointers(wire: bytes, p: int, out: list[tuple[int, int]]) -> int:
    while True:
        b = wire[p]
        if b == 0:
            return p + 1
        if b & 0xC0 == 0xC0:
            out.append((p, ((b & 0x3F) << 8) | wire[p + 1]))
            return p + 2
        if b & 0xC0:
            raise NotCacheable("extended label type in the answer")
        p += b + 1


def pointers(wire: bytes, start: int, count: int, *, whole: bool = True) -> list[tuple[int, int]]:
    """(offset, target) of every compression pointer in ``count`` RRs from ``start``
    (``whole``: they must end the message)."""
    out: list[tuple[int, int]] = []
    p = start
    try:
        for _ in range(count):
            p = _name_pointers(wire, p, out)
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", wire, p)
            p += 10
            q, end = p, p + rdlen
            for skip, names in _NAME_FIELDS.get(rtype, ()):
                q += skip
                for _ in range(names):
                    q = _name_pointers(wire, q, out)
            if q > end:
                raise NotCacheable(f"rdata of type {rtype} shorter than its names")
            p = end
    except (IndexError, struct.error) as exc:
        raise NotCacheable("the answer does not parse") from exc
    if whole and p != len(wire):
        raise NotCacheable("octets after the last record")
    return out


@dataclass
class Response:
    qid: int
    flags: int
    counts: tuple[int, int, int]
    question: bytes
    body: bytes


def split_response(query: bytes, resp: bytes | None) -> Response:
    """Header, echoed question and body of the engine's answer to ``query``."""
    if resp is None:
        raise NotCacheable("the engine drops this query")
    qend = name_end(query, 12) + 4
    if len(resp) < qend:
        raise NotCacheable("answer shorter than its question")
    qid, flags, *counts = struct.unpack_from("!6H", resp)
    if counts[0] != 1 or resp[12:qend] != query[12:qend]:
        raise NotCacheable("the answer does not echo the question")
    if not flags & FLAG_QR or flags & FLAG_TC:
        raise NotCacheable("not a complete answer (TC or no QR)")
    return Response(qid, flags, (counts[1], counts[2], counts[3]), resp[12:qend], resp[qend:])


@dataclass
class Entry:
    """One map entry: which map, its key, and the value the program appends."""

    kind: str  # "exact" or "deleg"
    name: dns.name.Name
    qtype: int | None  # None for a delegation
    variant: int
    value: maps.AnswerValue

    @property
    def key(self) -> bytes:
        wire = self.name.to_wire()
        if self.kind == "exact":
            assert self.qtype is not None
            return maps.exact_key(wire, self.qtype, self.variant)
        return maps.deleg_key(wire, self.variant)

    def packed(self, body_max: int = maps.BODY_MAX) -> tuple[str, bytes, bytes]:
        return self.kind, self.key, self.value.pack(body_max)

    def __str__(self) -> str:
        t = dns.rdatatype.to_text(self.qtype) if self.qtype is not None else "(cut)"
        return f"{self.kind} {self.name} {t} v{self.variant} {len(self.value.body)}B"


def _fixups(body: bytes, body_start: int, qlen: int, count: int) -> list[tuple[int, int]]:
    fix = []
    for pos, target in pointers(body, 0, count):
        if target < 12:
            raise NotCacheable("pointer into the header")
        if target < 12 + qlen:
            fix.append((pos, target - 12))
        elif target >= body_start:
            fix.append((pos, maps.FIX_BODY | (target - body_start)))
        else:
            raise NotCacheable("pointer into the question's type or class")
    return fix


class EntryBuilder:
    """Learns entries from a responder and checks each against more probes."""

    def __init__(
        self, respond: Respond, *, body_max: int = maps.BODY_MAX, seed: int = 1, probes: int = 2
    ) -> None:
        self.respond = respond
        self.body_max = body_max
        self.rnd = random.Random(seed)
        self.probes = probes
        self.rejected: dict[str, int] = {}

    def _ask(self, query: bytes) -> Response:
        return split_response(query, self.respond(query))

    def _value(self, qname: bytes, qtype: int, variant: int, deleg: bool) -> maps.AnswerValue:
        base_q = make_query(qname, qtype, variant)
        base = self._ask(base_q)
        if len(base.body) > self.body_max:
            raise NotCacheable(f"body of {len(base.body)} octets")
        an, ns, ar = base.counts
        fix: list[tuple[int, int]] = []
        if deleg:
            if base.flags & FLAG_AA or an or not ns or base.flags & 0xF:
                raise NotCacheable("not a referral")
            fix = _fixups(base.body, 12 + len(base.question), len(qname), an + ns + ar)
            if len(fix) > maps.MAX_FIX:
                raise NotCacheable(f"{len(fix)} pointers to rewrite")
        probe_q = make_query(
            mixed_case(qname, self.rnd), qtype, variant, qid=0xA5C3, flags=COPYABLE
        )
        probe = self._ask(probe_q)
        if probe.qid != 0xA5C3:
            raise NotCacheable("the engine does not copy the ID")
        if probe.body != base.body or probe.counts != base.counts:
            raise NotCacheable("the answer depends on the query's case or flags")
        diff = probe.flags ^ base.flags
        if diff & ~COPYABLE or (probe.flags & diff) != (COPYABLE & diff):
            raise NotCacheable("the engine changes header flags in a way the program does not")
        return maps.AnswerValue(
            base.flags, diff, an, ns, ar, base.body, fix, len(qname) if deleg else 0
        )

    def _check(self, value: maps.AnswerValue, query: bytes, cut: int) -> None:
        resp = self.respond(query)
        qend = name_end(query, 12) + 4
        mine = value.render(query[:12], query[12:qend], cut)
        if resp != mine:
            raise NotCacheable("a probe's answer differs from the one the program would send")

    def exact(
        self, name: dns.name.Name, qtype: int, variants: Iterable[int] = maps.VARIANTS
    ) -> list[Entry]:
        """Exact entries for (name, qtype), one per variant the engine answers cacheably."""
        wire = name.canonicalize().to_wire()
        out = []
        for v in variants:
            try:
                out.append(
                    Entry(
                        "exact", name.canonicalize(), qtype, v, self._value(wire, qtype, v, False)
                    )
                )
            except NotCacheable as exc:
                self._reject(str(exc))
        return out

    def delegation(
        self, cut: dns.name.Name, variants: Iterable[int] = maps.VARIANTS
    ) -> list[Entry]:
        """Delegation entries for the cut ``cut``, one per variant, each checked with probes."""
        cut = cut.canonicalize()
        wire = cut.to_wire()
        out = []
        for v in variants:
            try:
                value = self._value(wire, dns.rdatatype.A, v, True)
                for i in range(self.probes):
                    child = self._child(wire, i)
                    for qname, qtype in (
                        (child, dns.rdatatype.A),
                        (wire, dns.rdatatype.NS),
                        (child, dns.rdatatype.DS),
                        (child if i else wire, dns.rdatatype.ANY),
                    ):
                        if len(qname) > 255:
                            continue
                        qname = mixed_case(qname, self.rnd)
                        q = make_query(
                            qname, qtype, v, qid=self.rnd.randrange(65536), flags=FLAG_RD
                        )
                        self._check(value, q, len(qname) - len(wire))
                out.append(Entry("deleg", cut, None, v, value))
            except NotCacheable as exc:
                self._reject(str(exc))
        return out

    def _child(self, wire: bytes, i: int) -> bytes:
        labels = [b"zz%d" % self.rnd.randrange(10**6), b"w", b"probe-%d-xq" % i][: 1 + i % 3]
        return b"".join(bytes((len(lb),)) + lb for lb in labels) + wire

    def _reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


def cookie_flags(respond: Respond, qname: bytes, qtype: int) -> int:
    """maps.CF_COOKIE_* bits for the COOKIE options the engine answers exactly as without one."""
    flags = 0
    plain = respond(make_query(qname, qtype, maps.V_EDNS))
    if plain is None:
        return 0
    client = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    for bit, cookie in (
        (maps.CF_COOKIE_CLIENT, client),
        (maps.CF_COOKIE_FULL, client + bytes(range(16))),
    ):
        opt = struct.pack("!HH", O_COOKIE, len(cookie)) + cookie
        if respond(make_query(qname, qtype, maps.V_EDNS, options=opt)) == plain:
            flags |= bit
    return flags


def packed(
    entries: Iterable[Entry], body_max: int = maps.BODY_MAX
) -> Iterator[tuple[str, bytes, bytes]]:
    """(kind, key, value) triples for HotPath.load."""
    for e in entries:
        yield e.packed(body_max)
