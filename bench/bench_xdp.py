"""Benchmark: zoneslice with its XDP hot path vs without, vs Knot DNS in XDP mode, vs NSD.

Usage (root: namespaces, BPF)::

    .venv/bin/python bench/bench_xdp.py [--delegations 20000] [--hot 2000] [--duration 5]

One run on this machine. A .com-like zone (datasets.gen_zone) in one slice;
two query files for kxdpgun (Knot's AF_XDP generator, client namespace, over a
veth): (a) hot only -- names at and below the hot delegations, A/AAAA/NS/MX,
plain, EDNS and DO; (b) the TLD-like mix of bench_engine.write_queries (Zipf
popularity, ~38 % nonexistent names, F-root type mix) with the same EDNS
split. The hot set is the ``--hot`` most queried keys of each file (names below
a cut fold into the cut). Each server answers in the server namespace with one
worker: zoneslice (engine only), zoneslice + XDP (native mode on the server
veth; kxdpgun's own XDP program on the client end lets XDP_TX frames arrive),
Knot DNS (``xdp: listen: IFACE@53``), NSD (``rrl-ratelimit: 0``). kxdpgun
first runs at a saturating rate (answered/s = the ceiling); zoneslice + XDP is
then run again at 2x Knot's hot-only ceiling and 1.5x NSD's mix ceiling to
check the targets and the loss at that rate.

Also printed: the program's cost per packet from BPF_PROG_TEST_RUN (median of
single runs minus the median for a non-IP frame, which measures the harness;
and ``repeat`` over one unchanged buffer for the pass path).
Results: stdout and ``<workdir>/results.json``.

``--counting-cost`` measures only what the workers' live (qname, qtype) counting
(zoneslice.hot.live, used by ``serve --xdp`` to re-rank the hot set) costs the
engine: server CPU time per answered query at a fixed dnsperf rate, with and
without it, alternated three times.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dns.name  # noqa: E402
import dns.rdatatype  # noqa: E402

from bench._common import build_slices, log  # noqa: E402
from tests.netns import netns, require_netns, veth  # noqa: E402
from tests.nsd import nsd_config  # noqa: E402
from zoneslice.demo import stop_servers  # noqa: E402
from zoneslice.engine.server import Background  # noqa: E402
from zoneslice.hot import entries as E  # noqa: E402
from zoneslice.hot.hotset import write_counts  # noqa: E402
from zoneslice.hot.serving import hot_path  # noqa: E402
from zoneslice.manifest import load_manifest  # noqa: E402
from zoneslice.store.db import connect_readonly  # noqa: E402
from zoneslice.store.keys import key_name  # noqa: E402
from zoneslice.xdp import frames, testrun  # noqa: E402
from zoneslice.xdp.loader import HotPath, Options, in_netns  # noqa: E402

SRV, CLI = "10.53.252.1", "10.53.252.2"
SATURATE = 1_000_000


# ------------------------------------------------------------------ data


def build(work: Path, delegations: int, seed: int) -> tuple[Path, Path]:
    zone, slices = build_slices(work, delegations, seed, parts=1)
    return zone, load_manifest(slices).slice_path(0)


def cuts_of(slice_db: Path) -> list[dns.name.Name]:
    conn = connect_readonly(slice_db)
    origin = dns.name.from_text(
        conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()[0]
    )
    rows = conn.execute("SELECT DISTINCT rkey FROM rr WHERE rdtype = 2 AND rkey != x''").fetchall()
    conn.close()
    return [key_name(k, origin) for (k,) in rows]


def _flag(rnd: random.Random) -> str:
    u = rnd.random()
    return "" if u < 0.4 else (" E" if u < 0.6 else " D")


def hot_queries(cuts: list[dns.name.Name], hot: int, out: Path, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    chosen = cuts[:hot]
    with open(out, "w") as f:
        for _ in range(n):
            c = rnd.choice(chosen).to_text()
            q = rnd.choice([f"www.{c} A", f"{c} NS", f"mail.{c} AAAA", f"{c} MX", f"ns1.{c} A"])
            f.write(q + _flag(rnd) + "\n")


def mix_queries(slice_db: Path, out: Path, n: int, seed: int) -> None:
    from bench_engine import write_queries  # the project's TLD-like mix

    plain = out.with_suffix(".dnsperf")
    write_queries(slice_db, plain, n, seed)
    rnd = random.Random(seed)
    with open(plain) as src, open(out, "w") as f:
        for line in src:
            f.write(line.rstrip("\n") + _flag(rnd) + "\n")


def json_counts(path: Path) -> Counter:
    from zoneslice.hot.hotset import read_counts

    return read_counts(path, 0)


def counts_of(qfile: Path) -> dict[int, Counter]:
    c: Counter = Counter()
    for line in qfile.read_text().splitlines():
        name, qtype = line.split()[:2]
        c[(dns.name.from_text(name).canonicalize().to_wire(), dns.rdatatype.from_text(qtype))] += 1
    return {0: c}


# ------------------------------------------------------------------ servers


def _wait(cli: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = cli.run(["dig", "+tries=1", "+time=1", f"@{SRV}", "com.", "SOA"], check=False)
        if "status: NOERROR" in r.stdout:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


@contextmanager
def zoneslice(srv: Any, slice_db: Path) -> Iterator[None]:
    with in_netns(srv.name):
        server = Background(slice_db, [(SRV, 53)], workers=1)
    with server:
        yield


@contextmanager
def zoneslice_xdp(
    srv: Any, slice_db: Path, iface: str, counts: Path, hot: int, stats: dict
) -> Iterator[None]:
    with (
        zoneslice(srv, slice_db),
        hot_path(slice_db, iface, top=hot, counts=counts, mode="native", netns=srv.name) as h,
    ):
        stats.update(h.hotset.summary())
        stats["mode"] = h.path.attached_mode
        total = sum(json_counts(counts).values())
        stats["coverage"] = sum(v.count for v in h.hotset.loaded.values()) / total if total else 0.0
        yield
        after = h.path.counters()
        stats["xdp_counters"] = {k: v for k, v in after.items() if v}


@contextmanager
def knot(srv: Any, work: Path, zone: Path, iface: str) -> Iterator[None]:
    d = work / "knot"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "knot.conf").write_text(
        f"""server:
    rundir: "{d}"
    listen: {SRV}@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
