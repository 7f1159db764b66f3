"""Collect the RRsets of a response per section and encode them, as NSD does.

:mod:`zoneslice.engine.query` decides what goes into a response; this module
only keeps the chosen RRsets in order (one entry per RRset, moved to the
earlier section when added twice, like NSD's ``answer_add_rrset``) and turns
them into wire format with name compression and NSD's truncation rules:

* answer and authority RRsets go in whole or not at all; one that does not fit
  sets TC and ends the message;
* the optional authority (the apex NS of a positive answer) and the additional
  sections are best effort over UDP: an RRset that does not fit is left out
  without TC, and no later section is tried (NSD's "minimal responses" build),
  except that a referral left without any address record in the first
  additional section gets TC;
* RRSIGs follow each RRset when the client set DO and the zone is signed.

Names are compressed against every owner and every compressible rdata name
already written (NS, CNAME, SOA, PTR, MX, MINFO, MB/MD/MF/MG/MR, as NSD), and
against the question name from the closest encloser up, so message sizes, and
therefore truncation, match NSD's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

ANSWER = 0
AUTHORITY = 1
OPTIONAL_AUTHORITY = 2
ADDITIONAL_A = 3
ADDITIONAL_AAAA = 4
ADDITIONAL_OTHER = 5
SECTIONS = 6

T_A, T_NS, T_MD, T_MF, T_CNAME, T_SOA, T_MB, T_MG, T_MR = 1, 2, 3, 4, 5, 6, 7, 8, 9
T_PTR, T_MINFO, T_MX, T_AAAA, T_OPT, T_RRSIG = 12, 14, 15, 28, 41, 46

_ONE_NAME = frozenset((T_NS, T_MD, T_MF, T_CNAME, T_MB, T_MG, T_MR, T_PTR))
_COMPRESSED = _ONE_NAME | {T_SOA, T_MINFO, T_MX}
_RR_FIXED = struct.Struct("!HHIH")
_HEADER = struct.Struct("!HHHHHH")
MAX_POINTER = 0x3FFF
IPV4_MINIMAL_RESPONSE_SIZE = 1232
IPV6_MINIMAL_RESPONSE_SIZE = 1220
OUR_EDNS_SIZE = 1232

EDE_NOT_AUTHORITATIVE = 20
EDE_NOT_SUPPORTED = 21

Labels = tuple[bytes, ...]
"""An absolute name as its labels, lowest first, without the root label."""


class RRset:
    """One RRset as it goes on the wire: owner labels, type, TTL, rdatas, RRSIGs.

    ``ident`` is what makes two additions "the same RRset" (NSD compares the
    owner domain and the RRset object): owner, type and a variant tag (for
    the negative-answer SOA, wildcard expansions and synthesized CNAMEs).
    """

    __slots__ = ("owner", "rdtype", "ttl", "rdatas", "sigs", "ident", "ttls")

    def __init__(
        self,
        owner: Labels,
        rdtype: int,
        ttl: int,
        rdatas: list[bytes],
        sigs: list[tuple[int, bytes]] | None = None,
        variant: object = None,
    ) -> None:
        self.owner = owner
        self.rdtype = rdtype
        self.ttl = ttl
        self.rdatas = rdatas
        self.sigs = sigs or []
        self.ident = (owner, rdtype, variant)
        self.ttls: list[int] | None = None

    def with_owner(self, owner: Labels, variant: object) -> RRset:
        rr = RRset(owner, self.rdtype, self.ttl, self.rdatas, self.sigs, variant)
        rr.ttls = self.ttls
        return rr

    def with_ttl(self, ttl: int, variant: object) -> RRset:
        sigs = [(ttl, rd) for _, rd in self.sigs] if self.rdtype == T_SOA else self.sigs
        return RRset(self.owner, self.rdtype, ttl, self.rdatas, sigs, variant)

    def __repr__(self) -> str:
        return f"RRset({b'.'.join(self.owner)!r}, {self.rdtype}, {len(self.rdatas)} rr)"


class Answer:
    """The RRsets chosen for one response, in the order they were added."""

    __slots__ = ("entries", "_where")

    def __init__(self) -> None:
        self.entries: list[list] = []
        self._where: dict[tuple, list] = {}

    def add(self, section: int, rrset: RRset) -> bool:
        """Add ``rrset``; False if it is already there (moved up if ``section`` is earlier)."""
        entry = self._where.get(rrset.ident)
        if entry is not None:
            if section < entry[0]:
                entry[0] = section
                return True
            return False
        entry = [section, rrset]
        self._where[rrset.ident] = entry
        self.entries.append(entry)
        return True

    def has(self, ident: tuple) -> bool:
        return ident in self._where


def name_labels(wire: bytes, offset: int = 0) -> tuple[Labels, int]:
    """Labels of an uncompressed wire name at ``offset`` and the offset after it."""
    labels = []
    n = wire[offset]
    while n:
        labels.append(wire[offset + 1 : offset + 1 + n])
        offset += n + 1
        n = wire[offset]
    return tuple(labels), offset + 1


def lower_labels(labels: Labels) -> Labels:
    return tuple(lb.lower() for lb in labels)


class Writer:
    """A message being built: bytes plus the compression table, with undo to a mark."""

    __slots__ = ("buf", "comp", "log")

    def __init__(self, head: bytes, seeds: dict[Labels, int]) -> None:
        self.buf = bytearray(head)
        self.comp = dict(seeds)
        self.log: list[Labels] = []

    def name(self, labels: Labels, low: Labels | None = None) -> None:
        buf = self.buf
        comp = self.comp
        if low is None:
            low = labels
        for i in range(len(labels)):
            ptr = comp.get(low[i:])
            if ptr is not None:
                buf += (0xC000 | ptr).to_bytes(2, "big")
                return
            pos = len(buf)
            if pos <= MAX_POINTER:
                key = low[i:]
                comp[key] = pos
                self.log.append(key)
            lb = labels[i]
            buf.append(len(lb))
            buf += lb
        buf.append(0)

    def rr(self, owner: Labels, rdtype: int, ttl: int, rdata: bytes) -> None:
        self.name(owner)
        buf = self.buf
        start = len(buf)
        buf += _RR_FIXED.pack(rdtype, 1, ttl, 0)
        if rdtype in _COMPRESSED:
            self._compressed_rdata(rdtype, rdata)
        else:
            buf += rdata
        rdlen = len(buf) - start - 10
        buf[start + 8 : start + 10] = rdlen.to_bytes(2, "big")

    def _compressed_rdata(self, rdtype: int, rdata: bytes) -> None:
        if rdtype == T_MX:
            self.buf += rdata[:2]
            labels, _ = name_labels(rdata, 2)
            self.name(labels, lower_labels(labels))
        elif rdtype in _ONE_NAME:
            labels, _ = name_labels(rdata, 0)
            self.name(labels, lower_labels(labels))
        else:  # SOA, MINFO: two names, then (SOA) the fixed fields
            first, off = name_labels(rdata, 0)
            second, off = name_labels(rdata, off)
            self.name(first, lower_labels(first))
            self.name(second, lower_labels(second))
            self.buf += rdata[off:]

    def mark(self) -> tuple[int, int]:
        return len(self.buf), len(self.log)

    def undo(self, mark: tuple[int, int]) -> None:
        pos, nlog = mark
        del self.buf[pos:]
        log = self.log
        comp = self.comp
        while len(log) > nlog:
            comp.pop(log.pop(), None)


def opt_record(do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT RR: payload 1232, version 0, DO echoed."""
    return (
        b"\x00\x00\x29"
        + OUR_EDNS_SIZE.to_bytes(2, "big")
        + bytes((ext_rcode, 0, 0x80 if do else 0, 0))
        + len(options).to_bytes(2, "big")
        + options
    )


