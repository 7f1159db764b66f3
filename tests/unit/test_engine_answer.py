"""Encoding: NSD's compression and truncation rules, independent of any zone."""

from __future__ import annotations

import socket
import struct

import dns.flags
import dns.message

from zoneslice.engine import answer as wire
from zoneslice.engine.answer import Answer, RRset

QUESTION = b"\x03www\x07example\x00\x00\x01\x00\x01"
SEEDS = {(b"www", b"example"): 12, (b"example",): 16}
NS_TARGET = b"\x03ns1\x07example\x00"


def a_rrset(owner: tuple, count: int, variant: object = None) -> RRset:
    return RRset(
        owner, 1, 300, [socket.inet_aton(f"192.0.2.{i + 1}") for i in range(count)], None, variant
    )


def encode(ans: Answer, limit: int = 512, tcp: bool = False, referral: bool = False) -> bytes:
    return wire.encode(
        0x1111,
        0x8400,
        QUESTION,
        ans,
        limit=limit,
        tcp=tcp,
        dnssec=False,
        opt=None,
        seeds=SEEDS,
        referral=referral,
    )


def test_names_compress_against_the_question_and_each_other() -> None:
    ans = Answer()
    ans.add(wire.ANSWER, a_rrset((b"www", b"example"), 1))
    ans.add(wire.AUTHORITY, RRset((b"example",), 2, 300, [NS_TARGET]))
    ans.add(wire.ADDITIONAL_A, a_rrset((b"ns1", b"example"), 1))
    out = encode(ans)
    assert out[29:31] == b"\xc0\x0c"  # answer owner: pointer to the question name
    msg = dns.message.from_wire(out)
    assert [len(s) for s in (msg.answer, msg.authority, msg.additional)] == [1, 1, 1]
    assert out.count(b"\x03ns1") == 1 and out.count(b"\x07example") == 1


def test_same_rrset_twice_is_kept_once_in_the_earlier_section() -> None:
    ans = Answer()
    ns = RRset((b"example",), 2, 300, [NS_TARGET])
    assert ans.add(wire.OPTIONAL_AUTHORITY, ns)
    assert ans.add(wire.ANSWER, RRset((b"example",), 2, 300, [NS_TARGET]))
    assert not ans.add(wire.AUTHORITY, ns)
    assert [e[0] for e in ans.entries] == [wire.ANSWER]


def test_answer_that_does_not_fit_sets_tc_and_ends_the_message() -> None:
    ans = Answer()
    ans.add(wire.ANSWER, a_rrset((b"www", b"example"), 2, "small"))
    ans.add(wire.ANSWER, RRset((b"www", b"example"), 16, 300, [b"\xff" + b"x" * 255] * 3))
    ans.add(wire.AUTHORITY, RRset((b"example",), 2, 300, [NS_TARGET]))
    out = encode(ans)
    msg = dns.message.from_wire(out)
    assert msg.flags & dns.flags.TC and len(msg.answer) == 1 and not msg.authority
    assert struct.unpack_from("!H", out, 6)[0] == 2


def test_additional_that_does_not_fit_is_dropped_without_tc() -> None:
    ans = Answer()
    ans.add(wire.ANSWER, RRset((b"www", b"example"), 16, 300, [b"\xff" + b"x" * 255]))
    ans.add(wire.ADDITIONAL_A, a_rrset((b"ns1", b"example"), 20))
    msg = dns.message.from_wire(encode(ans))
    assert not msg.flags & dns.flags.TC and not msg.additional
    tcp = dns.message.from_wire(encode(ans, limit=65535, tcp=True))
    assert len(tcp.additional[0]) == 20


def test_referral_without_room_for_any_address_is_truncated() -> None:
    ans = Answer()
    ans.add(wire.AUTHORITY, RRset((b"www", b"example"), 16, 300, [b"\xff" + b"x" * 255]))
    ans.add(wire.ADDITIONAL_A, a_rrset((b"ns1", b"example"), 20))
    assert dns.message.from_wire(encode(ans, referral=True)).flags & dns.flags.TC
    assert not dns.message.from_wire(encode(ans, referral=False)).flags & dns.flags.TC


def test_opt_is_appended_and_counted() -> None:
    ans = Answer()
    ans.add(wire.ANSWER, a_rrset((b"www", b"example"), 1))
    out = wire.encode(
        1,
        0x8400,
        QUESTION,
        ans,
        limit=1232,
        tcp=False,
        dnssec=False,
        opt=wire.opt_record(True),
        seeds=SEEDS,
    )
    msg = dns.message.from_wire(out)
    assert msg.edns == 0 and msg.payload == 1232 and msg.ednsflags & dns.flags.DO
