"""The XDP program under BPF_PROG_TEST_RUN: equivalence with the engine, pass reasons, fuzz.

Kernel answer equivalence (ARCHITECTURE.md): for every frame the verdict is
XDP_PASS with the frame untouched, or XDP_TX of a well-formed reply whose DNS
message is what the reference answers to the same query bytes. The reference
is the engine's Responder on the slice the entries were learnt from, and NSD
serving the whole zone (a second, independent server).
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter

import dns.rdatatype
import pytest
from xdp_common import (
    CLIENT4,
    SERVER4,
    build_slice,
    check_result,
    engine_respond,
    frame_for,
    hot_entries,
    random_query,
    require_bpf,
    udp_respond,
)

from zoneslice.hot import entries as E
from zoneslice.xdp import frames, maps, testrun
from zoneslice.xdp.loader import HotPath, Options, program_text
from zoneslice.xdp.maps import ones_sum

pytestmark = pytest.mark.root
SEED = int(os.environ.get("ZS_XDP_SEED", "5353"))


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    return build_slice(tmp_path_factory.mktemp("xdp-zone"))


@pytest.fixture(scope="module")
def prog():
    require_bpf()
    with HotPath(options=Options(addresses=[])) as hp:
        yield hp


@pytest.fixture(scope="module", params=["engine", "nsd"])
def ref(request, zone, prog):
    """(respond, entries): a reference server and the hot entries learnt from it, loaded."""
    if request.param == "engine":
        respond = engine_respond(zone.slice_db)
        yield from _loaded(prog, respond, zone)
    else:
        from tests.nsd import NsdServer

        with NsdServer(zone.zonefile, "com.") as (addr, port):
            yield from _loaded(prog, udp_respond(addr, port), zone)


def _loaded(prog, respond, zone):
    ents, builder = hot_entries(respond, zone)
    prog.invalidate()
    prog.opts.cookie_flags = E.cookie_flags(respond, zone.origin.to_wire(), dns.rdatatype.SOA)
    prog.configure()
    prog.load(E.packed(ents))
    yield respond, ents


def _count(prog) -> Counter:
    return Counter(prog.counters())


def test_every_entry_answers_its_own_query(prog, ref, zone):
    respond, ents = ref
    assert len([e for e in ents if e.kind == "deleg"]) >= 300
    assert len([e for e in ents if e.kind == "exact"]) >= 100
    rnd = random.Random(SEED)
    for e in ents:
        qn = e.name.to_wire()
        if e.kind == "deleg":
            qn = b"\x03WwW" + qn
        q = E.make_query(
            E.mixed_case(qn, rnd), e.qtype or 1, e.variant, qid=rnd.randrange(65536), flags=0x0100
        )
        fr = frames.udp_frame(CLIENT4, SERVER4, 40000, 53, q)
        res = testrun.run(prog.prog_fd, fr)
        assert res.action == testrun.XDP_TX, f"{e} not answered"
        assert check_result(fr, res, respond) is None, str(e)


def test_equivalence_random_queries(prog, ref, zone):
    """Thousands of queries (case, EDNS/DO, sizes, IPv4/IPv6, VLAN): PASS or the reference's answer."""
    respond, _ = ref
    rnd = random.Random(SEED)
    before = _count(prog)
    verdicts: Counter = Counter()
    bad = []
    for _ in range(3000):
        fr = frame_for(rnd, random_query(rnd, zone))
        res = testrun.run(prog.prog_fd, fr)
        verdicts[res.name] += 1
        why = check_result(fr, res, respond)
        if why:
            bad.append((why, frames.parse_udp(fr).payload.hex()))
    after = _count(prog)
    assert not bad, f"{len(bad)} wrong verdicts, first: {bad[:3]}"
    assert verdicts["XDP_TX"] >= 900, verdicts
    answered = (after["answered_exact"] - before["answered_exact"]) + (
        after["answered_deleg"] - before["answered_deleg"]
    )
    assert answered == verdicts["XDP_TX"]
    assert after["answered_deleg"] > before["answered_deleg"]


# ---------------------------------------------------------------- pass reasons


def _hot_query(zone, variant=maps.V_PLAIN, qtype=1, payload=1232, options=b"") -> bytes:
    return E.make_query(
        b"\x03www" + zone.cuts[0].to_wire(),
        qtype,
        variant,
        qid=0x1234,
        payload=payload,
        options=options,
    )


def _ip4_fix(frame: bytes) -> bytes:
    ihl = (frame[14] & 0xF) * 4
    hdr = bytearray(frame[14 : 14 + ihl])
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", ~ones_sum(bytes(hdr)) & 0xFFFF)
    return frame[:14] + bytes(hdr) + frame[14 + ihl :]


