"""Malformed queries get FORMERR (or are dropped), never an exception; a fuzz run changes nothing."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from zoneslice.engine import Responder
from zoneslice.split import split_zone

CORNERS = Path(__file__).resolve().parents[1] / "data" / "corners.zone"
QNAME = b"\x03www\x07example\x00"
QUESTION = QNAME + b"\x00\x01\x00\x01"
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)


def header(
    ident: int = 0x4242, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Responder:
    manifest = split_zone(CORNERS, 1, tmp_path_factory.mktemp("one") / "slices").manifest
    r = Responder(manifest.slice_path(0))
    yield r
    r.close()


DROPPED = {
    "empty": b"",
    "short header": b"\x12\x34\x01",
    "eleven octets": header()[:11],
    "response bit set": header(flags=0x8100) + QUESTION,
}

FORMERR = {
    "qdcount 0": header(qd=0),
    "qdcount 2": header(qd=2) + QUESTION + QUESTION,
    "question cut in the name": header() + QNAME[:6],
    "question without type": header() + QNAME + b"\x00",
    "pointer in question": header() + b"\x03www\xc0\x0c" + b"\x00\x01\x00\x01",
    "label loop": header() + b"\xc0\x0c\x00\x01\x00\x01",
    "pointer past the end": header() + b"\x03www\xc3\xff\x00\x01\x00\x01",
    "extended label type": header() + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01",
    "label of 64": header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    "name over 255": header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
    "answer record present": header(an=1)
    + QUESTION
    + QNAME
    + b"\x00\x01\x00\x01"
    + b"\x00" * 4
    + b"\x00\x04\x01\x02\x03\x04",
    "authority in a non-IXFR query": header(ns=1)
    + QUESTION
    + QNAME
    + b"\x00\x06\x00\x01\x00\x00\x00\x00\x00\x00",
    "additional count without record": header(ar=1) + QUESTION,
    "garbage additional": header(ar=1) + QUESTION + b"\x01",
    "two OPT records": header(ar=2) + QUESTION + OPT + OPT,
    "OPT with a non-root owner": header(ar=1) + QUESTION + b"\x01a" + OPT[1:],
    "OPT rdata past the end": header(ar=1) + QUESTION + OPT[:-2] + b"\x00\x09",
    "OPT option past its rdata": header(ar=1) + QUESTION + OPT[:-2] + b"\x00\x04\x00\x0a\x00\x08",
    "rcode set in the query": header(flags=0x0103) + QUESTION,
}


@pytest.mark.parametrize("name", list(DROPPED))
def test_dropped(responder: Responder, name: str) -> None:
    assert responder.respond(DROPPED[name], tcp=False) is None


@pytest.mark.parametrize("name", list(FORMERR))
def test_formerr(responder: Responder, name: str) -> None:
    out = responder.respond(FORMERR[name], tcp=False)
    assert out is not None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", out)
    assert ident == 0x4242 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert (an, ns, ar) == (0, 0, 0) and len(out) == 12


def test_trailing_garbage_is_ignored(responder: Responder) -> None:
    r = dns.message.from_wire(responder.respond(header() + QUESTION + b"junk", tcp=False))
    assert r.rcode() == dns.rcode.NOERROR and r.answer


def _mutate(rng: random.Random, msg: bytes) -> bytes:
    b = bytearray(msg)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.6 and b:
            del b[rng.randrange(len(b)) :]
        elif op < 0.8:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            pos = rng.randrange(12, max(13, len(b)))
            b[pos:pos] = bytes((0xC0 | rng.randrange(64), rng.randrange(256)))
    return bytes(b)


def test_fuzz_never_raises_and_changes_nothing(responder: Responder) -> None:
    rng = random.Random(7)
    good = [
        header(ident=i, ar=1 if i % 2 else 0) + QUESTION + (OPT if i % 2 else b"") for i in range(8)
    ]
    reference = dns.message.from_wire(responder.respond(good[0], tcp=False))
    seeds = good + list(FORMERR.values())
    answered = 0
    for i in range(4000):
        if i % 3 == 0:
            msg = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            msg = _mutate(rng, rng.choice(seeds))
        for tcp in (False, True):
            out = responder.respond(msg, tcp=tcp)
            if out is None:
                continue
            answered += 1
            assert len(out) >= 12 and out[:2] == msg[:2] and out[2] & 0x80
            assert out[3] & 0xF != dns.rcode.SERVFAIL, msg.hex()
    assert responder.counters["errors"] == 0
    assert answered > 1000
    after = dns.message.from_wire(responder.respond(good[0], tcp=False))
    assert after.answer == reference.answer and after.authority == reference.authority
