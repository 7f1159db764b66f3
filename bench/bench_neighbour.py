"""Benchmark of the benchmark set-up: how fast one CPU answers DNS while the other CPU is
idle, busy, or only waking up now and then.

Usage (loopback, free ports; needs nsd, bind9, dnsperf)::

    .venv/bin/python bench/bench_neighbour.py [--delegations 100000] [--duration 5]
        [--servers zoneslice,nsd,bind] [--rounds 2] [--own-session]

Each server (zoneslice's slice-1 server with one worker, NSD ``server-count: 1``, BIND
``-n 1``) and dnsperf run on CPU 0 (``taskset``), with the slice-1 query file of
bench_update. CPU 1 runs, for each measurement, one of:

- ``idle``: nothing;
- ``spin``: a busy loop;
- ``wake 100/s``: a process that sleeps 10 ms at a time and does nothing else;
- ``wake 4/s``: the same with 250 ms sleeps;
- ``burst 10 %``: 0.2 ms busy every 2 ms.

Each server first gets ``--warmup-passes`` passes over the query file. The states are
interleaved (``--rounds`` passes over them) because the background drifts between runs.

By default every process is in the bench's session, so in one scheduler autogroup, and
the neighbour should cost the query CPU nothing. ``--own-session`` starts the server with
``setsid``, as bench_update did until session 5: the server's autogroup then holds the
whole weight on CPU 0 while dnsperf's group (which also holds the neighbour) gets a share
of it in proportion to its load there, and every state but ``idle`` and ``wake 4/s``
halves the rate. That artefact, not the VM, was the "neighbour" loss reported before.
Results go to stdout and ``<workdir>/neighbour-results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._common import (  # noqa: E402
    LOOPBACK,
    autogroup,
    build_slices,
    check_one_sched_group,
    dnsperf,
    log,
    taskset,
    wait_soa,
)
from bench.bench_engine import write_queries  # noqa: E402
from tests.bind import free_port, named  # noqa: E402
from tests.nsd import nsd_config  # noqa: E402
from zoneslice.demo import stop_servers  # noqa: E402
from zoneslice.trace.replay import parse_dnsperf  # noqa: E402

ADDR = LOOPBACK
CLIENTS, OUTSTANDING = 8, 64
SECRET = "YmVuY2gtbmVpZ2hib3VyLWJlbmNoLW5laWdoYm91cg=="
SERVER_CPU, NEIGHBOUR_CPU = 0, 1

NEIGHBOUR = (
    "import os, sys, time\n"
    "mode, seconds = sys.argv[1], float(sys.argv[2])\n"
    "end = time.monotonic() + seconds\n"
    "if mode == 'spin':\n"
    "    while time.monotonic() < end:\n"
    "        pass\n"
    "elif mode.startswith('wake'):\n"
    "    nap = 1.0 / float(mode[4:])\n"
    "    while time.monotonic() < end:\n"
    "        time.sleep(nap)\n"
    "elif mode == 'burst':\n"
    "    while time.monotonic() < end:\n"
    "        t = time.perf_counter() + 0.0002\n"
    "        while time.perf_counter() < t:\n"
    "            pass\n"
    "        time.sleep(0.0018)\n"
)
"""What runs on the neighbour CPU; nothing of it touches the network or the disk."""

STATES = {"idle": None, "spin": "spin", "wake 100/s": "wake100", "wake 4/s": "wake4",
          "burst 10 %": "burst"}  # fmt: skip


@contextlib.contextmanager
def server(name: str, work: Path, zone: Path, slice_db: Path, port: int,
           own_session: bool = False) -> Iterator[str]:
    """One server on SERVER_CPU answering on ``port`` (in its own session with
    ``own_session``); yields a description."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    prefix = ["setsid", *taskset(SERVER_CPU)] if own_session else taskset(SERVER_CPU)
    if name == "bind":
        with named(zone, "com.", d, ADDR, port, key_name="neighbour-key.", secret=SECRET,
                   workers=1, popen=prefix, timeout=300) as proc:
            yield in_group(proc.pid, "BIND named -n 1", own_session)
        return
    if name == "nsd":
        (d / "nsd.conf").write_text(nsd_config(zone, "com.", d, ADDR, port))
        cmd = ["nsd", "-d", "-c", str(d / "nsd.conf")]
        what = "NSD server-count 1"
    else:
        cmd = [sys.executable, str(ROOT / "cli.py"), "serve", str(slice_db), "--workers", "1",
               "--listen", f"{ADDR}:{port}", "--stats", str(d / "stats")]
        what = "zoneslice serve, slice 1 of 3, 1 worker"
    with open(d / "stderr", "w") as err:
        proc = subprocess.Popen([*prefix, *cmd], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_soa(port, proc=proc)
            yield in_group(proc.pid, what, own_session)
        finally:
            stop_servers([proc], timeout=15)


def in_group(pid: int, what: str, own_session: bool) -> str:
    """``what``, after checking that ``pid`` is (or, with ``own_session``, is not) in the
    bench's scheduler autogroup."""
    if not own_session:
        check_one_sched_group({what: pid})
        return what
    if autogroup(pid) == autogroup(os.getpid()):
        raise RuntimeError(f"{what}: setsid left it in the bench's scheduler group")
    return f"{what}, own session ({autogroup(pid) or 'autogroup off'})"


def warm(port: int, queries: Path, passes: int) -> None:
    """Passes over the whole query file, so that zoneslice's answer cache holds every name
    before the first measurement (one short run leaves the first states colder)."""
    t = time.monotonic()
    out, _ = dnsperf(port, queries, 900, CLIENTS, OUTSTANDING, passes=passes,
                     cpu=SERVER_CPU).communicate(timeout=960)
    if "qps" not in parse_dnsperf(out):
        raise RuntimeError(f"dnsperf failed: {out[-500:]}")
    log(f"warm-up: {passes} passes in {time.monotonic() - t:.1f} s")


def measure(port: int, queries: Path, seconds: float, state: str | None) -> float:
    load = None
    if state is not None:
        load = subprocess.Popen([*taskset(NEIGHBOUR_CPU), sys.executable, "-c", NEIGHBOUR,
                                 state, str(seconds + 1)])  # fmt: skip
    try:
        out, _ = dnsperf(port, queries, seconds, CLIENTS, OUTSTANDING,
                         cpu=SERVER_CPU).communicate(timeout=seconds + 60)
    finally:
        if load is not None:
            load.wait()
    st = parse_dnsperf(out)
    if "qps" not in st:
        raise RuntimeError(f"dnsperf failed: {out[-500:]}")
    return float(st["qps"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="out/bench-update")
    ap.add_argument("--delegations", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup-passes", type=int, default=3)
    ap.add_argument("--servers", default="zoneslice,nsd,bind",
                    help="comma list of zoneslice, nsd, bind")
    ap.add_argument("--own-session", action="store_true",
                    help="start each server with setsid (its own scheduler autogroup), as "
                         "bench_update did before session 5")
    a = ap.parse_args(argv)
    if not {SERVER_CPU, NEIGHBOUR_CPU} <= os.sched_getaffinity(0):
        raise SystemExit("needs CPUs 0 and 1")
    tools = {"zoneslice": [], "nsd": ["nsd"], "bind": ["named"]}
    unknown = set(a.servers.split(",")) - set(tools)
    if unknown:
        ap.error(f"--servers: unknown {', '.join(sorted(unknown))} (known: {', '.join(tools)})")
    for tool in ["dnsperf", "taskset", "setsid", *(t for n in a.servers.split(",") for t in tools[n])]:
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    work = (ROOT / a.workdir).resolve()
    zone, slices = build_slices(work, a.delegations, a.seed, parts=3)
    slice_db = slices / "slice-1.db"
    queries = work / "queries-slices-3-slice-1.txt"
    if not queries.exists():
        write_queries(slice_db, queries, 100_000, a.seed)
    res: dict[str, Any] = {"machine": f"{os.cpu_count()} vCPU", "duration": a.duration,
                           "own_session": a.own_session, "servers": {}}  # fmt: skip
    for name in a.servers.split(","):
        port = free_port()
        with server(name, work / "neighbour", zone, slice_db, port, a.own_session) as what:
            warm(port, queries, a.warmup_passes)
            runs: dict[str, list[float]] = {s: [] for s in STATES}
            for _ in range(a.rounds):
                for label, state in STATES.items():
                    runs[label].append(measure(port, queries, a.duration, state))
                    log(f"{name}: {label}: {runs[label][-1]:,.0f} q/s")
            res["servers"][name] = {"describe": what, "qps": runs}
    (work / "neighbour-results.json").write_text(json.dumps(res, indent=1))
    report(res)
    return 0


def report(res: dict[str, Any]) -> None:
    print(f"\nqueries/s on CPU {SERVER_CPU} (server + dnsperf) by what CPU {NEIGHBOUR_CPU} does "
          f"({res['duration']} s runs, median of the rounds; ratio to idle)")
    print(f"{'server':<11}" + "".join(f"{s:>19}" for s in STATES))
    for name, r in res["servers"].items():
        med = {s: statistics.median(v) for s, v in r["qps"].items()}
        cells = [f"{med[s]:>10,.0f} {med[s] / med['idle']:>6.0%}  " for s in STATES]
        print(f"{name:<11}" + "".join(f"{c:>19}" for c in cells))
    for name, r in res["servers"].items():
        print(f"  {name}: {r['describe']}")


if __name__ == "__main__":
    raise SystemExit(main())
