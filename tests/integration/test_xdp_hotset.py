"""Hot set from a trace: counts per slice, folded by delegation, loaded, refreshed, kept coherent."""

from __future__ import annotations

import random
from collections import Counter

import dns.message
import dns.name
import pytest
from xdp_common import CLIENT4, SERVER4, check_result, engine_respond, require_bpf

from datasets.gen_trace import TraceParams, generate, names_from_manifest
from datasets.gen_zone import generate_zone
from zoneslice.hot import entries as E
from zoneslice.hot.hotset import count_queries, read_counts, write_counts
from zoneslice.hot.serving import hot_path
from zoneslice.manifest import load_manifest
from zoneslice.split import split_zone
from zoneslice.trace.partition import routed_queries
from zoneslice.xdp import frames, testrun

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("xdp-hot")
    generate_zone(d / "z.zone", delegations=1500, seed=21)
    split_zone(d / "z.zone", 2, d / "s")
    man = load_manifest(d / "s")
    origin, names = names_from_manifest(d / "s")
    generate(d / "t.pcap", names, origin, TraceParams(queries=6000, duration=60, seed=3))
    skipped: Counter = Counter()
    counts = count_queries(
        (q.slice, q.qname, q.qtype) for q in routed_queries(d / "t.pcap", man.plan, skipped)
    )
    write_counts(d / "hot.json", counts)
    return d, man, counts


def test_counts_file_round_trip(setup):
    d, man, counts = setup
    assert set(counts) == {0, 1}
    back = read_counts(d / "hot.json", 1)
    assert back == counts[1]


def test_hot_path_loads_the_top_and_answers_the_trace(setup):
    require_bpf()
    d, man, counts = setup
    db = man.slice_path(1)
    respond = engine_respond(db)
    with hot_path(db, None, top=200, counts=d / "hot.json", slice_index=1) as hot:
        s = hot.hotset.summary()
        assert s["delegations"] >= 100 and s["exact"] > 0, s
        assert hot.stats["loaded"] == s["keys"]
        # every query of the trace for slice 1: PASS or the engine's answer; most answered
        rnd = random.Random(1)
        verdicts: Counter = Counter()
        for (qname, qtype), _n in counts[1].most_common(400):
            q = E.make_query(
                E.mixed_case(qname, rnd), qtype, rnd.randrange(3), qid=rnd.randrange(65536)
            )
            fr = frames.udp_frame(CLIENT4, SERVER4, 33000, 53, q)
            res = testrun.run(hot.path.prog_fd, fr)
            verdicts[res.name] += 1
            assert check_result(fr, res, respond) is None
        assert verdicts["XDP_TX"] > verdicts["XDP_PASS"], verdicts

        # coherence bookkeeping: a change at a cut's glue touches that cut's entry
        key = next(k for k in hot.hotset.loaded if k[0] == "deleg")
        cut = dns.name.from_wire(key[1], 0)[0]
        aff = hot.hotset.affected([dns.name.from_text("ns1", cut)])
        assert key in aff and len(aff) < len(hot.hotset.loaded)
        assert hot.on_update([dns.name.from_text("ns1", cut)]) == len(aff)
        assert key in hot.hotset.loaded
        # every commit touches the apex (SOA): that must not relearn every referral
        apex_aff = hot.hotset.affected([hot.origin])
        assert not any(k[0] == "deleg" for k in apex_aff)
        assert all(k[1] == hot.origin.to_wire() or hot.hotset.loaded[k].denial for k in apex_aff), (
            apex_aff
        )
        assert key in hot.hotset.affected([dns.name.from_text("*", cut)])
        assert set(hot.hotset.affected(None)) == set(hot.hotset.loaded)

        # refresh: a smaller top evicts what fell out, and the evicted entries stop answering
        before = set(hot.hotset.loaded)
        st = hot.refresh(counts[1], 50)
        assert st["evicted"] > 0 and len(hot.hotset.loaded) <= 50
        gone = next(iter(before - set(hot.hotset.loaded)))
        name = dns.name.from_wire(gone[1], 0)[0]
        q = E.make_query(name.to_wire(), gone[2] or 1, 0)
        res = testrun.run(hot.path.prog_fd, frames.udp_frame(CLIENT4, SERVER4, 33000, 53, q))
        assert res.action == testrun.XDP_PASS


