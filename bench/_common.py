"""What the benchmark commands share: a log line, the cached test zone, pinning, one
scheduler group, dnsperf."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_slices(workdir: Path, delegations: int, seed: int, parts: int) -> tuple[Path, Path]:
    """Zone file and slice directory, reused when already built with the same parameters."""
    from datasets.gen_zone import generate_zone
    from zoneslice.split import split_zone

    d = workdir / f"zone-{delegations}-{seed}"
    zone, slices = d / "zone.txt", d / f"slices-{parts}"
    if not (slices / "manifest.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        if not zone.exists():
            t = time.monotonic()
            st = generate_zone(zone, delegations=delegations, seed=seed)
            log(f"zone: {st.records} records in {time.monotonic() - t:.1f} s")
        shutil.rmtree(slices, ignore_errors=True)
        t = time.monotonic()
        split_zone(zone, parts, slices)
        log(f"split in {parts}: {time.monotonic() - t:.1f} s")
    return zone, slices


def taskset(cpu: int | None) -> list[str]:
    """The command prefix that pins a process and its threads to ``cpu`` (none: no pinning)."""
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


PROC = Path("/proc")


def autogroup(pid: int, proc: Path = PROC) -> str | None:
    """The scheduler autogroup of ``pid`` ("/autogroup-N"), or None when autogroup is off.

    With ``kernel.sched_autogroup_enabled`` (Debian's default) every session is one CFS
    group, and a group's weight is shared out over the CPUs it runs on. A server started in
    its own session (``setsid``) next to a dnsperf whose session also runs work on the other
    CPU therefore gets most of the query CPU, dnsperf too little, and the measured rate
    halves whenever that other work runs. Benchmarks keep every process in one group.
    A process that no ``setsid`` ever touched (a child of PID 1, as under some CI
    runners) is in the root group, whose file is empty: that is "/".
    """
    try:
        if (proc / "sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
            return None
        fields = (proc / str(pid) / "autogroup").read_text().split()
    except OSError:
        return None
    return fields[0] if fields else "/"


def check_one_sched_group(pids: dict[str, int], proc: Path = PROC) -> None:
    """Fail unless every named process is in this process's scheduler autogroup."""
    own = autogroup(os.getpid(), proc)
    if own is None:
        return
    apart = {name: got for name, pid in pids.items()
             if (got := autogroup(pid, proc)) not in (own, None)}
    if apart:
        raise RuntimeError(f"not in the bench's scheduler group {own}: {apart}")


def wait_soa(port: int, *, addr: str = LOOPBACK, proc: subprocess.Popen[Any] | None = None,
             timeout: float = 120.0) -> None:
    """Wait until ``addr:port`` answers the com. SOA with NOERROR (fail at once if ``proc``,
    the server, has exited)."""
    import dns.exception
    import dns.message
    import dns.query

    q = dns.message.make_query("com.", "SOA")
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server on {addr}:{port} exited {proc.returncode}")
        with contextlib.suppress(OSError, dns.exception.Timeout):
            if dns.query.udp(q, addr, port=port, timeout=0.5).rcode() == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on {addr}:{port}")
        time.sleep(0.2)


def dnsperf(port: int, queries: Path, seconds: float, clients: int, outstanding: int,
            passes: int | None = None, cpu: int | None = None,
            addr: str = LOOPBACK) -> subprocess.Popen[str]:
    """dnsperf on ``queries`` for ``seconds`` (or ``passes`` over the file, if sooner),
    pinned to ``cpu``; stdout and stderr together in ``.stdout``."""
    cmd = [*taskset(cpu), "dnsperf", "-s", addr, "-p", str(port), "-d", str(queries),
           "-l", str(seconds), "-c", str(clients), "-q", str(outstanding), "-t", "2"]
    if passes:
        cmd += ["-n", str(passes)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