def ede_option(code: int) -> bytes:
    return b"\x00\x0f\x00\x02" + code.to_bytes(2, "big")


def encode(
    ident: int,
    flags: int,
    question: bytes,
    answer: Answer,
    *,
    limit: int,
    tcp: bool,
    dnssec: bool,
    opt: bytes | None,
    seeds: dict[Labels, int],
    minimal_size: int = IPV4_MINIMAL_RESPONSE_SIZE,
    referral: bool = False,
) -> bytes:
    """The response message: header, question, sections, then ``opt`` (if any).

    ``flags`` is the complete flags word except TC, which is set here when an
    answer or authority RRset does not fit in ``limit`` octets, or when a
    ``referral`` has no room for a single address record of its first
    additional section (NSD: "delegations should have a usable address").
    """
    w = Writer(b"\x00" * 12 + question, seeds)
    buf = w.buf
    room = limit - (len(opt) if opt is not None else 0)
    counts = [0] * SECTIONS
    tc = False
    entries = answer.entries
    for section in range(SECTIONS):
        done = False
        for entry in entries:
            if entry[0] != section:
                continue
            rrset: RRset = entry[1]
            mark = w.mark()
            added = 0
            all_added = True
            owner = rrset.owner
            ttls = rrset.ttls
            for i, rdata in enumerate(rrset.rdatas):
                rr_mark = w.mark()
                w.rr(owner, rrset.rdtype, ttls[i] if ttls else rrset.ttl, rdata)
                if len(buf) > room:
                    w.undo(rr_mark)
                    all_added = False
                    break
                added += 1
            if all_added and dnssec and rrset.sigs:
                for ttl, rdata in rrset.sigs:
                    rr_mark = w.mark()
                    w.rr(owner, T_RRSIG, ttl, rdata)
                    if len(buf) > room:
                        w.undo(rr_mark)
                        all_added = False
                        break
                    added += 1
            if section >= OPTIONAL_AUTHORITY:
                if not tcp and (not all_added or len(buf) > minimal_size):
                    w.undo(mark)
                    added = 0
                    done = True
            elif not all_added:
                w.undo(mark)
                added = 0
                tc = True
                break
            counts[section] += added
        if done and section == ADDITIONAL_A and not counts[ADDITIONAL_A] and referral:
            tc = True
        if tc or done:
            break
    if tc:
        flags |= 0x0200
    arcount = counts[ADDITIONAL_A] + counts[ADDITIONAL_AAAA] + counts[ADDITIONAL_OTHER]
    if opt is not None:
        buf += opt
        arcount += 1
    buf[0:12] = _HEADER.pack(
        ident,
        flags,
        1 if question else 0,
        counts[ANSWER],
        counts[AUTHORITY] + counts[OPTIONAL_AUTHORITY],
        arcount,
    )
    return bytes(buf)


def header_only(ident: int, flags: int, question: bytes = b"", opt: bytes | None = None) -> bytes:
    """A response without records: error replies, BADVERS, refusals."""
    return (
        _HEADER.pack(ident, flags, 1 if question else 0, 0, 0, 1 if opt is not None else 0)
        + question
        + (opt or b"")
    )


def rrsets_wire(rrsets: Iterable[RRset], dnssec: bool) -> Iterable[tuple[Labels, int, int, bytes]]:
    """(owner, type, ttl, rdata) of every RR, RRSIGs after their RRset (for zone transfers)."""
    for rrset in rrsets:
        for rdata in rrset.rdatas:
            yield rrset.owner, rrset.rdtype, rrset.ttl, rdata
        if dnssec:
            for ttl, rdata in rrset.sigs:
                yield rrset.owner, T_RRSIG, ttl, rdata
