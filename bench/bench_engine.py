"""Benchmark: zoneslice serving one slice vs NSD and PowerDNS+SQLite on the whole zone.

Usage (root: it makes two network namespaces joined by a veth pair)::

    .venv/bin/python bench/bench_engine.py [--delegations 200000] [--duration 15] [--quick]

It builds a .com-like zone (datasets.gen_zone), splits it in 3, writes one
dnsperf query file for the names of one slice with a TLD-like mix (Zipf
popularity, ~38 % NXDOMAIN inside the slice's range, the F-root query-type mix
of datasets.gen_trace), then for each server in turn starts it in the server
namespace and drives it with dnsperf from the client namespace: one
closed-loop run to find the ceiling, then fixed rates (-Q) stepping down from
it until a run loses nothing. Every server gets the same query file; NSD and
PowerDNS load the whole zone, zoneslice only the slice that owns the names.

Server settings: zoneslice ``--workers`` (default 2, SO_REUSEPORT); NSD
``server-count`` = the same, ``reuseport: yes``, ``rrl-ratelimit: 0``;
PowerDNS 4.7 defaults (packet cache and query cache on, receiver-threads 1,
distributor-threads 3) with ``--launch=gsqlite3`` on a database loaded by
``zone2sql --gsqlite`` into the Debian schema and rectified by ``pdnsutil``.
Results go to stdout and to ``<workdir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import build_slices, log  # noqa: E402
from datasets.gen_trace import TYPE_MIX, _zipf_choice  # noqa: E402
from tests.netns import netns, require_netns, veth  # noqa: E402
from tests.nsd import nsd_config  # noqa: E402
from zoneslice.demo import stop_servers  # noqa: E402
from zoneslice.manifest import load_manifest  # noqa: E402
from zoneslice.store.db import connect_readonly  # noqa: E402
from zoneslice.store.keys import key_labels  # noqa: E402
from zoneslice.trace.replay import parse_dnsperf  # noqa: E402

SERVER_CIDR, CLIENT_CIDR = "10.53.251.1/24", "10.53.251.2/24"
PDNS_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
NO_CHILD = {"NS", "SOA", "DS", "DNSKEY"}
DNSPERF_TYPES = {"A6": "TYPE38"}


# ------------------------------------------------------------------ data


def build_data(workdir: Path, delegations: int, seed: int) -> tuple[Path, Path]:
    return build_slices(workdir, delegations, seed, parts=3)


def write_queries(
    slice_db: Path, out: Path, n: int, seed: int, nx: float = 0.38, zipf: float = 1.0
) -> dict[str, Any]:
    """dnsperf query file for names of one slice; returns what it holds."""
    conn = connect_readonly(slice_db)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    origin = meta["origin"]
    rows = conn.execute("SELECT DISTINCT rkey FROM rr WHERE origin = 1 AND rkey != x''").fetchall()
    deleg = {k for (k,) in conn.execute("SELECT rkey FROM rr WHERE origin = 1 AND rdtype = 2")}
    conn.close()
    names: list[str] = []
    is_deleg: list[bool] = []
    firsts: set[bytes] = set()
    for (k,) in rows:
        labels = key_labels(k)
        firsts.add(labels[0])
        names.append(".".join(lb.decode() for lb in reversed(labels)) + "." + origin)
        is_deleg.append(k in deleg)
    lo = meta.get("lo", "").encode()
    hi = meta.get("hi", "").encode() or None
    rng = np.random.default_rng(seed)
    types = list(TYPE_MIX)
    probs = np.array([TYPE_MIX[t] for t in types])
    tidx = rng.choice(len(types), size=n, p=probs / probs.sum())
    nx_mask = rng.random(n) < nx
    child = rng.random(n) < 0.5
    name_idx = _zipf_choice(rng, len(names), n, zipf)
    # nonexistent names inside the slice's range: an existing first label plus a tail
    sorted_firsts = sorted(firsts)
    junk: list[str] = []
    tails = "bcdfghjkmnpqrstvwxz0123456789"
    while len(junk) < max(1000, n // 20):
        base = sorted_firsts[int(rng.integers(len(sorted_firsts)))]
        tail = "".join(tails[int(i)] for i in rng.integers(0, len(tails), int(rng.integers(2, 5))))
        label = base + tail.encode()
        if label in firsts or len(label) > 63 or label < lo or (hi is not None and label >= hi):
            continue
        junk.append(label.decode() + "." + origin)
    junk_idx = _zipf_choice(rng, len(junk), n, zipf)
    counts = {"queries": n, "nonexistent": 0, "child": 0, "types": dict.fromkeys(types, 0)}
    with open(out, "w") as f:
        for i in range(n):
            t = types[int(tidx[i])]
            counts["types"][t] += 1
            if nx_mask[i]:
                qname = junk[int(junk_idx[i])]
                counts["nonexistent"] += 1
            else:
                j = int(name_idx[i])
                qname = names[j]
                if child[i] and is_deleg[j] and t not in NO_CHILD:
                    qname = "www." + qname
                    counts["child"] += 1
            f.write(f"{qname} {DNSPERF_TYPES.get(t, t)}\n")
    counts["names"] = len(names)
    return counts


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    """One server under test: how to start it in the server namespace."""

    label: str
    describe: str
    start: Callable[[Any, Path, str, int], Any]
    settings: dict[str, Any] = field(default_factory=dict)


def _wait_answers(cli: Any, addr: str, port: int, proc: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        r = cli.run(
            ["dig", "+tries=1", "+time=1", "-p", str(port), f"@{addr}", "com.", "SOA"],
            check=False,
        )
        if r.returncode == 0 and "status:" in r.stdout:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


def start_zoneslice(
    ns: Any,
    work: Path,
    addr: str,
    port: int,
    *,
    slice_db: Path,
    workers: int,
    responder: str,
    cache_size: int | None,
):
    d = work / "zoneslice"
    d.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "serve",
        str(slice_db),
        "--listen",
        f"{addr}:{port}",
        "--workers",
        str(workers),
        "--stats",
        str(d / "stats"),
    ]
    if responder:
        cmd += ["--responder", responder]
    if cache_size:
        cmd += ["--cache-size", str(cache_size)]
    return ns.popen(cmd, cwd=ROOT, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)


def start_nsd(ns: Any, work: Path, addr: str, port: int, *, zone: Path, workers: int):
    d = work / "nsd"
    d.mkdir(parents=True, exist_ok=True)
    conf = nsd_config(
        zone, "com.", d, addr, port, server_count=workers, extra_server=["reuseport: yes"]
    )
    (d / "nsd.conf").write_text(conf)
    return ns.popen(
        ["nsd", "-d", "-c", str(d / "nsd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "stderr", "w"),
    )


def pdns_database(zone: Path, db: Path) -> None:
    """zone2sql --gsqlite into the Debian schema, then pdnsutil rectify-zone (ordername/auth)."""
    if db.exists():
        return
    tmp = db.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    t = time.monotonic()
    sql = subprocess.run(
        ["zone2sql", "--gsqlite", f"--zone={zone}", "--zone-name=com."],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    conn = sqlite3.connect(tmp)
    conn.executescript(PDNS_SCHEMA.read_text())
    conn.executescript("BEGIN;\n" + sql + "\nCOMMIT;")
    conn.close()
    confdir = db.parent / "pdnsutil-conf"
    confdir.mkdir(exist_ok=True)
    (confdir / "pdns.conf").write_text(f"launch=gsqlite3\ngsqlite3-database={tmp}\n")
    subprocess.run(
        ["pdnsutil", f"--config-dir={confdir}", "rectify-zone", "com."],
        check=True,
        capture_output=True,
        text=True,
    )
    os.replace(tmp, db)
    log(f"PowerDNS database: {time.monotonic() - t:.1f} s")


def start_pdns(ns: Any, work: Path, addr: str, port: int, *, db: Path):
    d = work / "pdns"
    d.mkdir(parents=True, exist_ok=True)
    cmd = [
        "pdns_server",
        "--no-config",
        "--daemon=no",
        "--guardian=no",
        "--disable-syslog",
        "--write-pid=no",
        "--launch=gsqlite3",
        f"--gsqlite3-database={db}",
        f"--local-address={addr}",
        f"--local-port={port}",
        f"--socket-dir={d}",
        "--loglevel=3",
    ]
    return ns.popen(cmd, stdout=open(d / "log", "w"), stderr=subprocess.STDOUT)


# ------------------------------------------------------------------ load


_STDDEV = re.compile(r"Latency StdDev \(s\):\s+([\d.]+)")


def dnsperf(
    cli: Any,
    addr: str,
    port: int,
    queries: Path,
    seconds: float,
    clients: int,
    outstanding: int,
    rate: int | None,
    passes: int | None = None,
    timeout: float = 2.0,
) -> dict[str, Any]:
    cmd = [
        "dnsperf",
        "-s",
        addr,
        "-p",
        str(port),
        "-d",
        str(queries),
        "-l",
        str(seconds),
        "-c",
        str(clients),
        "-q",
        str(outstanding),
        "-t",
        str(timeout),
    ]
    if rate:
        cmd += ["-Q", str(rate)]
    if passes:
        cmd += ["-n", str(passes)]
    r = cli.run(cmd, check=False, timeout=seconds + 60)
    out = parse_dnsperf(r.stdout)
    if "sent" not in out:
        raise RuntimeError(f"dnsperf failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    m = _STDDEV.search(r.stdout)
    if m:
        out.setdefault("latency_ms", {})["stddev"] = float(m.group(1)) * 1000
    out["rate"] = rate
    out["loss"] = out.get("lost", 0) / out["sent"] if out["sent"] else 0.0
    return out


def ns_cpu(ns: Any) -> float:
    """CPU seconds (user + system) used so far by the processes in namespace ``ns``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in ns.pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(
    cli: Any, srv: Any, addr: str, port: int, queries: Path, a: argparse.Namespace
) -> dict[str, Any]:
    """Warm-up passes, a closed loop for the ceiling, then fixed rates stepping down from it.

    The first warm-up pass is the cold-cache figure. ``sustained`` is the first fixed
    rate that the server keeps up with (answers >= 97 % of it) while losing at most
    ``a.max_loss`` (a fraction of the queries sent).
    """
    runs = []
    cold = None
    for i in range(a.warmup_passes):
        w = _perf(cli, srv, addr, port, queries, a, a.warmup, None, passes=1)
        w["mode"] = f"warm-up {i + 1}"
        runs.append(w)
        cold = cold or w
        log(f"  warm-up pass {i + 1} over the query file: {_short(w)}")
    ceiling = _perf(cli, srv, addr, port, queries, a, a.duration, None)
    ceiling["mode"] = "closed-loop"
    runs.append(ceiling)
    log(f"  closed loop: {_short(ceiling)}")
    rate = int(ceiling["qps"] * 0.95)
    best = None
    for _ in range(a.steps):
        if rate < 100:
            break
        r = _perf(cli, srv, addr, port, queries, a, a.duration, rate)
        r["mode"] = "rate"
        runs.append(r)
        log(f"  -Q {rate}: {_short(r)}")
        if r["lost"] <= a.max_loss * r["sent"] and r.get("qps", 0) >= 0.97 * rate:
            best = r
            break
        rate = int(rate * 0.88)
    return {"cold": cold, "ceiling": ceiling, "sustained": best, "runs": runs}