xdp:
    listen: {iface}@53
    udp: on
log:
  - target: stderr
    any: warning
database:
    storage: "{d}"
template:
  - id: default
    storage: "{d}"
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: com.
    file: "{zone}"
"""
    )
    p = srv.popen(
        ["knotd", "-c", str(d / "knot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "log", "w"),
    )
    try:
        yield p
    finally:
        stop_servers([p], timeout=15)
        # Knot leaves its XDP program attached (its default load policy); this veth is ours.
        srv.run(["ip", "link", "set", "dev", iface, "xdp", "off"], check=False)


@contextmanager
def nsd(srv: Any, work: Path, zone: Path) -> Iterator[None]:
    d = work / "nsd"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nsd.conf").write_text(nsd_config(zone, "com.", d, SRV, 53))
    p = srv.popen(
        ["nsd", "-d", "-c", str(d / "nsd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "log", "w"),
    )
    try:
        yield p
    finally:
        stop_servers([p], timeout=15)


# ------------------------------------------------------------------ load


_TOTAL = re.compile(r"total queries:\s+(\d+)\s+\((\d+) pps\)")
_REPLIES = re.compile(r"total replies:\s+(\d+)\s+\((\d+) pps\)")


def kxdpgun(cli: Any, iface: str, qfile: Path, seconds: int, rate: int) -> dict[str, Any]:
    cmd = ["kxdpgun", "-t", str(seconds), "-Q", str(rate), "-i", str(qfile), "-I", iface, SRV]
    r = cli.run(cmd, check=False, timeout=seconds + 60)
    sent, replies = _TOTAL.search(r.stdout), _REPLIES.search(r.stdout)
    if not sent or not replies:
        raise RuntimeError(f"kxdpgun failed: {r.stdout[-400:]} {r.stderr[-400:]}")
    s, a = int(sent.group(1)), int(replies.group(1))
    return {
        "rate": rate,
        "sent": s,
        "answered": a,
        "answered_qps": a / seconds,
        "sent_qps": s / seconds,
        "loss": 1 - a / s if s else 0.0,
    }


# ------------------------------------------------------------------ per-packet cost


def program_cost(slice_db: Path, cuts: list[dns.name.Name], runs: int = 20000) -> dict[str, float]:
    from zoneslice.engine.query import Responder

    r = Responder(slice_db)
    b = E.EntryBuilder(lambda w, c=None: r.respond(w, tcp=False))
    ents = [e for c in cuts[:200] for e in b.delegation(c)]
    out: dict[str, float] = {}
    with HotPath(options=Options(addresses=[])) as hp:
        hp.load(E.packed(ents))
        cases = {
            "harness (non-IP frame)": b"\xff" * 12 + b"\x08\x06" + b"\0" * 46,
            "hot (XDP_TX, referral)": frames.udp_frame(
                CLI, SRV, 40000, 53, E.make_query(b"\x03www" + cuts[0].to_wire(), 1, 1, qid=7)
            ),
            "miss (XDP_PASS)": frames.udp_frame(
                CLI, SRV, 40000, 53, E.make_query(b"\x03www\x09nothere-x\x03com\x00", 1, 1, qid=7)
            ),
        }
        for name, fr in cases.items():
            out[f"{name} single-run median ns"] = statistics.median(
                testrun.run(hp.prog_fd, fr).duration_ns for _ in range(runs)
            )
        base = out["harness (non-IP frame) single-run median ns"]
        out["hot answer, program cost ns"] = (
            out["hot (XDP_TX, referral) single-run median ns"] - base
        )
        out["miss, program cost ns"] = out["miss (XDP_PASS) single-run median ns"] - base
        out["miss, repeat=1e6 average ns"] = testrun.run(
            hp.prog_fd, cases["miss (XDP_PASS)"], repeat=1_000_000
        ).duration_ns
    return out


# ------------------------------------------------------------------ live counting cost


def counting_cost(
    slice_db: Path, qfile: Path, work: Path, seconds: float, rounds: int, rate: int = 8000
) -> dict[str, Any]:
    """What the workers' live (qname, qtype) counting costs the engine: server CPU time per
    answered query at a fixed dnsperf rate (2 workers), with and without it, alternated
    ``rounds`` times (CPU per query is far less disturbed by other load than a ceiling)."""
    from bench_engine import dnsperf, ns_cpu

    from zoneslice.hot.live import counting_factory

    live = work / "live"
    live.mkdir(exist_ok=True)
    out: dict[str, Any] = {"rate": rate, "plain": [], "counting": []}
    with (
        netns("bcsrv") as srv,
        netns("bccli") as cli,
        veth(srv, cli, f"{SRV}/24", f"{CLI}/24"),
    ):
        for _ in range(rounds):
            for label, factory in (("plain", None), ("counting", counting_factory(None, live))):
                with in_netns(srv.name):
                    server = Background(slice_db, [(SRV, 53)], workers=2, responder_factory=factory)
                with server:
                    _wait(cli, label)
                    dnsperf(cli, SRV, 53, qfile, seconds, 16, 200, None, passes=1)  # warm caches
                    cpu = ns_cpu(srv)
                    r = dnsperf(cli, SRV, 53, qfile, seconds, 16, 200, rate)
                    cpu = ns_cpu(srv) - cpu
                us = 1e6 * cpu / max(1, r["answered"])
                out[label].append(round(us, 2))
                log(
                    f"  {label}: {us:.2f} us CPU per query ({r['answered']} answered, "
                    f"loss {100 * r['loss']:.2f} %)"
                )
    best = {k: min(out[k]) for k in ("plain", "counting")}
    out["cost_percent"] = round(100 * (best["counting"] / best["plain"] - 1), 2)
    return out


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delegations", type=int, default=20000)
    ap.add_argument("--hot", type=int, default=2000, help="hot keys loaded for the hot-only file")
    ap.add_argument(
        "--hot-mix", type=int, default=20000, help="hot keys loaded for the mix (top of its counts)"
    )
    ap.add_argument("--queries", type=int, default=100000, help="lines per query file")
    ap.add_argument("--duration", type=int, default=5, help="seconds per kxdpgun run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "bench-xdp"))
    ap.add_argument("--servers", default="zoneslice,zoneslice+xdp,knot-xdp,nsd")
    ap.add_argument(
        "--threaded-napi",
        action="store_true",
        help="GRO on and NAPI in a kernel thread on the server veth (for every server alike)",
    )
    ap.add_argument(
        "--counting-cost",
        action="store_true",
        help="only measure what the workers' live query counting costs the engine (dnsperf)",
    )
    args = ap.parse_args(argv)
    require_netns()
    for tool in ("kxdpgun", "knotd", "nsd", "dig"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (run scripts/setup.sh)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    zone, slice_db = build(work, args.delegations, args.seed)
    cuts = cuts_of(slice_db)
    qhot, qmix = work / "hot.queries", work / "mix.queries"
    hot_queries(cuts, args.hot, qhot, args.queries, args.seed)
    mix_queries(slice_db, qmix, args.queries, args.seed)
    chot, cmix = work / "hot.counts.json", work / "mix.counts.json"
    write_counts(chot, counts_of(qhot))
    write_counts(cmix, counts_of(qmix))
    log(f"zone {args.delegations} delegations; query files {qhot.name}, {qmix.name}")
    if args.counting_cost:
        c = counting_cost(slice_db, qmix.with_suffix(".dnsperf"), work, args.duration, 3)
        print(json.dumps(c, indent=1))
        return 0

    res: dict[str, Any] = {"args": vars(args), "runs": {}, "hotset": {}}
    log("per-packet cost (BPF_PROG_TEST_RUN)")
    res["program_cost"] = program_cost(slice_db, cuts)
    wanted = args.servers.split(",")
    with (
        netns("bsrv") as srv,
        netns("bcli") as cli,
        veth(srv, cli, f"{SRV}/24", f"{CLI}/24") as link,
    ):
        if args.threaded_napi:
            # the server end's NAPI in a kernel thread: its XDP work can run on another CPU
            # than the load generator (without it, both share the CPU kxdpgun sends from)
            # (a veth has NAPI only with GRO or XDP on: turn GRO on, for every server alike)
            srv.run(["ethtool", "-K", link.a_if, "gro", "on"])
            srv.run(["sh", "-c", f"echo 1 > /sys/class/net/{link.a_if}/threaded"])
        res["threaded_napi"] = args.threaded_napi
        starters: dict[str, Callable[[str], Any]] = {
            "zoneslice": lambda q: zoneslice(srv, slice_db),
            "zoneslice+xdp": lambda q: zoneslice_xdp(
                srv,
                slice_db,
                link.a_if,
                chot if q == "hot" else cmix,
                args.hot if q == "hot" else args.hot_mix,
                res["hotset"].setdefault(q, {}),
            ),
            "knot-xdp": lambda q: knot(srv, work, zone, link.a_if),
            "nsd": lambda q: nsd(srv, work, zone),
        }
        for label in wanted:
            for qname, qfile in (("hot", qhot), ("mix", qmix)):
                log(f"{label}: {qname} at a saturating rate")
                with starters[label](qname):
                    _wait(cli, label)
                    r = kxdpgun(cli, link.b_if, qfile, args.duration, SATURATE)
                    res["runs"].setdefault(label, {})[qname] = r
                    log(f"  answered {r['answered_qps']:,.0f}/s of {r['sent_qps']:,.0f}/s sent")
        if "zoneslice+xdp" in wanted:
            targets = {}
            if "knot-xdp" in res["runs"]:
                targets["hot"] = 2 * res["runs"]["knot-xdp"]["hot"]["answered_qps"]
            if "nsd" in res["runs"]:
                targets["mix"] = 1.5 * res["runs"]["nsd"]["mix"]["answered_qps"]
            for qname, rate in targets.items():
                log(f"zoneslice+xdp: {qname} at the target rate {rate:,.0f}/s")
                with starters["zoneslice+xdp"](qname):
                    _wait(cli, "zoneslice+xdp")
                    r = kxdpgun(
                        cli, link.b_if, qhot if qname == "hot" else qmix, args.duration, int(rate)
                    )
                res["runs"]["zoneslice+xdp"][f"{qname}@target"] = r
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    for line in report(res):
        print(line)
    return 0


def report(res: dict[str, Any]) -> list[str]:
    runs = res["runs"]
    out = ["", f"{'server':<15} {'query file':<12} {'sent/s':>12} {'answered/s':>12} {'loss':>8}"]
    for label, by in runs.items():
        for q, r in by.items():
            out.append(
                f"{label:<15} {q:<12} {r['sent_qps']:>12,.0f} {r['answered_qps']:>12,.0f} {100 * r['loss']:>7.2f}%"
            )

    def ratio(a: str, b: str, q: str) -> str:
        try:
            return f"{runs[a][q]['answered_qps'] / runs[b][q]['answered_qps']:.2f}x"
        except (KeyError, ZeroDivisionError):
            return "n/a"

    out += [
        "",
        f"hot only: zoneslice+xdp / knot-xdp = {ratio('zoneslice+xdp', 'knot-xdp', 'hot')} (target 2x);"
        f" zoneslice+xdp / zoneslice = {ratio('zoneslice+xdp', 'zoneslice', 'hot')}",
        f"TLD mix:  zoneslice+xdp / nsd = {ratio('zoneslice+xdp', 'nsd', 'mix')} (target 1.5x);"
        f" zoneslice+xdp / zoneslice = {ratio('zoneslice+xdp', 'zoneslice', 'mix')}",
    ]
    for q in ("hot@target", "mix@target"):
        r = runs.get("zoneslice+xdp", {}).get(q)
        if r:
            out.append(
                f"zoneslice+xdp at {q}: {r['rate']:,} q/s requested, loss {100 * r['loss']:.2f}%"
            )
    out.append("")
    for k, v in res.get("program_cost", {}).items():
        out.append(f"program: {k}: {v:,.0f}")
    for q, s in res.get("hotset", {}).items():
        out.append(
            f"hot set ({q}): {s.get('keys')} keys ({s.get('delegations')} delegations), "
            f"{s.get('entries')} entries, {100 * s.get('coverage', 0):.1f} % of the file's queries, "
            f"mode {s.get('mode')}"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
