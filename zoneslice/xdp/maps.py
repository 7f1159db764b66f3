"""ctypes mirrors of bpf/zs_maps.h and the packing of keys and values.

This module moves bytes: it knows how a key and an answer value are laid out,
not what a DNS answer means (that is zoneslice.hot.entries).
"""

from __future__ import annotations

import ctypes as ct
import struct
from dataclasses import dataclass, field

from zoneslice.errors import XdpError

KEY_DATA = 256
MAX_FIX = 32
BODY_MAX = 1232
MAX_SLOTS = 65536

V_PLAIN = 0
V_EDNS = 1
V_EDNS_DO = 2
VARIANTS = (V_PLAIN, V_EDNS, V_EDNS_DO)

FIX_BODY = 0x8000

CF_ENABLED = 1
CF_ADDR_FILTER = 2
CF_COOKIE_CLIENT = 4
CF_COOKIE_FULL = 8
CF_VERIFY_CSUM = 16

COUNTERS = (
    "answered_exact",
    "answered_deleg",
    "pass_not_dns",
    "pass_fragment",
    "pass_ip_options",
    "pass_address",
    "pass_malformed",
    "pass_opcode",
    "pass_flags",
    "pass_qdcount",
    "pass_sections",
    "pass_edns",
    "pass_class",
    "pass_miss",
    "pass_too_big",
    "pass_disabled",
    "err_adjust",
    "err_store",
    "pass_checksum",
)

_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


class Config(ct.Structure):
    _fields_ = [
        ("flags", ct.c_uint32),
        ("port", ct.c_uint16),
        ("max_udp", ct.c_uint16),
        ("max_udp6", ct.c_uint16),
        ("pad", ct.c_uint16),
    ]


class Key(ct.Structure):
    _fields_ = [("head", ct.c_uint32), ("data", ct.c_uint8 * KEY_DATA)]


class Addr(ct.Structure):
    _fields_ = [("a", ct.c_uint8 * 16)]


def answer_struct(body_max: int = BODY_MAX) -> type[ct.Structure]:
    """The ctypes mirror of ``struct zs_answer`` for a given ZS_BODY_MAX."""

    class Answer(ct.Structure):
        _fields_ = [
            ("flags", ct.c_uint16),
            ("copy_mask", ct.c_uint16),
            ("ancount", ct.c_uint16),
            ("nscount", ct.c_uint16),
            ("arcount", ct.c_uint16),
            ("len", ct.c_uint16),
            ("csum", ct.c_uint16),
            ("nfix", ct.c_uint16),
            ("deleg_len", ct.c_uint16),
            ("slot", ct.c_uint16),
            ("fix_pos", ct.c_uint16 * MAX_FIX),
            ("fix_val", ct.c_uint16 * MAX_FIX),
            ("body", ct.c_uint8 * body_max),
        ]

    return Answer


def ones_sum(data: bytes) -> int:
    """Folded 16-bit one's-complement sum of ``data`` (big-endian words, odd byte padded)."""
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def reversed_key_name(wire_name: bytes) -> bytes:
    """Lower-cased wire name, byte-reversed (root first): a cut is a prefix of its subtree."""
    return wire_name.translate(_LOWER)[::-1]


def exact_key(wire_name: bytes, qtype: int, variant: int) -> bytes:
    """Key bytes of an exact (name, type, variant) entry."""
    rev = reversed_key_name(wire_name)
    if len(rev) > KEY_DATA - 1:
        raise XdpError(f"name of {len(rev)} octets does not fit a key")
    return struct.pack("=I", qtype) + (bytes((variant,)) + rev).ljust(KEY_DATA, b"\0")


def deleg_key(wire_name: bytes, variant: int) -> bytes:
    """LPM-trie key bytes of a delegation entry: every name at or below ``wire_name``."""
    rev = reversed_key_name(wire_name)
    if len(rev) > KEY_DATA - 1:
        raise XdpError(f"name of {len(rev)} octets does not fit a key")
    return struct.pack("=I", 8 * (1 + len(rev))) + (bytes((variant,)) + rev).ljust(KEY_DATA, b"\0")


@dataclass
class AnswerValue:
    """What the program writes after the question, and how it patches it."""

    flags: int
    copy_mask: int
    ancount: int
    nscount: int
    arcount: int
    body: bytes
    fixups: list[tuple[int, int]] = field(default_factory=list)  # (body offset, fix_val)
    deleg_len: int = 0
    slot: int = 0  # hit counter index (0: none), see HotPath.hits

    def pack(self, body_max: int = BODY_MAX) -> bytes:
        if len(self.body) > body_max:
            raise XdpError(f"answer body of {len(self.body)} octets does not fit (max {body_max})")
        if len(self.fixups) > MAX_FIX:
            raise XdpError(f"{len(self.fixups)} pointer fix-ups, at most {MAX_FIX}")
        body = bytearray(self.body)
        for pos, _ in self.fixups:
            body[pos : pos + 2] = b"\0\0"
        fpos = [p for p, _ in self.fixups] + [0] * (MAX_FIX - len(self.fixups))
        fval = [v for _, v in self.fixups] + [0] * (MAX_FIX - len(self.fixups))
        head = struct.pack(
            f"=10H{MAX_FIX}H{MAX_FIX}H",
            self.flags,
            self.copy_mask,
            self.ancount,
            self.nscount,
            self.arcount,
            len(body),
            ones_sum(bytes(body)),
            len(self.fixups),
            self.deleg_len,
            self.slot,
            *fpos,
            *fval,
        )
        return head + bytes(body).ljust(body_max, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> AnswerValue:
        """The inverse of :meth:`pack` (fix-up words stay zero in ``body``)."""
        head = struct.unpack_from(f"=10H{MAX_FIX}H{MAX_FIX}H", data)
        flags, copy_mask, an, ns, ar, blen, _csum, nfix, deleg_len, slot = head[:10]
        fpos, fval = head[10 : 10 + MAX_FIX], head[10 + MAX_FIX :]
        off = struct.calcsize(f"=10H{MAX_FIX}H{MAX_FIX}H")
        fix = [(fpos[i], fval[i]) for i in range(nfix)]
        return cls(
            flags, copy_mask, an, ns, ar, bytes(data[off : off + blen]), fix, deleg_len, slot
        )

    def render(self, query_header: bytes, question: bytes, cut: int = 0) -> bytes:
        """The DNS message the program sends for a query (Python model of hot_answer.c)."""
        qid, qflags = struct.unpack_from("!HH", query_header)
        flags = (self.flags & ~self.copy_mask) | (qflags & self.copy_mask)
        body = bytearray(self.body)
        qlen = len(question) - 4
        for pos, val in self.fixups:
            target = 12 + qlen + 4 + (val & 0x7FFF) if val & FIX_BODY else 12 + cut + val
            body[pos : pos + 2] = struct.pack("!H", 0xC000 | target)
        head = struct.pack("!6H", qid, flags, 1, self.ancount, self.nscount, self.arcount)
        return head + question + bytes(body)
