"""Replay against real NSD instances on loopback (one per slice, plus a reference)."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import pytest

from datasets.gen_trace import TraceParams, generate, names_from_zone
from zoneslice.demo import stop_servers
from zoneslice.slicing import SlicePlan
from zoneslice.trace.characterize import characterize
from zoneslice.trace.partition import load_plan, partition, routed_queries
from zoneslice.trace.pcap import CaptureReader
from zoneslice.trace.replay import compare, replay, replay_compare, replay_dnsperf, write_plots

ORIGIN = "example."
BOUNDS = ["", "h", "p"]
CHANGED = "kite"


def _labels() -> list[str]:
    rng = random.Random(11)
    out = {CHANGED}
    while len(out) < 400:
        out.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))))
    return sorted(out)


def write_zone(path: Path, labels: list[str], *, changed: bool = False) -> Path:
    """Delegations with glue and a few host names: referrals, answers and NXDOMAIN."""
    lines = [
        "$ORIGIN example.",
        "$TTL 300",
        "@ SOA ns1.example. hostmaster.example. 1 3600 600 86400 300",
        "@ NS ns1.example.",
        "ns1 A 10.53.0.1",
    ]
    for i, label in enumerate(labels):
        if i % 4 == 0:
            lines.append(f"{label} A 10.53.1.{i % 250 + 1}")
            lines.append(f"{label} MX 10 mail.{label}")
            lines.append(f"mail.{label} A 10.53.2.{i % 250 + 1}")
        else:
            ns = "ns9" if changed and label == CHANGED else "ns1"
            lines.append(f"{label} NS {ns}.{label}")
            lines.append(f"{ns}.{label} A 10.53.3.{i % 250 + 1}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _delegations(zone: Path) -> list[bytes]:
    """Names at or below delegations: every query for them gets a referral, never NXDOMAIN."""
    names = names_from_zone(zone, dns.name.from_text(ORIGIN))
    cut = {
        line.split()[0]
        for line in zone.read_text().splitlines()
        if " NS " in line and line[0] != "@"
    }
    return [n for n in names if n[1 : 1 + n[0]].decode() in cut]


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Nsd:
    """One NSD serving one zone file from its own directory, started for real."""

    def __init__(self, workdir: Path, zonefile: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        shutil.copy(zonefile, self.dir / "zone.db")
        conf = f"""server:
  ip-address: 127.0.0.1@{self.port}
  username: ""
  chroot: ""
  zonesdir: "{self.dir}"
  pidfile: "{self.dir}/nsd.pid"
  database: ""
  xfrdfile: "{self.dir}/xfrd.state"
  zonelistfile: "{self.dir}/zone.list"
  xfrdir: "{self.dir}"
  logfile: "{self.dir}/nsd.log"
  server-count: 1
  rrl-ratelimit: 0
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: {ORIGIN}
  zonefile: zone.db