def _perf(
    cli: Any,
    srv: Any,
    addr: str,
    port: int,
    queries: Path,
    a: argparse.Namespace,
    seconds: float,
    rate: int | None,
    passes: int | None = None,
) -> dict[str, Any]:
    """One dnsperf run, plus the CPU time the server's processes used during it."""
    cpu0 = ns_cpu(srv)
    r = dnsperf(
        cli,
        addr,
        port,
        queries,
        seconds,
        a.clients,
        a.outstanding,
        rate,
        passes=passes,
        timeout=a.timeout,
    )
    r["server_cpu_s"] = round(ns_cpu(srv) - cpu0, 3)
    answered = r.get("answered", 0)
    r["cpu_us_per_query"] = round(1e6 * r["server_cpu_s"] / answered, 2) if answered else None
    return r


def _short(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms", {})
    return (
        f"{r.get('qps', 0):,.0f} qps answered, sent {r['sent']}, lost {r['lost']} "
        f"({100 * r['loss']:.3f} %), latency mean {lat.get('mean', 0):.2f} ms "
        f"sd {lat.get('stddev', 0):.2f} max {lat.get('max', 0):.1f}; "
        f"server CPU {r.get('server_cpu_s', 0):.1f} s = {r.get('cpu_us_per_query') or 0:.1f} us/query"
    )


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delegations", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slice", type=int, default=1, help="slice served by zoneslice (0..2)")
    ap.add_argument("--queries", type=int, default=500_000, help="lines in the query file")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per dnsperf run")
    ap.add_argument(
        "--warmup-passes",
        type=int,
        default=3,
        help="closed-loop passes over the whole query file before measuring (caches warm)",
    )
    ap.add_argument("--warmup", type=float, default=180.0, help="seconds at most per pass")
    ap.add_argument("--timeout", type=float, default=2.0, help="dnsperf -t: lost after this")
    ap.add_argument(
        "--max-loss",
        type=float,
        default=0.0001,
        help="loss (fraction of queries sent) a sustained rate may have (default 0.01 %%)",
    )
    ap.add_argument("--steps", type=int, default=4, help="fixed-rate runs at most per server")
    ap.add_argument("--workers", type=int, default=2, help="zoneslice workers / NSD server-count")
    ap.add_argument("--clients", type=int, default=16, help="dnsperf -c (source ports)")
    ap.add_argument("--outstanding", type=int, default=200, help="dnsperf -q")
    ap.add_argument("--servers", default="zoneslice,nsd,pdns")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/zoneslice-bench-engine"))
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 20k delegations, 3 s runs, 2 steps"
    )
    ap.add_argument(
        "--zs-cache-size",
        type=int,
        help="answer cache entries per zoneslice worker (default: the Responder's)",
    )
    ap.add_argument(
        "--responder",
        default="",
        help="module:callable replacing zoneslice's Responder (loop overhead runs)",
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.delegations, a.duration, a.steps, a.queries = 20_000, 3.0, 2, 50_000
        a.warmup, a.warmup_passes = min(a.warmup, 20.0), 1
    require = os.geteuid() == 0 and shutil.which("ip") and shutil.which("dnsperf")
    if not require:
        require_netns()
        print("needs root, iproute2 and dnsperf", file=sys.stderr)
        return 2
    a.workdir.mkdir(parents=True, exist_ok=True)
    zone, slices = build_data(a.workdir, a.delegations, a.seed)
    manifest = load_manifest(slices)
    slice_db = manifest.slice_path(a.slice)
    qfile = a.workdir / f"queries-{a.delegations}-{a.seed}-s{a.slice}-{a.queries}.txt"
    mix = write_queries(slice_db, qfile, a.queries, a.seed)
    log(
        f"query file {qfile}: {mix['queries']} queries over {mix['names']} names, "
        f"{100 * mix['nonexistent'] / mix['queries']:.1f} % nonexistent"
    )
    servers = {
        "zoneslice": Server(
            "zoneslice",
            f"zoneslice engine, slice {a.slice} of 3, {a.workers} workers, answer cache "
            + (f"{a.zs_cache_size} entries" if a.zs_cache_size else "default size"),
            lambda ns, w, ad, p: start_zoneslice(
                ns,
                w,
                ad,
                p,
                slice_db=slice_db,
                workers=a.workers,
                responder=a.responder,
                cache_size=a.zs_cache_size,
            ),
        ),
        "nsd": Server(
            "nsd",
            f"NSD {_version(['nsd', '-v'])}, whole zone, server-count {a.workers}",
            lambda ns, w, ad, p: start_nsd(ns, w, ad, p, zone=zone, workers=a.workers),
        ),
        "pdns": Server(
            "pdns",
            "PowerDNS 4.7 gsqlite3, whole zone, default caches and threads",
            lambda ns, w, ad, p: start_pdns(ns, w, ad, p, db=zone.parent / "pdns.sqlite3"),
        ),
    }
    chosen = [s.strip() for s in a.servers.split(",") if s.strip()]
    if "pdns" in chosen:
        pdns_database(zone, zone.parent / "pdns.sqlite3")
    results: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "zone": {
            "delegations": a.delegations,
            "seed": a.seed,
            "slice": a.slice,
            "slice_display": manifest.plan.display(a.slice),
        },
        "queries": mix,
        "dnsperf": {
            "warmup_passes": a.warmup_passes,
            "warmup_cap_s": a.warmup,
            "timeout_s": a.timeout,
            "max_loss": a.max_loss,
            "duration_s": a.duration,
            "clients": a.clients,
            "outstanding": a.outstanding,
        },
        "servers": {},
    }
    work = a.workdir / "run"
    shutil.rmtree(work, ignore_errors=True)
    with netns("bsrv") as srv, netns("bcli") as cli, veth(srv, cli, SERVER_CIDR, CLIENT_CIDR) as v:
        for name in chosen:
            s = servers[name]
            log(f"{s.describe}")
            proc = s.start(srv, work, v.a_addr, 53)
            try:
                _wait_answers(cli, v.a_addr, 53, proc, 300, name)
                results["servers"][name] = {
                    "describe": s.describe,
                    **measure(cli, srv, v.a_addr, 53, qfile, a),
                }
                if name == "zoneslice":
                    from zoneslice.engine.stats import read_stats

                    results["servers"][name]["stats"] = read_stats(work / "zoneslice" / "stats")[
                        "total"
                    ]
            finally:
                stop_servers([proc], timeout=15)
    lines = report(results)
    (a.workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(lines))
    return 0


