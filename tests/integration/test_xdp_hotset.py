"""Hot set from a trace: counts per slice, folded by delegation, loaded, refreshed, kept coherent."""

from __future__ import annotations

import random
from collections import Counter

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

        # refresh: a smaller top evicts what fell out, and the evicted entries stop answering
        before = set(hot.hotset.loaded)
        st = hot.refresh(counts[1], 50)
        assert st["evicted"] > 0 and len(hot.hotset.loaded) <= 50
        gone = next(iter(before - set(hot.hotset.loaded)))
        name = dns.name.from_wire(gone[1], 0)[0]
        q = E.make_query(name.to_wire(), gone[2] or 1, 0)
        res = testrun.run(hot.path.prog_fd, frames.udp_frame(CLIENT4, SERVER4, 33000, 53, q))
        assert res.action == testrun.XDP_PASS