"""
        (self.dir / "nsd.conf").write_text(conf)
        self.proc = subprocess.Popen(
            ["nsd", "-d", "-c", str(self.dir / "nsd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        q = dns.message.make_query(ORIGIN, "SOA")
        deadline = time.monotonic() + 15
        while True:
            try:
                dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (
                        (self.dir / "nsd.log").read_text()
                        if (self.dir / "nsd.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"nsd did not start: {log}") from None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        stop_servers([self.proc])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three slice servers (NSD on the whole zone), a reference whose zone differs in one delegation."""
    if shutil.which("nsd") is None:
        pytest.fail("nsd is not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("replay")
    labels = _labels()
    zone = write_zone(tmp / "example.zone", labels)
    refzone = write_zone(tmp / "ref.zone", labels, changed=True)
    started: list[Nsd] = []
    try:
        for i in range(3):
            started.append(Nsd(tmp / f"nsd{i}", zone))
        ref = Nsd(tmp / "ref", refzone)
        started.append(ref)
        names = _delegations(zone)
        params = TraceParams(queries=3000, duration=2.0, seed=5, clients=300, tcp=0.03)
        summary = generate(tmp / "trace.pcap", names, ORIGIN, params)
        yield {
            "tmp": tmp,
            "servers": {i: started[i].addr for i in range(3)},
            "ref": ref.addr,
            "trace": tmp / "trace.pcap",
            "summary": summary,
            "plan": SlicePlan.from_bounds_text(ORIGIN, BOUNDS),
            "nsd": started,
        }
    finally:
        for n in started:
            n.stop()
    for n in started:
        assert n.proc.poll() is not None


def _expected(world) -> tuple[Counter[int], Counter[str]]:
    skipped: Counter[str] = Counter()
    per_slice = Counter(q.slice for q in routed_queries(world["trace"], world["plan"], skipped))
    return per_slice, skipped


def test_closed_loop_answers_everything_per_slice(world) -> None:
    per_slice, _ = _expected(world)
    seen = []
    r = replay(
        world["trace"],
        world["plan"],
        world["servers"],
        mode="closed-loop",
        outstanding=20,
        timeout=2.0,
        progress=seen.append,
    )
    s = world["summary"]
    assert r.sent == sum(per_slice.values()) == s.queries - s.chaos
    assert r.answered == r.sent and r.lost == 0 and not r.interrupted
    assert {x.slice: x.sent for x in r.slices} == dict(per_slice)
    assert all(x.answered == x.sent for x in r.slices)
    assert r.rcodes["NXDOMAIN"] == s.nonexistent
    assert r.skipped["outside_zone"] == s.chaos
    assert (
        r.latency_ms["p50"] is not None
        and r.latency_ms["p50"] <= r.latency_ms["p99"] <= r.latency_ms["max"]
    )
    assert sum(r.answered_per_second) == r.answered
    assert json.loads(json.dumps(r.to_dict()))["answered"] == r.answered


def test_closed_loop_window_is_per_slice(world, tmp_path) -> None:
    """A silent server: with 5 outstanding and 0.2 s timeout, 20 queries take 4 rounds."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        servers = dict(world["servers"])
        servers[1] = silent.getsockname()
        r = replay(world["trace"], world["plan"], servers, outstanding=5, timeout=0.2, limit=200)
        one = next(x for x in r.slices if x.slice == 1)
        assert one.lost == one.sent > 5 and one.answered == 0
        rounds = -(-one.sent // 5)
        assert r.elapsed_s >= 0.2 * rounds * 0.95
        received = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recv(4096)
                received += 1
            except BlockingIOError:
                break
        assert received == one.sent
        others = [x for x in r.slices if x.slice != 1]
        assert all(x.answered == x.sent for x in others)
    finally:
        silent.close()


def test_timed_keeps_the_schedule(world) -> None:
    per_slice, _ = _expected(world)
    r = replay(
        world["trace"], world["plan"], world["servers"], mode="timed", speed=2.0, timeout=1.0
    )
    span = (world["summary"].last_ts - world["summary"].first_ts) / 2.0
    assert r.answered == r.sent == sum(per_slice.values())
    assert span <= r.elapsed_s < span + 1.5
    assert r.timing_error_us is not None and r.timing_error_us["p50"] < 1000
    # p90, not p99: on the shared 2-CPU box the sender is descheduled now and then;
    # the strict p99 bound is the slow test's
    assert r.timing_error_us["p90"] < 5000


def test_timed_10k_qps_timing_error(world) -> None:
    """10 000 queries/s for 1.5 s; the schedule error is reported (p99 < 1 ms when the box is idle)."""
    tmp = world["tmp"]
    names = _delegations(tmp / "example.zone")
    generate(
        tmp / "fast.pcap",
        names,
        ORIGIN,
        TraceParams(queries=15000, duration=1.5, seed=9, chaos=0, bursts_per_hour=0, diurnal=0),
    )
    r = replay(tmp / "fast.pcap", world["plan"], world["servers"], mode="timed", timeout=1.0)
    print("timing error (us):", r.timing_error_us, "answered", r.answered, "of", r.sent)
    assert r.sent == 15000
    assert r.answered >= 0.99 * r.sent
    t = r.timing_error_us
    assert 0 <= t["p50"] <= t["p90"] <= t["p99"] <= t["max"] < 1e6
    # Most queries leave within 1 ms of their time. The tail depends on the host: one
    # CI run on a loaded 2-vCPU machine had p90 7.5 ms (34 ms max) where an idle one
    # has p90 30-40 us; the 1 ms p99 check is the slow test below.
    assert t["p50"] < 1000 and t["over_1ms_pct"] < 50


def test_cancel_and_ctrl_c_give_partial_reports(world) -> None:
    cancel = threading.Event()

    def stop_early(p) -> None:
        if p.sent > 200:
            cancel.set()

    r = replay(
        world["trace"],
        world["plan"],
        world["servers"],
        mode="timed",
        progress=stop_early,
        cancel=cancel,
    )
    assert r.interrupted and 200 < r.sent < 2990
    assert r.answered + r.lost + r.unanswered == r.sent

    def interrupt(p) -> None:
        if p.sent > 100:
            raise KeyboardInterrupt

    r = replay(world["trace"], world["plan"], world["servers"], mode="timed", progress=interrupt)
    assert r.interrupted and 100 < r.sent < 2990
    assert r.answered + r.lost + r.unanswered == r.sent


def test_compare_finds_exactly_the_changed_delegation(world, tmp_path) -> None:
    c = replay_compare(
        world["trace"], world["plan"], world["servers"], world["ref"], outstanding=20
    )
    changed = b"\x04" + CHANGED.encode() + b"\x07example\x00"
    expected = sum(
        1
        for q in routed_queries(world["trace"], world["plan"], Counter())
        if q.qname.endswith(changed)
    )
    assert expected > 0
    assert c.different == expected
    assert c.compared == c.a.answered == c.b.answered
    assert c.identical == c.compared - expected
    assert all(e.qname.endswith(f"{CHANGED}.example.") for e in c.examples)
    assert all("authority" in e.differs_in or "answer" in e.differs_in for e in c.examples)
    same = compare(c.a, c.a)
    assert same.different == 0
    pngs = write_plots(c, tmp_path / "cmp")
    assert all(Path(p).stat().st_size > 5000 for p in pngs)


def test_partition_and_dnsperf(world, tmp_path) -> None:
    per_slice, _ = _expected(world)
    parts = partition(world["trace"], world["plan"], tmp_path / "parts")
    assert parts.counts == {i: per_slice[i] for i in range(3)}
    lines = Path(parts.files[0]).read_text().splitlines()
    assert len(lines) == per_slice[0]
    name, qtype = lines[0].split()
    assert name.endswith(".example.") and qtype.isalnum()
    r = replay_dnsperf(
        world["trace"], world["plan"], world["servers"], tmp_path / "dp", outstanding=20
    )
    assert r.engine == "dnsperf"
    assert r.sent == sum(per_slice.values()) and r.answered == r.sent
    assert r.rcodes["NXDOMAIN"] == world["summary"].nonexistent


def test_characterize_generated_trace(world, tmp_path) -> None:
    s = world["summary"]
    c = characterize(world["trace"], plan=world["plan"])
    assert (
        c.queries == s.queries
        and c.tcp == s.tcp
        and c.rd == s.rd
        and c.edns == s.edns
        and c.do == s.do
    )
    assert c.outside_zone == s.chaos
    per_slice, _ = _expected(world)
    assert c.slices == dict(per_slice)
    assert c.burst_max >= c.burst_p95 >= 1
    assert {r.qtype: r.count for r in c.qtypes if r.qclass == "IN"} == {
        k: v for k, v in s.qtypes.items() if v
    }
    tcp = sum(1 for r in CaptureReader(world["trace"]) if r.transport == "tcp")
    assert tcp == s.tcp


def test_manifest_plan(tmp_path) -> None:
    m = {
        "format": "zoneslice-manifest/1",
        "origin": "com.",
        "serial": 1,
        "parts": 3,
        "by": "label",
        "dnssec": None,
        "source": {},
        "records_in": 0,
        "lookup": {"rule": "x", "bounds": ["", "f", "n"]},
        "slices": [],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    plan = load_plan(tmp_path)
    assert (
        plan.slice_for("example.com.") == 0
        and plan.slice_for("fun.com.") == 1
        and plan.slice_for("z.com.") == 2
    )


@pytest.mark.slow
def test_timed_10k_qps_p99_under_1ms(world) -> None:
    """The issue's figure: 10 000 queries/s for 10 s, send-time error under 1 ms at p99."""
    tmp = world["tmp"]
    generate(
        tmp / "10k.pcap",
        _delegations(tmp / "example.zone"),
        ORIGIN,
        TraceParams(queries=100_000, duration=10.0, seed=10, chaos=0, bursts_per_hour=0, diurnal=0),
    )
    r = replay(tmp / "10k.pcap", world["plan"], world["servers"], mode="timed", timeout=1.0)
    print(
        "10k qps timed:",
        r.timing_error_us,
        "answered",
        r.answered,
        "of",
        r.sent,
        "in",
        r.elapsed_s,
        "s",
    )
    assert r.sent == 100_000 and r.answered >= 0.999 * r.sent
    assert r.timing_error_us["p99"] < 1000
