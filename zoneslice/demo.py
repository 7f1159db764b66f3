"""The main job on a built-in default: generate a zone, split it, serve every slice,
replay a generated F-root-like trace through the slices and report.

Each stage is the real one: the engine runs as ``zoneslice serve`` processes on
loopback sockets, the trace is a pcap file read back by the capture reader.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from zoneslice.errors import ServeError
from zoneslice.manifest import Manifest

StageFn = Callable[[str], None]


@dataclass
class DemoReport:
    directory: Path
    zone: dict[str, Any]
    split: dict[str, Any]
    manifest: Manifest
    trace: dict[str, Any]
    characterization: Any
    replay: Any
    servers: dict[int, tuple[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_soa(addr: str, port: int, origin: str, proc: subprocess.Popen, deadline: float) -> None:
    q = dns.message.make_query(origin, dns.rdatatype.SOA)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"zoneslice serve on {addr}:{port} exited with {proc.returncode}")
        try:
            dns.query.udp(q, addr, port=port, timeout=0.3)
            return
        except (OSError, dns.exception.Timeout):
            time.sleep(0.1)
    raise ServeError(f"zoneslice serve on {addr}:{port} did not answer within its start-up time")


def start_slice_servers(
    manifest_path: Path, manifest: Manifest, workers: int = 1, addr: str = "127.0.0.1"
) -> tuple[dict[int, tuple[str, int]], list[subprocess.Popen]]:
    """One ``zoneslice serve`` process per slice on loopback; returns their addresses."""
    servers: dict[int, tuple[str, int]] = {}
    procs: list[subprocess.Popen] = []
    exe = [sys.executable, "-m", "cli"] if not _zoneslice_exe() else [_zoneslice_exe()]
    try:
        for s in manifest.slices:
            port = _free_port()
            cmd = exe + [
                "serve", "--manifest", str(manifest_path), "--slice", str(s.index),
                "--listen", f"{addr}:{port}", "--workers", str(workers),
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(proc)
            _wait_soa(addr, port, manifest.origin, proc, time.monotonic() + 30)
            servers[s.index] = (addr, port)
    except BaseException:
        stop_servers(procs)
        raise
    return servers, procs


def _zoneslice_exe() -> str | None:
    exe = Path(sys.executable).parent / "zoneslice"
    return str(exe) if exe.exists() else None


def stop_servers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(
    directory: str | os.PathLike[str],
    *,
    delegations: int = 20000,
    parts: int = 3,
    queries: int = 50000,
    seed: int = 1,
    workers: int = 1,
    stage: StageFn | None = None,
) -> DemoReport:
    """Generate, split, serve, replay, report; every server is stopped before returning."""
    from dataclasses import asdict

    from datasets.gen_trace import TraceParams, generate, names_from_zone
    from datasets.gen_zone import generate_zone
    from zoneslice.split import split_zone
    from zoneslice.trace.characterize import characterize
    from zoneslice.trace.replay import replay

    say = stage or (lambda _msg: None)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t = time.monotonic()
    say(f"generating a .com-like zone with {delegations:,} delegations")
    zonefile = out / "com.zone"
    zstats = generate_zone(zonefile, delegations, seed=seed, origin="com.")
    seconds["generate"] = time.monotonic() - t

    t = time.monotonic()
    say(f"splitting it into {parts} slices")
    result = split_zone(zonefile, parts, out / "com.slices")
    manifest = result.manifest
    seconds["split"] = time.monotonic() - t

    t = time.monotonic()
    say(f"generating an F-root-like trace of {queries:,} queries")
    trace = out / "trace.pcap"
    names = names_from_zone(zonefile, manifest.plan.origin)
    tsum = generate(trace, names, manifest.origin, TraceParams(queries=queries, seed=seed, duration=300.0))
    char = characterize(trace, plan=manifest.plan)
    seconds["trace"] = time.monotonic() - t

    t = time.monotonic()
    say(f"starting {parts} slice servers (zoneslice serve)")
    servers, procs = start_slice_servers(result.manifest_path, manifest, workers=workers)
    try:
        seconds["serve_start"] = time.monotonic() - t
        t = time.monotonic()
        say("replaying the trace, partitioned by slice (closed loop, 20 outstanding)")
        rep = replay(trace, manifest.plan, servers, mode="closed-loop", outstanding=20, timeout=2.0)
        seconds["replay"] = time.monotonic() - t
    finally:
        stop_servers(procs)
    return DemoReport(
        directory=out,
        zone=asdict(zstats),
        split={
            "seconds": round(result.seconds, 3),
            "records_per_second": round(result.records_per_second),
            "peak_rss_mib": round(result.peak_rss_mib, 1),
        },
        manifest=manifest,
        trace=asdict(tsum),
        characterization=char,
        replay=rep,
        servers=servers,
        seconds=seconds,
    )