def test_refresh_racing_commits_never_leaves_a_stale_entry(tmp_path):
    """A writer process commits glue changes while the parent keeps re-ranking (and so
    learning new keys outside the lock): after each commit's hook, the program answers
    every delegation as the engine does now, or passes it up."""
    import os

    import dns.update

    from zoneslice.engine.query import Responder
    from zoneslice.updates.queue import UpdateQueue

    require_bpf()
    generate_zone(tmp_path / "z.zone", delegations=400, seed=5)
    db = split_zone(tmp_path / "z.zone", 1, tmp_path / "whole").manifest.slice_path(0)
    cuts, glue = [], {}
    for line in (tmp_path / "z.zone").read_text().splitlines():
        owner, _, _, rtype, *rest = line.split()
        if rtype == "NS" and owner != "com." and rest[0].endswith("." + owner):
            if owner not in glue:
                cuts.append(owner)
            glue[owner] = rest[0]
    a, b = cuts[:20], cuts[20:40]
    sets = [Counter({(dns.name.from_text(c).to_wire(), 1): 50 for c in s}) for s in (a, b)]
    with hot_path(db, None, top=10) as hot:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer
            code = 1
            try:
                os.close(rfd)
                queue = UpdateQueue(db, on_commit=hot.on_update)
                engine = Responder(db)
                bad = []
                for i in range(60):
                    cut = (a + b)[i % 40]
                    up = dns.update.UpdateMessage("com.")
                    up.replace(glue[cut], 300, "A", f"10.53.97.{i % 250}")
                    assert queue.apply(up, up.to_wire()).rcode == 0
                    engine.invalidate(None)
                    for other in a + b:  # a stale entry may also be installed after the hook
                        q = E.make_query(b"\x03www" + dns.name.from_text(other).to_wire(), 1, i % 3)
                        fr = frames.udp_frame(CLIENT4, SERVER4, 33000, 53, q)
                        why = check_result(
                            fr,
                            testrun.run(hot.path.prog_fd, fr),
                            lambda w, c=None: engine.respond(w, tcp=False),
                        )
                        if why:
                            bad.append(f"after commit {i}, {other}: {why}")
                os.write(wfd, ("\n".join(bad) or "ok").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        rounds = 0
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                hot.refresh(sets[rounds % 2], 20)  # swaps the 20 keys each round
                rounds += 1
        finally:
            out = os.read(rfd, 1 << 20).decode()
            os.close(rfd)
        assert out == "ok", out
        assert rounds >= 2, "the refreshes did not overlap the commits"
        assert hot.refreshes == rounds


def test_negative_answers_follow_each_commit(tmp_path):
    """NXDOMAIN entries (SOA only) get the new serial patched in after a plain commit, and
    are relearnt when the SOA's timers change or an apex wildcard makes them NODATA: each
    time, every variant the program sends is the engine's answer."""
    import dns.update

    from zoneslice.engine.query import Responder
    from zoneslice.updates.queue import UpdateQueue

    require_bpf()
    generate_zone(tmp_path / "z.zone", delegations=200, seed=6)
    db = split_zone(tmp_path / "z.zone", 1, tmp_path / "whole").manifest.slice_path(0)
    nx = [dns.name.from_text(f"zz-nx{i}.com.") for i in range(15)]
    counts = Counter({(n.to_wire(), 1): 10 for n in nx})
    counts[(b"\x03com\x00", 6)] = 20
    write_counts(tmp_path / "hot.json", {0: counts})
    with hot_path(db, None, top=50, counts=tmp_path / "hot.json", slice_index=0) as hot:
        assert all(hot.hotset.loaded[("exact", n.to_wire(), 1)].soa_only for n in nx)
        queue = UpdateQueue(db, on_commit=hot.on_update)
        engine = Responder(db)

        def check(step: str) -> None:
            engine.invalidate(None)
            for name in [*nx, dns.name.from_text("com.")]:
                for v in range(3):
                    qt = 6 if name == dns.name.from_text("com.") else 1
                    fr = frames.udp_frame(
                        CLIENT4, SERVER4, 33000, 53, E.make_query(name.to_wire(), qt, v, qid=9)
                    )
                    res = testrun.run(hot.path.prog_fd, fr)
                    assert res.action == testrun.XDP_TX, (step, name)
                    why = check_result(fr, res, lambda w, c=None: engine.respond(w, tcp=False))
                    assert why is None, (step, name, why)

        soa = engine.respond(E.make_query(b"\x03com\x00", 6), tcp=False)
        check("start")
        up = dns.update.UpdateMessage("com.")
        up.add("zz-new.com.", 300, "TXT", "x")
        assert queue.apply(up, up.to_wire()).rcode == 0
        check("serial only")
        old = dns.message.from_wire(soa).answer[0][0]
        up = dns.update.UpdateMessage("com.")
        up.replace("com.", 900, "SOA", old.replace(serial=old.serial + 10, minimum=60).to_text())
        assert queue.apply(up, up.to_wire()).rcode == 0
        check("SOA timers")
        up = dns.update.UpdateMessage("com.")
        up.add("*.com.", 300, "TXT", "wild")
        assert queue.apply(up, up.to_wire()).rcode == 0
        check("apex wildcard")
        engine.invalidate(None)
        nodata = dns.message.from_wire(engine.respond(E.make_query(nx[0].to_wire(), 1), tcp=False))
        assert nodata.rcode() == 0 and not nodata.answer  # the wildcard turned it into NODATA