def _v4(payload: bytes, **kw) -> bytes:
    return frames.udp_frame(CLIENT4, SERVER4, 40000, kw.pop("dport", 53), payload, **kw)


def _set(frame: bytes, off: int, data: bytes) -> bytes:
    return frame[:off] + data + frame[off + len(data) :]


def _dns_flags(q: bytes, flags: int) -> bytes:
    return q[:2] + struct.pack("!H", flags) + q[4:]


def _cases(zone):
    q = _hot_query(zone)
    qe = _hot_query(zone, maps.V_EDNS)
    base = _v4(q)
    yield "answered_deleg", base
    yield "pass_not_dns", _v4(q, dport=5353)
    yield "pass_not_dns", _ip4_fix(_set(base, 23, b"\x06"))  # TCP
    yield "pass_not_dns", _set(base, 12, b"\x08\x06")  # ARP
    yield "pass_fragment", _ip4_fix(_set(base, 20, b"\x20\x00"))  # MF
    yield "pass_fragment", _ip4_fix(_set(base, 20, b"\x00\x10"))  # offset
    opt4 = (
        base[:14]
        + bytes([0x46])
        + base[15:16]
        + struct.pack("!H", 24 + 8 + len(q))
        + base[18:34]
        + b"\x01\x01\x01\x00"
        + base[34:]
    )
    yield "pass_ip_options", _ip4_fix(opt4)
    yield "pass_address", _set(base, 0, b"\x01\x00\x5e\x00\x00\xfb")
    yield "pass_address", frames.udp_frame(CLIENT4, "224.0.0.251", 5353, 53, q)
    yield "pass_malformed", _set(base, 24, b"\x12\x34")  # IPv4 header checksum
    yield "pass_malformed", _v4(q + b"\0")  # trailing octet
    yield "pass_malformed", _v4(q[:12] + b"\x03www\xc0\x0c\x00\x01\x00\x01")  # pointer in qname
    yield (
        "pass_malformed",
        _v4(
            q[:12]
            + b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"b" * 63
            + b"\x3f"
            + b"c" * 63
            + b"\x3f"
            + b"d" * 63
            + b"\x00\x00\x01\x00\x01"
        ),
    )
    yield "pass_opcode", _v4(_dns_flags(q, 5 << 11))
    yield "pass_opcode", _v4(_dns_flags(q, 4 << 11))
    yield "pass_flags", _v4(_dns_flags(q, 0x8000))
    yield "pass_flags", _v4(_dns_flags(q, 0x0200))
    yield "pass_flags", _v4(_dns_flags(q, 0x0040))
    yield "pass_qdcount", _v4(q[:4] + b"\x00\x02" + q[6:] + q[12:])
    yield "pass_qdcount", _v4(q[:4] + b"\x00\x00" + q[6:])
    yield "pass_sections", _v4(qe[:10] + b"\x00\x02" + qe[12:] + qe[-11:])
    tsig = b"\x03key\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"
    yield "pass_sections", _v4(q[:10] + b"\x00\x01" + q[12:] + tsig)
    yield (
        "pass_sections",
        _v4(q[:6] + b"\x00\x01" + q[8:] + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"),
    )
    yield "pass_edns", _v4(qe[:-5] + b"\x01" + qe[-4:])  # version 1
    yield "pass_edns", _v4(qe[:-6] + b"\x01" + qe[-5:])  # extended rcode bits
    yield "pass_edns", _v4(_hot_query(zone, maps.V_EDNS, options=b"\x00\x03\x00\x00"))  # NSID
    yield "pass_edns", _v4(qe[:-4] + b"\x00\x01" + qe[-2:])  # Z flag
    yield "pass_class", _v4(q[:-2] + b"\x00\x03")
    yield "pass_miss", _v4(E.make_query(b"\x07unknown\x03org\x00", 1))
    yield (
        "pass_miss",
        _v4(E.make_query(zone.cuts[25].to_wire(), 43)),
    )  # DS at a cut (no exact entry)
    yield "pass_miss", _v4(E.make_query(b"\x03www" + zone.cuts[0].to_wire(), 252))  # AXFR
    yield "answered_deleg", _v4(E.make_query(b"\x03www" + zone.cuts[0].to_wire(), 255))  # ANY
    yield "answered_deleg", frames.udp_frame("fd00:53::2", "fd00:53::1", 40000, 53, q, vlan=3)


def test_pass_reasons(prog, ref, zone):
    for expect, fr in _cases(zone):
        before = _count(prog)
        res = testrun.run(prog.prog_fd, fr)
        after = _count(prog)
        moved = {k for k in after if after[k] != before[k]}
        assert moved == {expect}, f"{expect}: counters moved {moved}"
        if expect.startswith("pass"):
            assert res.action == testrun.XDP_PASS and res.frame == fr, expect


def test_too_big_and_disabled(prog, ref, zone):
    """An answer larger than the client's buffer (512, or its EDNS size) is left to the engine."""
    name = b"\x06toobig\x07invalid\x00"
    body = (
        b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c\x02\x59"
        + bytes([255])
        + b"t" * 255
        + bytes([255])
        + b"u" * 255
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    )
    value = maps.AnswerValue(0x8400, 0x0100, 1, 0, 1, body)
    key = maps.exact_key(name, 16, maps.V_EDNS)
    prog.load([("exact", key, value.pack())])
    try:
        for payload, verdict in (
            (512, testrun.XDP_PASS),
            (600, testrun.XDP_TX),
            (100, testrun.XDP_PASS),
        ):
            before = _count(prog)
            res = testrun.run(
                prog.prog_fd, _v4(E.make_query(name, 16, maps.V_EDNS, payload=payload))
            )
            assert res.action == verdict, payload
            if verdict == testrun.XDP_PASS:
                assert _count(prog)["pass_too_big"] == before["pass_too_big"] + 1
    finally:
        prog.invalidate([("exact", key)])
    prog.set_enabled(False)
    try:
        res = testrun.run(prog.prog_fd, _v4(_hot_query(zone)))
        assert res.action == testrun.XDP_PASS
    finally:
        prog.set_enabled(True)
    assert testrun.run(prog.prog_fd, _v4(_hot_query(zone))).action == testrun.XDP_TX


def test_invalidate_then_pass(prog, ref, zone):
    respond, ents = ref
    e = next(x for x in ents if x.kind == "deleg" and x.variant == maps.V_PLAIN)
    fr = _v4(E.make_query(b"\x01a" + e.name.to_wire(), 1))
    assert testrun.run(prog.prog_fd, fr).action == testrun.XDP_TX
    assert prog.invalidate([(e.kind, e.key)]) == 1
    assert testrun.run(prog.prog_fd, fr).action == testrun.XDP_PASS
    prog.load([e.packed()])
    assert testrun.run(prog.prog_fd, fr).action == testrun.XDP_TX


# ---------------------------------------------------------------- fuzz


def _mutate(rnd: random.Random, fr: bytes) -> bytes:
    b = bytearray(fr)
    kind = rnd.randrange(7)
    if kind == 0:
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif kind == 1:
        b = b[: rnd.randrange(len(b))]
    elif kind == 2:
        b += os.urandom(rnd.randrange(1, 40))
    elif kind == 3:
        i = rnd.randrange(len(b))
        b[i] = rnd.randrange(256)
    elif kind == 4:
        i = rnd.randrange(14, len(b))
        b[i:i] = os.urandom(rnd.randrange(1, 8))
    elif kind == 5:
        i = rnd.randrange(42, max(43, len(b)))
        del b[i : i + rnd.randrange(1, 8)]
    else:
        b = bytearray(os.urandom(rnd.randrange(14, 300)))
        b[12:14] = rnd.choice([b"\x08\x00", b"\x86\xdd", b"\x81\x00"])
    return bytes(b)


def test_fuzz_never_wrong_tx(prog, ref, zone):
    """Random and mutated frames: never a verdict other than PASS (untouched) or a right answer."""
    respond, _ = ref
    rnd = random.Random(SEED + 1)
    verdicts: Counter = Counter()
    bad = []
    for i in range(6000):
        fr = frame_for(rnd, random_query(rnd, zone))
        if i % 10:
            fr = _mutate(rnd, fr)
        if len(fr) < 14:
            continue
        res = testrun.run(prog.prog_fd, fr)
        verdicts[res.name] += 1
        why = check_result(fr, res, respond)
        if why:
            bad.append((why, fr.hex()))
    assert not bad, f"{len(bad)} bad verdicts, first: {bad[:2]}"
    assert set(verdicts) <= {"XDP_PASS", "XDP_TX"}
    assert verdicts["XDP_TX"] > 300, verdicts


def test_program_text_is_what_bcc_compiles():
    text = program_text(Options(max_exact=1000))
    assert "#define ZS_MAX_EXACT 1000" in text
    assert '#include "zs_maps.h"' not in text and "struct zs_answer" in text
