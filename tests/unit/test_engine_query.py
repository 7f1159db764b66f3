"""Responder behaviour on the hand-written corners zone: flags, EDNS, errors, refusals, AXFR, cache."""

from __future__ import annotations

import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from zoneslice.engine import Responder
from zoneslice.manifest import Manifest
from zoneslice.split import split_zone

CORNERS = Path(__file__).resolve().parents[1] / "data" / "corners.zone"
CLIENT = ("127.0.0.1", 5300)


def query(
    name: str,
    qtype: str | int,
    *,
    ident: int = 0x1234,
    rd: bool = True,
    cd: bool = False,
    edns: bool = True,
    do: bool = False,
    payload: int = 1232,
    version: int = 0,
    opcode: int = 0,
) -> bytes:
    """A query message built by hand (case of ``name`` kept)."""
    labels = [lb.encode() for lb in name.rstrip(".").split(".") if lb]
    qname = b"".join(bytes((len(lb),)) + lb for lb in labels) + b"\x00"
    code = qtype if isinstance(qtype, int) else dns.rdatatype.from_text(qtype)
    flags = (opcode << 11) | (0x0100 if rd else 0) | (0x0010 if cd else 0)
    msg = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if edns else 0)
    msg += qname + struct.pack("!HH", code, 1)
    if edns:
        msg += b"\x00" + struct.pack("!HHBBHH", 41, payload, 0, version, 0x8000 if do else 0, 0)
    return msg


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return split_zone(CORNERS, 3, tmp_path_factory.mktemp("corners") / "slices").manifest


@pytest.fixture(scope="module")
def responders(manifest: Manifest) -> list[Responder]:
    rs = [Responder(manifest.slice_path(i)) for i in range(manifest.parts)]
    yield rs
    for r in rs:
        r.close()


def ask(manifest: Manifest, responders: list[Responder], msg: bytes, tcp: bool = False) -> bytes:
    name = dns.message.from_wire(msg).question[0].name
    index = manifest.plan.slice_for(name)
    out = responders[0 if index is None else index].respond(msg, tcp=tcp, client=CLIENT)
    assert out is not None
    return out


def parse(out: bytes) -> dns.message.Message:
    return dns.message.from_wire(out)


def test_positive_answer_with_apex_ns_and_glue(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("www.example.", "A")))
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.RD and not r.flags & dns.flags.TC
    assert [rd.address for rd in r.answer[0]] == ["192.0.2.80"]
    assert {rd.target.to_text() for rd in r.authority[0]} == {
        "ns1.example.",
        "ns2.example.",
        "ns.outside.net.",
    }
    glue = {(rr.name.to_text(), rr.rdtype) for rr in r.additional}
    assert ("ns1.example.", dns.rdatatype.A) in glue and (
        "ns1.example.",
        dns.rdatatype.AAAA,
    ) in glue


def test_nxdomain_soa_ttl_is_minimum(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("x.www.example.", "A")))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.authority[0].rdtype == dns.rdatatype.SOA and r.authority[0].ttl == 300


def test_empty_non_terminal_is_nodata(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("b.c.example.", "A")))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_referral_clears_aa_and_carries_sibling_glue(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("host.deleg.example.", "A")))
    assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.NS
    names = {rr.name.to_text() for rr in r.additional}
    assert {"ns1.deleg.example.", "ns2.deleg.example.", "ns.sibling.example."} <= names


def test_ds_is_answered_from_the_parent_side(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("deleg.example.", "DS")))
    assert (
        r.flags & dns.flags.AA and r.answer[0].rdtype == dns.rdatatype.DS and len(r.answer[0]) == 2
    )


def test_wildcard_and_its_blocking(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("anything.wild.example.", "A")))
    assert r.answer[0].name.to_text() == "anything.wild.example."
    assert r.answer[0][0].address == "192.0.2.10"
    blocked = parse(ask(manifest, responders, query("x.ent2.wild.example.", "A")))
    assert blocked.rcode() == dns.rcode.NXDOMAIN


def test_cname_loop_stops(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("loop1.example.", "A")))
    assert r.rcode() == dns.rcode.NOERROR
    assert sorted(rr.name.to_text() for rr in r.answer) == ["loop1.example.", "loop2.example."]


