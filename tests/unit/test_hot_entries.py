"""Hot entries learnt from the real engine on a small slice (no root, no BPF)."""

from __future__ import annotations

import random
import struct

import dns.message
import dns.name
import dns.rdatatype
import pytest

from datasets.gen_zone import generate_zone
from zoneslice.engine.query import Responder
from zoneslice.hot import entries as E
from zoneslice.manifest import load_manifest
from zoneslice.split import split_zone
from zoneslice.store.db import connect_readonly
from zoneslice.store.keys import key_name
from zoneslice.xdp import maps


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("hot-entries")
    generate_zone(d / "z.zone", delegations=300, seed=4)
    split_zone(d / "z.zone", 1, d / "s")
    db = load_manifest(d / "s").slice_path(0)
    conn = connect_readonly(db)
    origin = dns.name.from_text("com.")
    cuts = sorted(
        key_name(k, origin)
        for (k,) in conn.execute("SELECT DISTINCT rkey FROM rr WHERE rdtype = 2 AND rkey != x''")
    )
    conn.close()
    r = Responder(db)
    return (lambda w, client=None: r.respond(w, tcp=False)), cuts


def test_make_query_parses_and_keeps_case():
    q = E.make_query(b"\x03WwW\x03com\x00", 28, maps.V_EDNS_DO, qid=9, flags=0x0100, payload=1400)
    m = dns.message.from_wire(q)
    assert m.id == 9 and m.question[0].name.labels[0] == b"WwW"
    assert m.edns == 0 and m.payload == 1400 and m.ednsflags & 0x8000


def test_pointers_found_in_owners_and_rdata(engine):
    respond, cuts = engine
    q = E.make_query(cuts[0].to_wire(), 1)
    r = E.split_response(q, respond(q))
    ptrs = E.pointers(r.body, 0, sum(r.counts))
    assert ptrs and all(t >= 12 for _, t in ptrs)
    assert any(t == 12 for _, t in ptrs), "NS owner points at the question name"


def test_delegation_entry_renders_the_engines_answer_for_any_name_below(engine):
    respond, cuts = engine
    b = E.EntryBuilder(respond)
    rnd = random.Random(3)
    for cut in cuts[:25]:
        ents = b.delegation(cut)
        assert [e.variant for e in ents] == list(maps.VARIANTS), b.rejected
        for e in ents:
            assert e.value.deleg_len == len(cut.to_wire())
            for prefix in (b"", b"\x01a", b"\x04mail\x03WwW"):
                qn = E.mixed_case(prefix + cut.to_wire(), rnd)
                q = E.make_query(
                    qn,
                    rnd.choice([1, 28, 15, 16]),
                    e.variant,
                    qid=rnd.randrange(65536),
                    flags=0x0110,
                )
                qend = len(qn) + 16
                assert e.value.render(q[:12], q[12:qend], len(prefix)) == respond(q)


def test_exact_entries_copy_rd_and_refuse_non_referrals(engine):
    respond, cuts = engine
    b = E.EntryBuilder(respond)
    soa = b.exact(dns.name.from_text("com."), dns.rdatatype.SOA)
    assert len(soa) == 3
    assert all(e.value.copy_mask & 0x0100 for e in soa), "the engine echoes RD"
    assert all(e.value.flags & 0x8400 == 0x8400 for e in soa), "QR and AA"
    assert b.delegation(dns.name.from_text("com.")) == []
    assert b.rejected.get("not a referral") == 3


def test_split_response_rejects_truncated_and_foreign_answers():
    q = E.make_query(b"\x01a\x00", 1)
    with pytest.raises(E.NotCacheable):
        E.split_response(q, None)
    tc = q[:2] + struct.pack("!H", 0x8200) + q[4:]
    with pytest.raises(E.NotCacheable, match="TC"):
        E.split_response(q, tc)
    other = q[:2] + struct.pack("!H", 0x8000) + q[4:12] + b"\x01b\x00\x00\x01\x00\x01"
    with pytest.raises(E.NotCacheable, match="echo"):
        E.split_response(q, other)
