"""Benchmark: a primary under update, zoneslice next to BIND (ISC's "large zones under update").

Usage (loopback, free ports; needs bind9, dnsperf)::

    .venv/bin/python bench/bench_update.py [--delegations 100000] [--updates 10000]
        [--senders 64] [--duration 8] [--rates 0,4,8,16,32,64,128,256] [--repeat 1]

Both servers get the same .com-like zone (datasets.gen_zone) and the same
`zoneslice updgen` stream (new delegations, NS and glue changes, DS adds and
removals, deletions; generated with a window of 4 x senders so that messages
in flight together touch different names and may be applied in any order):

- zoneslice: `zoneslice serve` of the whole zone (split --parts 1) with
  --tsig-keys (the writer process: PrimaryRole, group commit, WAL +
  synchronous=FULL), ``--workers`` query workers;
- BIND: Debian named, the unsliced zone as a dynamic primary zone,
  allow-update with the same TSIG key, journal on, ``-n`` = the same workers.

(a) time to apply ``--updates`` TSIG-signed (hmac-sha256) UPDATEs sent by
``--senders`` concurrent UDP senders, each sending its next message when the
previous one is answered: acknowledged updates/s and the ratio to BIND.

(b) queries/s answered (dnsperf closed loop, ``--duration`` s per point, the
mix of bench_engine: Zipf names, ~38 % NXDOMAIN; after ``--warmup-passes`` passes
over the query file, so that every worker's answer cache is warm) while the primary takes
UPDATEs at each rate of ``--rates``. Each rate is paired with a 0 upd/s run made just
before it (``--unpaired`` to skip), and "vs 0" is the ratio to that run: on a shared
machine the background load drifts more between points than the effect. ``--repeat N``
measures each pair N times and reports the pair with the median ratio. (b) runs once
per CPU placement of ``--placement`` (default both), each with freshly started servers:

- ``shared``: everything shares all CPUs, as in (a). When SecondaryRole exists
  (zoneslice/xfr/secondary.py, `serve --primary`) dnsperf asks a slice server
  that follows the primary by IXFR (the primary projects each commit onto the
  3-slice plan and NOTIFYs at most once per ``--notify-delay``); otherwise it
  asks the primary itself (the run says which). For BIND, dnsperf asks the
  updated named (ISC's original setup).
- ``split``: emulates zoneslice's real layout, where the primary and the slice
  servers are different machines. CPU 1 (where this VM's disk interrupts land) = the
  update side: the primary (all its processes) and the UPDATE senders (this process,
  pinned with sched_setaffinity for the run); CPU 0 = the query side: the queried
  server (all its processes) and dnsperf, all started under ``taskset -c``. zoneslice: primary + slice-1 secondary as
  in shared, ``--split-workers`` workers each. BIND like for like: a dynamic primary
  named (same key, journal, ``notify explicit`` + also-notify of the secondary,
  notify-delay = ``--notify-delay`` rounded to whole seconds) and a ``type secondary``
  named of it (TSIG-signed IXFR), ``-n`` = ``--split-workers`` each; dnsperf asks the
  secondary. Before (b) the ``--updates`` stream of (a) is applied once unmeasured
  (so that (b) starts from the same zone as in shared) and the secondary must have
  caught up; after each point the queried server's SOA serial is compared with the
  primary's (waiting up to 10 s) and the catch-up time or the lag is recorded.
  Each rate also gets a second, control baseline: 0 upd/s while a CPU load unrelated
  to DNS (:data:`NEIGHBOUR_LOAD`) runs on the update CPU. The two vCPUs share core
  resources (``bench_neighbour.py`` measures how much), so
  "vs 0 busy" is the part of the loss that the updates themselves cause.

Every process (servers, dnsperf, senders) stays in this process's session, so in one
scheduler autogroup (checked at each start): a server started with ``setsid`` gets a
group of its own, which on the query CPU outweighs dnsperf's group as soon as that
group also has work on the other CPU, and the query rate halved for that reason alone
(``bench_neighbour.py --own-session`` shows it). Results before session 5 had this
for zoneslice's servers and not for BIND's.

Everything runs on this machine's loopback. Results go to stdout and
``<workdir>/update-results.json`` (``placements.<placement>.servers.<server>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dns.name  # noqa: E402
import dns.tsigkeyring  # noqa: E402

from bench._common import (  # noqa: E402
    LOOPBACK,
    build_slices,
    check_one_sched_group,
    dnsperf,
    log,
    taskset,
    wait_soa,
)
from bench.bench_engine import write_queries  # noqa: E402
from tests.bind import free_port, named, named_secondary_config, run_named  # noqa: E402
from zoneslice.demo import stop_servers  # noqa: E402
from zoneslice.trace.replay import parse_dnsperf  # noqa: E402
from zoneslice.updates.updgen import UpdateGenerator, read_zone, to_message  # noqa: E402

SECRET = "YmVuY2gtdXBkYXRlLWJlbmNoLXVwZGF0ZS1iZW5jaC11cGQ="
KEY = "bench-key."
ADDR = LOOPBACK
UPDATE_CPU, QUERY_CPU = 1, 0


# ------------------------------------------------------------------ helpers


def sign(origin: dns.name.Name, messages: list[list[str]]) -> list[bytes]:
    """TSIG-signed wires (hmac-sha256), signed now (fudge 300 s)."""
    ring = dns.tsigkeyring.from_text({KEY: ("hmac-sha256", SECRET)})
    out = []
    for lines in messages:
        u = to_message(origin, lines)
        u.use_tsig(ring, KEY)
        out.append(u.to_wire())
    return out


class Sender:
    """UPDATE senders over UDP: a closed loop of ``concurrency`` senders, or a paced rate."""

    def __init__(self, port: int, timeout: float = 3.0, retries: int = 2) -> None:
        self.target = (ADDR, port)
        self.timeout = timeout
        self.retries = retries
        self.rcodes: dict[int, int] = {}
        self.lost = 0
        self.latencies: list[float] = []

    async def one(self, sock: socket.socket, wire: bytes) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        for _ in range(self.retries + 1):
            await loop.sock_sendall(sock, wire)
            try:
                while True:
                    async with asyncio.timeout(self.timeout):
                        resp = await loop.sock_recv(sock, 65535)
                    if resp[:2] == wire[:2]:
                        break
            except TimeoutError:
                continue
            rc = resp[3] & 0xF
            self.rcodes[rc] = self.rcodes.get(rc, 0) + 1
            self.latencies.append(time.monotonic() - t0)
            return
        self.lost += 1

    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(self.target)
        return s

    async def closed_loop(self, wires: list[bytes], concurrency: int) -> float:
        it = iter(wires)

        async def worker() -> None:
            with self._socket() as s:
                for w in it:
                    await self.one(s, w)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0

    async def paced(self, wires: list[bytes], rate: float, seconds: float) -> int:
        """Send at ``rate``/s for ``seconds`` (at most len(wires)); returns how many were sent."""
        if rate <= 0:
            await asyncio.sleep(seconds)
            return 0
        socks = [self._socket() for _ in range(64)]
        tasks = []
        t0 = time.monotonic()
        n = min(len(wires), int(rate * seconds))
        try:
            for i in range(n):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self.one(socks[i % len(socks)], wires[i])))
            left = t0 + seconds - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout * (self.retries + 1) + 1)
        finally:
            for s in socks:
                s.close()
        return n


NEIGHBOUR_LOAD = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    t = time.perf_counter()\n"
    "    while time.perf_counter() - t < 0.001:\n"
    "        pass\n"
    "    time.sleep(0.001)\n"
)
"""A CPU load that has nothing to do with DNS (1 ms busy, 1 ms asleep), run on the update
CPU during the split placement's control baseline: the query CPU is slower while its
sibling vCPU works, updates or not."""


def neighbour_load(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*taskset(UPDATE_CPU), sys.executable, "-c", NEIGHBOUR_LOAD,
                             str(seconds)])  # fmt: skip


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo += [int(k) for k in kids]
    return total / tick


def tree_cpus(pid: int, children: bool = True) -> dict[int, str]:
    """Cpus_allowed_list of every thread of ``pid`` (and of its descendants)."""
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        out[int(task.name)] = line.split(":", 1)[1].strip()
            if children:
                todo += [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def pin_threads(cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of this process to ``cpus`` (sched_setaffinity sets one thread);
    returns the previous sets, for restore_threads."""
    before = {}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        with contextlib.suppress(ProcessLookupError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return before


def restore_threads(before: dict[int, set[int]]) -> None:
    for tid, cpus in before.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def check_pinning(pins: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Fail unless every thread of each process tree (of the bench process itself: only its
    own threads) may run on its CPU only."""
    seen: dict[str, list[str]] = {}
    for role, (pid, cpu) in pins.items():
        lists = tree_cpus(pid, children=pid != os.getpid())
        seen[role] = sorted(set(lists.values()))
        if not lists or seen[role] != [str(cpu)]:
            raise RuntimeError(f"{role} (pid {pid}) not pinned to CPU {cpu}: {lists}")
    return seen


def soa_serial(port: int) -> int:
    import dns.message
    import dns.query

    r = dns.query.udp(dns.message.make_query("com.", "SOA"), ADDR, port=port, timeout=2)
    return r.answer[0][0].serial


def catch_up(primary_port: int, query_port: int, timeout: float = 10.0) -> dict[str, Any]:
    """Whether the queried server reaches the primary's serial within ``timeout`` seconds."""
    target = soa_serial(primary_port)
    t0 = time.monotonic()
    while True:
        got = soa_serial(query_port)
        waited = time.monotonic() - t0
        if not 0 < (target - got) % 2**32 < 2**31:
            return {"caught_up": True, "after_s": round(waited, 2), "primary_serial": target,
                    "secondary_serial": got, "status": f"caught up after {waited:.1f} s"}
        if waited > timeout:
            lag = (target - got) % 2**32
            return {"caught_up": False, "after_s": round(waited, 2), "primary_serial": target,
                    "secondary_serial": got, "lag_serials": lag,
                    "status": f"lag {lag} serials after {waited:.0f} s"}
        time.sleep(0.1)


def secondary_available() -> bool:
    try:
        import zoneslice.xfr.secondary  # noqa: F401
    except ImportError:
        return False
    help_text = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", "--help"],
                               capture_output=True, text=True, cwd=ROOT).stdout
    return "--primary" in help_text and "--slice-plan" in help_text


# ------------------------------------------------------------------ servers


class Zoneslice:
    label = "zoneslice"

    def __init__(self, work: Path, slices_whole: Path, slices_n: Path | None, workers: int,
                 notify_delay: float = 1.0, split: bool = False,
                 commit_delay: float | None = None) -> None:
        """``split``: primary on UPDATE_CPU, secondary on QUERY_CPU (needs ``slices_n``);
        ``commit_delay``: the primary's ``--commit-delay`` (None: serve's default)."""
        self.notify_delay = notify_delay
        self.commit_delay = commit_delay
        self.split = split
        self.cpu = {"primary": UPDATE_CPU, "secondary": QUERY_CPU} if split else {}
        self.work = work / ("zoneslice-split" if split else "zoneslice")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.db = self.work / "whole.db"
        shutil.copyfile(slices_whole / "slice-0.db", self.db)
        self.slices_n = slices_n
        self.workers = workers
        self.keys = self.work / "keys.conf"
        self.keys.write_text(f'key "{KEY}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
        self.procs: list[subprocess.Popen[bytes]] = []
        self.roles: dict[str, int] = {}
        self.port = free_port()
        self.query_port = self.port
        self.describe = ""

    def _serve(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        cmd = [*taskset(self.cpu.get(name)), sys.executable, str(ROOT / "cli.py"), "serve", *args]
        with open(self.work / f"{name}.log", "wb") as err:
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                 process_group=0)
        self.procs.append(p)
        self.roles[name] = p.pid
        return p

    def _commit_args(self) -> list[str]:
        return [] if self.commit_delay is None else ["--commit-delay", str(self.commit_delay)]

    def start(self) -> None:
        notify: list[str] = []
        if self.slices_n is not None:
            self.query_port = free_port()
            notify = ["--notify", f"{ADDR}:{self.query_port}", "--axfr-allow", ADDR,
                      "--slice-plan", str(self.slices_n / "manifest.json"),
                      "--notify-delay", str(self.notify_delay)]
        self._serve([str(self.db), "--listen", f"{ADDR}:{self.port}", "--workers",
                     str(self.workers), "--tsig-keys", str(self.keys), "--stats",
                     str(self.work / "stats"), *notify, *self._commit_args()], "primary")
        wait_soa(self.port)
        self._writer_pid("primary", self.work / "stats")
        self.describe = (f"zoneslice primary (whole zone, {self.workers} workers + writer, "
                         "group commit, WAL synchronous=FULL)")
        if self.slices_n is not None:
            sdb = self.work / "slice-1.db"
            shutil.copyfile(self.slices_n / "slice-1.db", sdb)
            self._serve([str(sdb), "--listen", f"{ADDR}:{self.query_port}", "--workers",
                         str(self.workers), "--primary", f"{ADDR}:{self.port}",
                         "--primary-key", KEY, "--tsig-keys", str(self.keys), "--stats",
                         str(self.work / "stats-secondary")], "secondary")
            wait_soa(self.query_port)
            self._writer_pid("secondary", self.work / "stats-secondary")
            self.describe += (f"; queries to slice 1/{self.slices_n.name} secondary (IXFR, "
                              f"notify-delay {self.notify_delay:g} s)")
        else:
            self.describe += "; queries to the primary itself (no SecondaryRole yet)"
        if self.split:
            self.describe += (f"; primary on CPU {UPDATE_CPU}, secondary ({self.workers} workers "
                              f"+ writer) on CPU {QUERY_CPU}")

    def pins(self) -> dict[str, tuple[int, int]]:
        return {name: (pid, self.cpu[name]) for name, pid in self.roles.items() if name in self.cpu}

    def query_cache(self) -> dict[str, int]:
        """Answer-cache hits and misses of the queried server's workers so far (as of their
        last stats write, at most a second old)."""
        stats = self.work / ("stats-secondary" if self.slices_n is not None else "stats")
        out: dict[str, int] = {}
        for f in stats.glob("worker-*.json"):
            try:
                r = json.loads(f.read_text()).get("responder", {})
            except (OSError, ValueError):
                continue
            for k in ("cache_hits", "cache_misses"):
                out[k] = out.get(k, 0) + int(r.get(k, 0))
        return out

    def _writer_pid(self, name: str, stats: Path) -> None:
        """Count the writer process's CPU on its own too (``NAME.writer``, part of NAME's)."""
        for _ in range(50):
            try:
                self.roles[f"{name}.writer"] = json.loads((stats / "writer.json").read_text())["pid"]
                return
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)

    def writer_counters(self) -> dict[str, Any]:
        """The primary writer's queue counters (commits, group sizes, time per phase)."""
        time.sleep(1.2)
        try:
            st = json.loads((self.work / "stats" / "writer.json").read_text())
        except (OSError, ValueError):
            return {}
        return st.get("role", {}).get("queue", {})

    def query_db(self) -> Path:
        return self.work / "slice-1.db" if self.slices_n is not None else self.db

    def stop(self) -> None:
        stop_servers(self.procs, timeout=20)


class Bind:
    label = "bind"

    def __init__(self, work: Path, zone: Path, workers: int) -> None:
        self.work = work / "bind"
        shutil.rmtree(self.work, ignore_errors=True)
        self.zone = zone
        self.workers = workers
        self.port = free_port()
        self.query_port = self.port
        self._cm: Any = None
        self.roles: dict[str, int] = {}
        self.describe = ""

    def start(self) -> None:
        self._cm = named(self.zone, "com.", self.work, ADDR, self.port, key_name=KEY.rstrip("."),
                         secret=SECRET, workers=self.workers, timeout=600)
        proc = self._cm.__enter__()
        self.roles = {"named": proc.pid}
        version = subprocess.run(["named", "-v"], capture_output=True, text=True).stdout.strip()
        self.describe = f"{version}, whole zone, dynamic primary, journal, -n {self.workers}"

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


class BindPair:
    """BIND like for like with zoneslice in split placement: a dynamic primary named on
    UPDATE_CPU that NOTIFYs a secondary named on QUERY_CPU, which dnsperf asks."""

    label = "bind"

    def __init__(self, work: Path, zone: Path, workers: int, notify_delay: float) -> None:
        self.work = work / "bind-split"
        shutil.rmtree(self.work, ignore_errors=True)
        self.zone = zone
        self.workers = workers
        self.notify_delay = max(0, round(notify_delay))
        self.port = free_port()
        self.query_port = free_port()
        self._stack: contextlib.ExitStack | None = None
        self.roles: dict[str, int] = {}
        self.describe = ""

    def start(self) -> None:
        key = KEY.rstrip(".")
        self._stack = contextlib.ExitStack()
        primary = self._stack.enter_context(named(
            self.zone, "com.", self.work / "primary", ADDR, self.port, key_name=key,
            secret=SECRET, workers=self.workers, popen=taskset(UPDATE_CPU), timeout=600,
            notify_to=(ADDR, self.query_port), notify_delay=self.notify_delay))
        self.roles = {"primary": primary.pid}
        conf = named_secondary_config("com.", self.work / "secondary", ADDR, self.query_port,
                                      (ADDR, self.port), key_name=key, secret=SECRET)
        secondary = self._stack.enter_context(run_named(
            conf, "com.", self.work / "secondary", ADDR, self.query_port, workers=self.workers,
            popen=taskset(QUERY_CPU), timeout=600))
        self.roles["secondary"] = secondary.pid
        version = subprocess.run(["named", "-v"], capture_output=True, text=True).stdout.strip()
        self.describe = (f"{version}, whole zone: dynamic primary (journal, notify-delay "
                         f"{self.notify_delay} s) -n {self.workers} on CPU {UPDATE_CPU}, "
                         f"queries to its secondary (TSIG IXFR) -n {self.workers} on CPU "
                         f"{QUERY_CPU}")

    def pins(self) -> dict[str, tuple[int, int]]:
        return {"primary": (self.roles["primary"], UPDATE_CPU),
                "secondary": (self.roles["secondary"], QUERY_CPU)}

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


# ------------------------------------------------------------------ runs


PLACEMENTS = {
    "shared": "all CPUs shared: zoneslice primary + slice server, BIND one named both updated "
              "and queried, senders and dnsperf",
    "split": f"update side on CPU {UPDATE_CPU} (primary + senders), query side on CPU "
             f"{QUERY_CPU} (slice server / BIND secondary + dnsperf)",
}


def apply_closed(srv: Any, origin: dns.name.Name, stream: list[list[str]],
                 senders: int) -> dict[str, Any]:
    """Send ``stream`` from ``senders`` closed-loop senders; what (a) reports."""
    serial0 = soa_serial(srv.port)
    wires = sign(origin, stream)
    sender = Sender(srv.port)
    cpu0 = {k: tree_cpu(pid) for k, pid in srv.roles.items()}
    own0 = time.process_time()
    elapsed = asyncio.run(sender.closed_loop(wires, senders))
    cpu_a = {k: round(tree_cpu(pid) - cpu0[k], 2) for k, pid in srv.roles.items()}
    cpu_a["senders"] = round(time.process_time() - own0, 2)
    acked = sender.rcodes.get(0, 0)
    lat = sorted(sender.latencies)
    return {
        "updates": len(wires), "seconds": round(elapsed, 3), "acked": acked,
        "updates_per_s": round(acked / elapsed, 1), "rcodes": sender.rcodes,
        "lost": sender.lost,
        "latency_ms_p50": round(1000 * lat[len(lat) // 2], 2) if lat else None,
        "latency_ms_p99": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else None,
        "serial_steps": soa_serial(srv.port) - serial0,
        "cpu_s": cpu_a,
    }


def run_server(srv: Any, a: argparse.Namespace, origin: dns.name.Name, stream_a: list[list[str]],
               stream_b: list[list[str]], queries: Path,
               placement: str = "shared") -> dict[str, Any]:
    """(a) (shared placement) or the unmeasured setup (split), then (b), on fresh servers."""
    split = placement == "split"
    qcpu = QUERY_CPU if split else None
    tag = f"{srv.label} [{placement}]"
    res: dict[str, Any] = {"placement": placement}
    own_cpus: dict[int, set[int]] = {}
    try:
        if split:
            own_cpus = pin_threads({UPDATE_CPU})
        srv.start()
        res["describe"] = srv.describe
        log(f"{tag}: {srv.describe}")
        check_one_sched_group(srv.roles)
        if split:
            res["pinning"] = check_pinning(
                {**srv.pins(), "bench (senders)": (os.getpid(), UPDATE_CPU)})
            log(f"{tag}: Cpus_allowed_list of every thread of each tree: {res['pinning']}")
        applied = apply_closed(srv, origin, stream_a, a.senders)
        if split:
            applied["catch_up"] = catch_up(srv.port, srv.query_port, timeout=600)
            res["setup"] = applied
            log(f"{tag}: setup (not (a): the same {len(stream_a)} UPDATEs, pinned) {applied}")
            if not applied["catch_up"]["caught_up"]:
                raise RuntimeError(f"{tag}: the secondary did not catch up after the setup")
        else:
            writer = getattr(srv, "writer_counters", None)
            if writer is not None:
                applied["writer"] = writer()
            res["apply"] = applied
            log(f"{tag}: (a) {applied}")
        t = time.monotonic()
        warm = dnsperf(srv.query_port, queries, 600, a.clients, a.outstanding,
                       passes=a.warmup_passes, cpu=qcpu)
        out, _ = warm.communicate(timeout=900)
        log(f"{tag}: warm-up ({a.warmup_passes} passes over the query file): "
            f"{parse_dnsperf(out).get('qps', 0):,.0f} q/s, {time.monotonic() - t:.1f} s")
        pos = 0

        def point(rate: int, busy_neighbour: bool = False) -> dict[str, Any]:
            nonlocal pos
            n = int(rate * a.duration)
            wires_b = sign(origin, stream_b[pos : pos + n])
            pos += n
            cpu0 = {k: tree_cpu(pid) for k, pid in srv.roles.items()}
            cache = getattr(srv, "query_cache", lambda: {})
            cache0 = cache()
            load = neighbour_load(a.duration) if busy_neighbour else None
            perf = dnsperf(srv.query_port, queries, a.duration, a.clients, a.outstanding,
                           cpu=qcpu)
            upd = Sender(srv.port)
            sent = asyncio.run(upd.paced(wires_b, rate, a.duration))
            out, _ = perf.communicate(timeout=a.duration + 120)
            if load is not None:
                load.wait()
            cpu = {k: round(tree_cpu(pid) - cpu0[k], 2) for k, pid in srv.roles.items()}
            st = parse_dnsperf(out)
            if "qps" not in st:
                raise RuntimeError(f"dnsperf failed: {out[-500:]}")
            p = {"rate": rate, "busy_neighbour": busy_neighbour, "qps": st["qps"],
                 "sent_queries": st.get("sent"),
                 "lost_queries": st.get("lost", 0), "updates_sent": sent,
                 "updates_acked": upd.rcodes.get(0, 0),
                 "updates_other": {k: v for k, v in upd.rcodes.items() if k},
                 "updates_lost": upd.lost, "cpu_s": cpu}
            cache1 = cache()
            if cache1:
                p["answer_cache"] = {k: cache1[k] - cache0.get(k, 0) for k in cache1}
            if split:
                p["catch_up"] = catch_up(srv.port, srv.query_port)
            log(f"{tag}: (b) {p}")
            return p

        res["under_update"] = []
        for rate in a.rates:
            tries = []
            for _ in range(a.repeat if rate and a.paired else 1):
                base = point(0) if a.paired and rate else None
                busy = point(0, busy_neighbour=True) if split and a.paired and rate else None
                p = point(rate)
                p["baseline_qps"] = base["qps"] if base else p["qps"] if not rate else None
                if busy is not None:
                    p["busy_neighbour_baseline_qps"] = busy["qps"]
                if base is not None and "catch_up" in base:
                    p["baseline_catch_up"] = base["catch_up"]
                tries.append(p)
            res["under_update"].append(median_try(tries))
    finally:
        try:
            srv.stop()
        finally:
            restore_threads(own_cpus)
    return res


def median_try(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The try whose ratio to its paired baseline is the median (the lower one of an even
    count), with every try's figures under ``repeats``."""
    if len(tries) == 1:
        return tries[0]
    ranked = sorted(tries, key=lambda t: t["qps"] / t["baseline_qps"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["repeats"] = [{k: t.get(k) for k in ("qps", "baseline_qps", "busy_neighbour_baseline_qps")}
                      for t in tries]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="out/bench-update")
    ap.add_argument("--delegations", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--senders", type=int, default=64)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per query-rate point")
    ap.add_argument("--rates", default="0,4,8,16,32,64,128,256")
    ap.add_argument("--workers", type=int, default=2,
                    help="zoneslice workers / named -n in shared placement")
    ap.add_argument("--split-workers", type=int, default=1,
                    help="zoneslice workers / named -n of each server in split placement "
                         "(each has one CPU)")
    ap.add_argument("--placement", default="shared,split",
                    help="CPU placements for (b), comma list of shared (everything on all "
                         f"CPUs; also runs (a)) and split ({PLACEMENTS['split']})")
    ap.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=64, help="dnsperf -q")
    ap.add_argument("--queries", type=int, default=100_000,
                    help="dnsperf query file size (one warm-up pass over it before (b))")
    ap.add_argument("--warmup-passes", type=int, default=3,
                    help="dnsperf passes over the query file before (b): each zoneslice worker "
                         "has its own answer cache and dnsperf's sockets land on the workers "
                         "anew in every run, so one pass leaves each worker about half warm")
    ap.add_argument("--servers", default="zoneslice,bind")
    ap.add_argument("--unpaired", dest="paired", action="store_false",
                    help="measure each rate once (default: a 0 upd/s run right before each rate, "
                         "the ratio is to that paired baseline, which cancels drifts of the "
                         "machine's background load)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each rate's pair (0 upd/s run, then the rate) this many times "
                         "and report the pair with the median ratio; a single 8 s dnsperf run "
                         "on this VM varies by about 10 %%")
    ap.add_argument("--commit-delay", type=float, default=None, metavar="SECONDS",
                    help="zoneslice primary's --commit-delay (default: serve's own)")
    ap.add_argument("--notify-delay", type=float, default=1.0,
                    help="zoneslice primary's NOTIFY coalescing; in split placement also BIND's "
                         "notify-delay (rounded to whole seconds)")
    ap.add_argument("--no-secondary", action="store_true",
                    help="query the zoneslice primary even when SecondaryRole exists "
                         "(shared placement only)")
    a = ap.parse_args(argv)
    a.rates = [int(x) for x in a.rates.split(",")]
    a.placement = [x.strip() for x in a.placement.split(",") if x.strip()]
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    for x in a.placement:
        if x not in PLACEMENTS:
            raise SystemExit(f"unknown placement {x} (shared, split)")
    for x in servers:
        if x not in ("zoneslice", "bind"):
            raise SystemExit(f"unknown server {x}")
    if "split" in a.placement and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("split placement needs CPUs 0 and 1")
    for tool in ("named", "dnsperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    work = (ROOT / a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    zone, whole = build_slices(work, a.delegations, a.seed, parts=1)
    has_secondary = secondary_available()
    if "split" in a.placement and "zoneslice" in servers and not has_secondary:
        raise SystemExit("split placement needs SecondaryRole (serve --primary)")
    use_secondary = not a.no_secondary and has_secondary
    slices_3 = build_slices(work, a.delegations, a.seed, parts=3)[1] if has_secondary else None
    slices_n = slices_3 if use_secondary else None
    t = time.monotonic()
    model = read_zone(zone)
    gen = UpdateGenerator(model, a.seed)
    need_b = a.repeat * sum(int(r * a.duration) for r in a.rates)
    stream = list(gen.messages(a.updates + need_b, 1, window=4 * a.senders))
    log(f"updgen: {len(stream)} messages in {time.monotonic() - t:.1f} s ({gen.counts})")
    origin = model.origin
    del model, gen
    stream_a, stream_b = stream[: a.updates], stream[a.updates :]
    qfiles: dict[str, Path] = {}
    for placement in a.placement:
        sliced = slices_3 if placement == "split" else slices_n
        query_db = (sliced / "slice-1.db") if sliced is not None else (whole / "slice-0.db")
        qfile = work / f"queries-{query_db.parent.name}-{query_db.stem}.txt"
        if not qfile.exists():
            write_queries(query_db, qfile, a.queries, a.seed)
        qfiles[placement] = qfile
    results: dict[str, Any] = {
        "params": {k: v for k, v in vars(a).items()},
        "queries_to_secondary": use_secondary,
        "placements": {pl: {"describe": PLACEMENTS[pl], "servers": {}} for pl in a.placement},
    }
    try:
        for placement in a.placement:
            for name in servers:
                srv: Any
                if placement == "shared" and name == "zoneslice":
                    srv = Zoneslice(work, whole, slices_n, a.workers, a.notify_delay,
                                    commit_delay=a.commit_delay)
                elif placement == "shared":
                    srv = Bind(work, zone, a.workers)
                elif name == "zoneslice":
                    srv = Zoneslice(work, whole, slices_3, a.split_workers, a.notify_delay,
                                    split=True, commit_delay=a.commit_delay)
                else:
                    srv = BindPair(work, zone, a.split_workers, a.notify_delay)
                results["placements"][placement]["servers"][name] = run_server(
                    srv, a, origin, stream_a, stream_b, qfiles[placement], placement)
    finally:
        (work / "update-results.json").write_text(json.dumps(results, indent=2))
    report(results)
    return 0


def report(res: dict[str, Any]) -> None:
    p = res["params"]
    pls = res["placements"]
    print(f"\nzone: {p['delegations']:,} delegations; {p['updates']:,} updgen UPDATEs "
          f"(TSIG hmac-sha256) from {p['senders']} concurrent UDP senders")
    for pl, x in pls.items():
        for name, r in x["servers"].items():
            print(f"  {pl} {name}: {r['describe']}")
    s = pls.get("shared", {}).get("servers", {})
    if s:
        print("\n(a) time to apply the updates (placement shared)")
        print(f"{'server':<10} {'seconds':>8} {'acked':>7} {'updates/s':>10} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'not NOERROR':>12} {'lost':>5}")
        for name, r in s.items():
            x = r["apply"]
            other = sum(v for k, v in x["rcodes"].items() if int(k) != 0)
            print(f"{name:<10} {x['seconds']:>8.2f} {x['acked']:>7} {x['updates_per_s']:>10,.0f} "
                  f"{x['latency_ms_p50']:>7} {x['latency_ms_p99']:>7} {other:>12} {x['lost']:>5}")
        if "zoneslice" in s and "bind" in s:
            ratio = (s["zoneslice"]["apply"]["updates_per_s"]
                     / max(s["bind"]["apply"]["updates_per_s"], 1e-9))
            print(f"zoneslice / BIND: {ratio:.2f}x")
    paired = p.get("paired", False)
    for pl, x in pls.items():
        s = x["servers"]
        if not s:
            continue
        split = pl == "split"
        if split:
            where = "a slice secondary; BIND by its secondary"
        elif res["queries_to_secondary"]:
            where = "a slice secondary; BIND by the updated named"
        else:
            where = "the primary itself; BIND by the updated named"
        print(f"\n(b) placement {pl}: {x['describe']}")
        print(f"    queries/s (dnsperf, {p['duration']:g} s per point; zoneslice answered by "
              f"{where}) while the primary takes updates"
              + ("; 'vs 0' = ratio to a 0 upd/s run made right before each point"
                 if paired else ""))
        if split:
            print("    setup before (b), not comparable to (a): "
                  + "; ".join(f"{n} {r['setup']['updates_per_s']:,.0f} upd/s pinned, secondary "
                              f"{r['setup']['catch_up']['status']}" for n, r in s.items()))
        names = list(s)
        both = "zoneslice" in s and "bind" in s
        if split and paired:
            print("    'vs 0 busy' = ratio to a 0 upd/s run with a CPU load unrelated to DNS on the "
                  f"update CPU ({UPDATE_CPU}); the two vCPUs share core resources, so 'vs 0 "
                  "busy' is the effect of the updates themselves")
        busy_col = split and paired
        print(f"{'upd/s':>6} " + " ".join(f"{n + ' qps':>15} {'vs 0':>6}"
                                          + (f" {'vs 0 busy':>9}" if busy_col else "")
                                          for n in names)
              + ("   zs/BIND" if both else "")
              + ("   secondary after the point" if split else "") + "   server CPU-s per point")
        for i, rate in enumerate(p["rates"]):
            row = f"{rate:>6} "
            for n in names:
                pt = s[n]["under_update"][i]
                base = pt.get("baseline_qps") or s[n]["under_update"][0]["qps"]
                row += f"{pt['qps']:>15,.0f} {100 * pt['qps'] / max(base, 1e-9):>5.1f}% "
                if busy_col:
                    nb = pt.get("busy_neighbour_baseline_qps")
                    row += f"{100 * pt['qps'] / nb:>8.1f}% " if nb else f"{'':>9} "
            if both:
                zs, bd = (s[n]["under_update"][i]["qps"] for n in ("zoneslice", "bind"))
                row += f"  {zs / max(bd, 1e-9):>7.2f}x"
            if split:
                row += "   " + "; ".join(
                    f"{n}: {s[n]['under_update'][i]['catch_up']['status']}" for n in names)
            row += "   " + "; ".join(
                ", ".join(f"{k} {v}" for k, v in s[n]["under_update"][i]["cpu_s"].items())
                for n in names)
            print(row)
            for n in names:
                reps = s[n]["under_update"][i].get("repeats")
                if reps:
                    print(f"{'':>7}{n}: median of {len(reps)} pairs; each 'vs 0': " + ", ".join(
                        f"{100 * r['qps'] / r['baseline_qps']:.1f}%" for r in reps)
                        + ("; each 'vs 0 busy': " + ", ".join(
                            f"{100 * r['qps'] / r['busy_neighbour_baseline_qps']:.1f}%"
                            for r in reps) if busy_col else ""))


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