def test_dname_synthesizes_a_cname(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("www.dn.example.", "A")))
    types = {(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.answer}
    assert {("dn.example.", "DNAME"), ("www.dn.example.", "CNAME")} <= types
    cname = next(rr for rr in r.answer if rr.rdtype == dns.rdatatype.CNAME)
    assert cname[0].target.to_text() == "www.tgt.example." and cname.ttl == 3600


def test_any_gets_one_rrset(manifest, responders) -> None:
    r = parse(ask(manifest, responders, query("www.example.", "ANY")))
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.A and not r.authority


def test_question_case_rd_cd_and_id_are_echoed_also_from_the_cache(manifest, responders) -> None:
    first = ask(manifest, responders, query("Mail.Example.", "A", ident=1, rd=False))
    index = manifest.plan.slice_for(dns.name.from_text("mail.example."))
    hits = responders[index].counters["cache_hits"]
    msg = query("mAIL.eXAMPLE.", "A", ident=0xBEEF, rd=True, cd=True)
    second = ask(manifest, responders, msg)
    assert responders[index].counters["cache_hits"] == hits + 1
    assert second[:2] == b"\xbe\xef"
    assert second[12 : 12 + 14] == msg[12 : 12 + 14]
    r1, r2 = parse(first), parse(second)
    assert not r1.flags & dns.flags.RD and not r1.flags & dns.flags.CD
    assert r2.flags & dns.flags.RD and r2.flags & dns.flags.CD
    assert r2.answer[0].name.labels == (b"mAIL", b"eXAMPLE", b"")
    assert r1.answer == r2.answer and r1.authority == r2.authority


def test_opt_only_when_the_query_had_one(manifest, responders) -> None:
    plain = parse(ask(manifest, responders, query("www.example.", "A", edns=False)))
    assert plain.edns == -1
    r = parse(ask(manifest, responders, query("www.example.", "A", do=True, payload=4096)))
    assert r.edns == 0 and r.payload == 1232 and r.ednsflags & dns.flags.DO


def test_truncation_follows_the_buffer_size(manifest, responders) -> None:
    no_edns = parse(ask(manifest, responders, query("big.example.", "TXT", edns=False)))
    assert no_edns.flags & dns.flags.TC and not no_edns.answer
    tiny = parse(ask(manifest, responders, query("big.example.", "TXT", payload=100)))
    assert tiny.flags & dns.flags.TC
    fits = parse(ask(manifest, responders, query("big.example.", "TXT", payload=1232)))
    assert not fits.flags & dns.flags.TC and len(fits.answer[0]) == 6
    huge = parse(ask(manifest, responders, query("huge.example.", "TXT", payload=4096)))
    assert huge.flags & dns.flags.TC
    tcp = parse(ask(manifest, responders, query("huge.example.", "TXT"), tcp=True))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 6


def test_badvers(manifest, responders) -> None:
    out = ask(manifest, responders, query("www.example.", "A", version=1, do=True))
    r = parse(out)
    assert r.rcode() == dns.rcode.BADVERS and not r.answer and r.question
    assert r.edns == 0


@pytest.mark.parametrize("opcode", [1, 2, 3, 5, 6, 15])
def test_unknown_opcodes_get_notimp(manifest, responders, opcode: int) -> None:
    out = responders[0].respond(query("www.example.", "A", opcode=opcode), tcp=False)
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", out)
    assert ident == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.NOTIMP
    assert (flags >> 11) & 0xF == opcode and (qd, an, ns, ar) == (0, 0, 0, 0)


def test_names_outside_the_slice_or_zone_are_refused(manifest, responders) -> None:
    index = manifest.plan.slice_for(dns.name.from_text("www.example."))
    other = responders[(index + 1) % manifest.parts]
    r = parse(other.respond(query("www.example.", "A"), tcp=False))
    assert r.rcode() == dns.rcode.REFUSED and r.question and not r.flags & dns.flags.AA
    assert [(o.otype, o.code) for o in r.options] == [(dns.edns.OptionType.EDE, 20)]
    outside = parse(other.respond(query("www.example.net.", "A", edns=False), tcp=False))
    assert outside.rcode() == dns.rcode.REFUSED and outside.edns == -1
    for r in responders:
        apex = parse(r.respond(query("example.", "SOA"), tcp=False))
        assert apex.rcode() == dns.rcode.NOERROR and apex.answer[0].rdtype == dns.rdatatype.SOA


def test_other_classes_are_refused(responders) -> None:
    msg = bytearray(query("www.example.", "A"))
    msg[12 + 13 + 2 : 12 + 13 + 4] = b"\x00\x03"
    r = dns.message.from_wire(responders[0].respond(bytes(msg), tcp=False))
    assert r.rcode() == dns.rcode.REFUSED


def test_axfr_only_over_tcp_and_to_allowed_clients(manifest, tmp_path: Path) -> None:
    allowed = Responder(manifest.slice_path(1), axfr_allowed=lambda addr: addr == "127.0.0.1")
    try:
        udp = parse(
            allowed.respond(query("example.", "AXFR", edns=False), tcp=False, client=CLIENT)
        )
        assert udp.rcode() == dns.rcode.NOTIMP
        refused = allowed.axfr(query("example.", "AXFR", edns=False), ("10.53.0.9", 1))
        assert isinstance(refused, bytes) and parse(refused).rcode() == dns.rcode.REFUSED
        stream = allowed.axfr(query("example.", "AXFR", edns=False), CLIENT)
        assert not isinstance(stream, bytes)
        messages = [dns.message.from_wire(m, one_rr_per_rrset=True) for m in stream]
        rrs = [rrset for m in messages for rrset in m.answer]
        assert rrs[0].rdtype == dns.rdatatype.SOA and rrs[-1].rdtype == dns.rdatatype.SOA
        count = sum(len(r) for r in rrs)
        rows = allowed.conn.execute("SELECT count(*) FROM rr WHERE origin = 1").fetchone()[0]
        assert count == rows + 1
    finally:
        allowed.close()


def test_counters(manifest, responders) -> None:
    r = responders[0]
    before = dict(r.counters)
    r.respond(query("example.", "SOA"), tcp=False)
    r.respond(b"\x00\x01", tcp=False)
    assert r.counters["queries"] == before["queries"] + 2
    assert r.counters["responses"] == before["responses"] + 1
    assert r.counters["dropped"] == before["dropped"] + 1
    assert r.counters["NOERROR"] == before["NOERROR"] + 1
