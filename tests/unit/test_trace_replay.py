"""Replay pieces that need no server: answer comparison, dnsperf output, summaries."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest

from zoneslice.errors import TraceError
from zoneslice.slicing import SlicePlan
from zoneslice.trace.replay import ReplayReport, compare, latency_summary, parse_dnsperf, replay

DNSPERF_OUT = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5300 -d q -q 20 -t 2 -n 1
[Status] Testing complete (end of file)

Statistics:

  Queries sent:         1190
  Queries completed:    1188 (99.83%)
  Queries lost:         2 (0.17%)

  Response codes:       NOERROR 740 (62.29%), NXDOMAIN 448 (37.71%)
  Average packet size:  request 36, response 95
  Run time (s):         0.052880
  Queries per second:   22466.717095

  Average Latency (s):  0.000817 (min 0.000041, max 0.003398)
  Latency StdDev (s):   0.000421
"""


def test_parse_dnsperf() -> None:
    s = parse_dnsperf(DNSPERF_OUT)
    assert (s["sent"], s["answered"], s["lost"]) == (1190, 1188, 2)
    assert s["rcodes"] == {"NOERROR": 740, "NXDOMAIN": 448}
    assert s["qps"] == pytest.approx(22466.717095)
    assert s["latency_ms"]["mean"] == pytest.approx(0.817) and s["latency_ms"][
        "max"
    ] == pytest.approx(3.398)


def test_latency_summary() -> None:
    assert latency_summary([])["p50"] is None
    s = latency_summary(list(range(1, 1001)))
    assert (s["p50"], s["p90"], s["p99"], s["p99.9"], s["max"]) == (0.5, 0.9, 0.99, 0.999, 1.0)


def _report(label: str, answers: dict[int, bytes]) -> ReplayReport:
    return ReplayReport(
        label,
        "python",
        "timed",
        1.0,
        20,
        1.0,
        "",
        1.0,
        len(answers),
        len(answers),
        0,
        0,
        1.0,
        1.0,
        {},
        {},
        [],
        {},
        {},
        None,
        False,
        answers=answers,
        questions={i: (b"\x01a\x03com\x00", 1) for i in answers},
    )


def _answer(
    ident: int, *, rcode: int = 0, rrs=(("a.com.", "A", ["10.53.0.1", "10.53.0.2"]),), order=1
):
    q = dns.message.make_query("a.com.", "A")
    r = dns.message.make_response(q)
    r.id = ident
    r.set_rcode(rcode)
    for name, rdtype, rdatas in rrs:
        r.answer.append(dns.rrset.from_text(name, 300, "IN", rdtype, *rdatas[::order]))
    return r.to_wire()


def test_compare_ignores_id_and_rr_order_but_not_content() -> None:
    a = _report("a", {0: _answer(1), 1: _answer(2), 2: _answer(3), 3: _answer(4)})
    b = _report(
        "b",
        {
            0: _answer(99),
            1: _answer(98, order=-1),
            2: _answer(97, rcode=dns.rcode.NXDOMAIN, rrs=()),
            5: _answer(1),
        },
    )
    c = compare(a, b)
    assert (c.compared, c.identical, c.different, c.only_a, c.only_b) == (3, 2, 1, 1, 1)
    e = c.examples[0]
    assert e.seq == 2 and e.qname == "a.com." and e.qtype == "A"
    assert (
        set(e.differs_in) == {"rcode", "answer"}
        and e.a.startswith("NOERROR")
        and e.b.startswith("NXDOMAIN")
    )


def test_bad_arguments() -> None:
    plan = SlicePlan.from_bounds_text("com.", [""])
    with pytest.raises(TraceError):
        replay([], plan, {0: ("127.0.0.1", 9)}, mode="warp")
    with pytest.raises(TraceError):
        replay([], plan, {0: ("127.0.0.1", 9)}, outstanding=0)
    r = replay([], plan, {0: ("127.0.0.1", 9)}, mode="timed")
    assert r.sent == 0 and not r.interrupted
