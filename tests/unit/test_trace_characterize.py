"""The ISC characterisation against tshark's reading of the same captures."""

from __future__ import annotations

import json
import struct
import subprocess
from collections import Counter
from pathlib import Path

import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from datasets.gen_trace import TraceParams, generate
from zoneslice.slicing import SlicePlan
from zoneslice.trace.characterize import characterize, percentile
from zoneslice.trace.pcap import DnsRecord
from zoneslice.trace.plot import latency_cdf, rate_plot
from zoneslice.trace.wire import edns_of_query, name_text, name_wire, question, read_name

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "pcaps"
FILES = [
    "dns.pcap",
    "dns6.pcap",
    "dnso1tcp.pcap",
    "dnsotcp-many1pkt.pcap",
    "edns.pcap",
    "frags.pcap",
    "sll2.pcap",
    "vlan11.pcap",
]


def _tshark_summary(path: Path) -> dict[str, Counter]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "dns",
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "dns.flags.response",
            "-e",
            "dns.qry.type",
            "-e",
            "dns.flags.rcode",
            "-e",
            "dns.flags.recdesired",
            "-e",
            "dns.flags.opcode",
            "-e",
            "tcp.srcport",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    s: dict[str, Counter] = {k: Counter() for k in ("qtypes", "rcodes", "opcodes", "n")}
    for line in out.splitlines():
        qr, qt, rc, rd, op, tcp = line.split(";")
        rcodes = iter(rc.split(",")) if rc else iter(())
        for r, t, d, o in zip(
            qr.split(","), qt.split(","), rd.split(","), op.split(","), strict=True
        ):
            if r == "1":
                s["n"]["responses"] += 1
                s["rcodes"][dns.rcode.to_text(int(next(rcodes)))] += 1
            else:
                s["n"]["queries"] += 1
                s["n"]["rd"] += d == "1"
                s["n"]["tcp"] += bool(tcp)
                s["qtypes"][dns.rdatatype.to_text(int(t))] += 1
                s["opcodes"][dns.opcode.to_text(int(o))] += 1
    return s


@pytest.mark.parametrize("name", FILES)
def test_matches_tshark(name) -> None:
    c = characterize(PCAPS / name)
    t = _tshark_summary(PCAPS / name)
    assert c.queries == t["n"]["queries"] and c.responses == t["n"]["responses"]
    assert c.rd == t["n"]["rd"] and c.tcp == t["n"]["tcp"]
    assert {r.qtype: r.count for r in c.qtypes} == dict(t["qtypes"])
    assert c.rcodes == dict(t["rcodes"]) and c.opcodes == dict(t["opcodes"])
    json.dumps(c.to_dict(series=True))


def test_edns_capture_report() -> None:
    c = characterize(PCAPS / "edns.pcap")
    assert (c.queries, c.responses, c.answered, c.failed) == (7, 7, 7, 1)
    assert c.failed_pct == pytest.approx(100 / 7, abs=0.01)
    assert c.edns == 3 and c.do == 0
    a = next(r for r in c.qtypes if r.qtype == "A")
    assert (a.count, a.answered, a.failed, a.failure_rate) == (4, 4, 1, 25.0)
    assert c.start.startswith("2023-07-05T07:21:38") and c.duration_s == pytest.approx(7.848664)
    assert c.rate == [3, 0, 0, 0, 3, 0, 0, 0, 1] and c.burst_max == 3 and c.burst_p95 == 3
    assert c.avg_rate == pytest.approx(7 / 7.848664, abs=1e-3)


def _rec(
    ts: float, wire: bytes, client: bytes = b"\x0a\x35\x00\x01", port: int = 1000, response=False
):
    if response:
        return DnsRecord(int(ts * 1e9), b"\x0a\x35\x00\x02", client, 53, port, "udp", wire)
    return DnsRecord(int(ts * 1e9), client, b"\x0a\x35\x00\x02", port, 53, "udp", wire)


def _wire(ident: int, flags: int, qname: str, qtype: int, opt: bytes = b"") -> bytes:
    return (
        struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if opt else 0)
        + name_wire(qname)
        + struct.pack("!HH", qtype, 1)
        + opt
    )


