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
    testbed: dict[str, Any] | None = None


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
    testbed_servers: int = 0,
    stage: StageFn | None = None,
) -> DemoReport:
    """Generate, split, serve, replay, report; every server is stopped before returning.

    With ``testbed_servers`` (e.g. 13) the same slices are then deployed with Ansible to
    a local testbed of that many servers in network namespaces, health-checked, replayed
    through, and the testbed is taken down again.
    """
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
    testbed = None
    if testbed_servers:
        testbed = _testbed_stage(
            out, zonefile, result.manifest_path, trace, testbed_servers, parts, say, seconds
        )
    return DemoReport(
        directory=out,
        testbed=testbed,
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


def _testbed_stage(
    out: Path,
    zonefile: Path,
    manifest_path: Path,
    trace: Path,
    servers: int,
    parts: int,
    say: StageFn,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """testbed up -> Ansible deploy -> health check -> replay through the layout -> down."""
    from zoneslice.errors import DeployError
    from zoneslice.manifest import load_manifest
    from zoneslice.split import split_zone
    from zoneslice.testbed import local
    from zoneslice.testbed.deploy import deploy
    from zoneslice.testbed.health import check_health
    from zoneslice.trace.replay import replay

    whole = split_zone(zonefile, 1, out / "com.whole").manifest_path
    workdir = out / "testbed"
    local.testbed_down(workdir)
    t = time.monotonic()
    say(f"building the local testbed: {servers} servers in network namespaces with sshd")
    try:
        tb = local.testbed_up(servers, parts, workdir, manifest=manifest_path, whole_manifest=whole)
        seconds["testbed_up"] = time.monotonic() - t
        say("deploying with Ansible (ansible-runner over SSH)")
        result = deploy(tb.inventory_path)
        seconds["deploy"] = result.seconds
        if not result.ok:
            raise DeployError(f"deploy failed: {result.failure} (log: {result.log_path})")
        say("health check: every slice server answers its SOA and refuses other slices")
        health = check_health(tb.inventory_path)
        if not health.ok:
            raise DeployError(f"health check failed: {health.failures[:3]}")
        say("replaying the trace through the layout (one server per slice)")
        plan = load_manifest(manifest_path).plan
        targets = {g.index: (tb.layout.host(g.servers[0]).address, 53) for g in tb.layout.slices}
        t = time.monotonic()
        rep = replay(trace, plan, targets, mode="closed-loop", outstanding=20, timeout=2.0, limit=20000)
        seconds["testbed_replay"] = time.monotonic() - t
    finally:
        say("taking the testbed down")
        local.testbed_down(workdir)
    return {
        "servers": servers,
        "hosts": len(tb.layout.hosts),
        "deploy_seconds": round(result.seconds, 1),
        "health_checks": len(health.checks),
        "targets": {i: f"{a}:{p}" for i, (a, p) in targets.items()},
        "replay": rep,
    }