def _version(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", r.stdout + r.stderr)
    return m.group(1) if m else "?"


def report(res: dict[str, Any]) -> list[str]:
    """The summary table; also stores the ratios in ``res``."""
    z, q, p = res["zone"], res["queries"], res["dnsperf"]
    out = [
        "",
        res["command"],
        f"zone {z['delegations']} delegations (seed {z['seed']}), slice {z['slice']} "
        f"{z['slice_display']}; {q['queries']} queries, "
        f"{100 * q['nonexistent'] / q['queries']:.1f} % nonexistent; dnsperf -c {p['clients']} "
        f"-q {p['outstanding']} -t {p['timeout_s']:g}, {p['warmup_passes']} warm-up pass(es), "
        f"{p['duration_s']:.0f} s runs; sustained = highest -Q rate answered at >= 97 % "
        f"and losing <= {100 * p['max_loss']:g} %; cpu us/q = server CPU time per answered query "
        f"(closed loop, and cold first pass)",
        f"{'server':<10} {'cold qps':>9} {'ceiling qps':>12} {'lost':>7} {'sustained':>10} "
        f"{'lost':>6} {'mean ms':>8} {'sd ms':>7} {'max ms':>7} {'cpu us/q':>9} {'cold':>6}",
    ]
    sustained: dict[str, float] = {}
    ceiling: dict[str, float] = {}
    for name, r in res["servers"].items():
        c, n, cold = r["ceiling"], r["sustained"], r["cold"]
        sustained[name] = n["qps"] if n else 0.0
        ceiling[name] = c["qps"]
        lat = (n or c).get("latency_ms", {})
        out.append(
            f"{name:<10} {(cold or {}).get('qps', 0):>9,.0f} {c['qps']:>12,.0f} {c['lost']:>7} "
            f"{sustained[name]:>10,.0f} {(n or {}).get('lost', '-'):>6} "
            f"{lat.get('mean', 0):>8.2f} {lat.get('stddev', 0):>7.2f} {lat.get('max', 0):>7.1f} "
            f"{c.get('cpu_us_per_query') or 0:>9.1f} {(cold or {}).get('cpu_us_per_query') or 0:>6.1f}"
        )
    for other in ("nsd", "pdns"):
        if "zoneslice" in res["servers"] and other in res["servers"]:
            ratios = {
                "sustained": sustained["zoneslice"] / sustained[other]
                if sustained[other]
                else None,
                "ceiling": ceiling["zoneslice"] / ceiling[other] if ceiling[other] else None,
            }
            res.setdefault("ratios", {})[f"zoneslice/{other}"] = ratios
            out.append(
                f"zoneslice/{other}: sustained "
                + (f"{ratios['sustained']:.2f}" if ratios["sustained"] else "-")
                + ", ceiling "
                + (f"{ratios['ceiling']:.2f}" if ratios["ceiling"] else "-")
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
