"""Just enough DNS wire parsing for traces: header fields and the first question.

Characterising or partitioning a 48-hour capture touches every message, so
this reads only the 12-byte header and the question, without dnspython.
Names are kept as lower-cased wire bytes: a cheap, exact dictionary key.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_hdr = struct.Struct("!HHHHHH").unpack_from
_qtc = struct.Struct("!HH").unpack_from

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010


class Question(NamedTuple):
    """Header fields and the first question of a message."""

    id: int
    flags: int
    qname: bytes
    qtype: int
    qclass: int
    end: int
    counts: tuple[int, int, int, int]

    @property
    def qr(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 15

    @property
    def rcode(self) -> int:
        return self.flags & 15


def read_name(wire: bytes, p: int) -> tuple[bytes, int] | None:
    """The lower-cased, uncompressed wire form of the name at ``p``, and the offset after it."""
    n = len(wire)
    start = p
    end = -1
    parts: list[bytes] | None = None
    hops = 0
    total = 0
    while True:
        if p >= n:
            return None
        ln = wire[p]
        if ln == 0:
            if parts is None:
                return wire[start : p + 1].lower(), p + 1
            parts.append(wire[start : p + 1])
            name = b"".join(parts).lower()
            return name, end
        if ln >= 0xC0:
            if p + 1 >= n or hops > 32:
                return None
            if parts is None:
                parts = []
                end = p + 2
            parts.append(wire[start:p])
            p = (ln & 0x3F) << 8 | wire[p + 1]
            start = p
            hops += 1
            continue
        if ln > 63:
            return None
        total += ln + 1
        if total > 255:
            return None
        p += ln + 1


def question(wire: bytes) -> Question | None:
    """The header and first question, or None when the message has none or is malformed."""
    if len(wire) < 12:
        return None
    ident, flags, qd, an, ns, ar = _hdr(wire, 0)
    if qd == 0:
        return None
    got = read_name(wire, 12)
    if got is None:
        return None
    name, p = got
    if p + 4 > len(wire):
        return None
    qtype, qclass = _qtc(wire, p)
    return Question(ident, flags, name, qtype, qclass, p + 4, (qd, an, ns, ar))


def header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    """(id, flags, qdcount, ancount, nscount, arcount); the message must be >= 12 bytes."""
    return _hdr(wire, 0)


def edns_of_query(wire: bytes, q: Question) -> tuple[int, int] | None:
    """(udp size, flags) of the OPT record of a simple query (one question, no answers), if any."""
    qd, an, ns, ar = q.counts
    if qd != 1 or an or ns or not ar:
        return None
    p = q.end
    n = len(wire)
    for _ in range(ar):
        if p + 11 > n:
            return None
        if wire[p] == 0 and wire[p + 1] == 0 and wire[p + 2] == 41:
            size, _ext, _ver, flags = struct.unpack_from("!HBBH", wire, p + 3)
            return size, flags
        got = read_name(wire, p)
        if got is None:
            return None
        p = got[1]
        if p + 10 > n:
            return None
        p += 10 + (wire[p + 8] << 8 | wire[p + 9])
    return None


def labels(name: bytes) -> list[bytes]:
    """Labels of an uncompressed wire name, leftmost first, without the root."""
    out = []
    p = 0
    while name[p]:
        ln = name[p]
        out.append(name[p + 1 : p + 1 + ln])
        p += ln + 1
    return out


def name_text(name: bytes) -> str:
    """Presentation form of an uncompressed wire name."""
    import dns.name

    return dns.name.Name([*labels(name), b""]).to_text()


def name_wire(text: str) -> bytes:
    """Lower-cased wire form of a presentation name (relative names are made absolute)."""
    import dns.name

    return dns.name.from_text(text).canonicalize().to_wire()