def test_matching_window_opcodes_and_slices() -> None:
    opt_do = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
    recs = [
        _rec(0.0, _wire(1, 0x0100, "a.com.", 1, opt_do)),
        _rec(0.5, _wire(1, 0x8103, "a.com.", 1), response=True),
        _rec(1.0, _wire(2, 0x2800, "com.", 6)),
        _rec(1.1, _wire(2, 0xA800, "COM.", 6), response=True),
        _rec(1.2, _wire(3, 0x0000, "zz.com.", 28)),
        _rec(30.0, _wire(3, 0x8000, "zz.com.", 28), response=True),
        _rec(30.5, _wire(4, 0x0000, "x.org.", 1)),
        _rec(30.6, b"\x00\x05\x00\x00\x00\x01"),
    ]
    plan = SlicePlan.from_bounds_text("com.", ["", "m"])
    c = characterize(recs, plan=plan, match_window=10)
    assert c.queries == 5 and c.responses == 3 and c.answered == 2 and c.unmatched_responses == 1
    assert c.failed == 1 and c.failed_pct == 50.0
    assert c.opcodes == {"QUERY": 3, "UPDATE": 1} and c.malformed == 1
    assert c.rcodes == {"NXDOMAIN": 1, "NOERROR": 2}
    assert c.slices == {0: 2, 1: 1} and c.outside_zone == 1
    assert c.edns == 1 and c.do == 1 and c.rd == 1
    assert c.rate[:2] == [1, 2] and c.rate[30] == 2 and c.burst_max == 2 and len(c.rate) == 31


def test_wire_helpers() -> None:
    w = _wire(7, 0x0100, "Www.Example.COM.", 1)
    q = question(w)
    assert q.qname == b"\x03www\x07example\x03com\x00" and q.qtype == 1 and q.id == 7 and not q.qr
    assert name_text(q.qname) == "www.example.com."
    comp = w[:12] + b"\x03www\xc0\x20" + b"\x00\x01\x00\x01" + b"\x00" * 3 + b"\x07example\x00"
    comp = comp[:32] + b"\x07example\x00"
    assert read_name(comp, 12) == (b"\x03www\x07example\x00", 18)
    assert read_name(b"\xc0\x00" * 8, 0) is None
    assert question(w[:20]) is None and question(b"\x00" * 12) is None
    assert edns_of_query(w, q) is None


def test_percentile() -> None:
    assert percentile([], 95) == 0
    assert percentile(list(range(1, 101)), 95) == 95 and percentile([5], 99.9) == 5


def test_generated_trace_matches_its_parameters(tmp_path) -> None:
    names = [name_wire(f"n{i}.com.") for i in range(500)]
    p = TraceParams(queries=20000, duration=120, seed=3, responses=True, clients=2000)
    s = generate(tmp_path / "t.pcap.gz", names, "com.", p)
    c = characterize(tmp_path / "t.pcap.gz")
    assert c.queries == 20000 == s.queries and c.responses == 20000 and c.answered == 20000
    assert c.failed == s.nonexistent + s.chaos
    assert 0.35 < s.nonexistent / s.queries < 0.41
    share = {r.qtype: r.share for r in c.qtypes if r.qclass == "IN"}
    assert 52 < share["A"] < 58 and 10 < share["AAAA"] < 16 and share["A6"] > 0 and share["ANY"] > 0
    assert 75 < c.rd_pct < 85 and 1 < c.tcp_pct < 3 and 55 < c.edns_pct < 65
    assert c.burst_max > c.avg_rate
    again = generate(tmp_path / "u.pcap", names, "com.", p)
    assert again.qtypes == s.qtypes and again.rd == s.rd
    gz = characterize(tmp_path / "u.pcap")
    assert gz.to_dict(series=True)["rate"] == c.to_dict(series=True)["rate"]


def test_plots(tmp_path) -> None:
    c = characterize(PCAPS / "dns.pcap")
    png = rate_plot(c.rate, tmp_path / "rate.png", start=c.rate_start)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = latency_cdf({"a": [0.1, 0.2, 5.0], "b": []}, tmp_path / "cdf.png")
    assert Path(png).stat().st_size > 5000
