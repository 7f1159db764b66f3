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
                "serve",
                "--manifest",
                str(manifest_path),
                "--slice",
                str(s.index),
                "--listen",
                f"{addr}:{port}",
                "--workers",
                str(workers),
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


def stop_servers(procs: list[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGTERM all at once (they shut down in parallel), SIGKILL what is left after
    ``timeout`` (the whole process group when the server leads one, so that its workers
    go too): the one way servers are stopped here, in benchmarks and in tests."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                leads_group = os.getpgid(proc.pid) == proc.pid
            except ProcessLookupError:
                leads_group = False
            if leads_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
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
    tsum = generate(
        trace, names, manifest.origin, TraceParams(queries=queries, seed=seed, duration=300.0)
    )
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
    updates: int = 1000,
) -> dict[str, Any]:
    """testbed up -> Ansible deploy -> health check -> replay through the layout while the
    primary takes ``updates`` UPDATEs from nsupdate -> every slice server at the new serial
    -> down.

    The slice servers are IXFR secondaries of the primary and answer their hot set from XDP.
    """
    from zoneslice.errors import DeployError
    from zoneslice.manifest import load_manifest
    from zoneslice.split import split_zone
    from zoneslice.testbed import local
    from zoneslice.testbed.deploy import deploy
    from zoneslice.testbed.health import check_health
    from zoneslice.trace.replay import replay
    from zoneslice.updates.updgen import write_stream

    whole = split_zone(zonefile, 1, out / "com.whole").manifest_path
    workdir = out / "testbed"
    local.testbed_down(workdir)
    t = time.monotonic()
    say(f"building the local testbed: {servers} servers in network namespaces with sshd")
    try:
        tb = local.testbed_up(
            servers, parts, workdir, manifest=manifest_path, whole_manifest=whole,
            secondaries=True, xdp=True,
        )  # fmt: skip
        seconds["testbed_up"] = time.monotonic() - t
        say("deploying with Ansible (ansible-runner over SSH): primary, IXFR secondaries, XDP")
        result = deploy(tb.inventory_path)
        seconds["deploy"] = result.seconds
        if not result.ok:
            raise DeployError(f"deploy failed: {result.failure} (log: {result.log_path})")
        say("health check: SOA and slice ranges everywhere, a TSIG UPDATE reaching every slice")
        health = check_health(tb.inventory_path)
        if not health.ok:
            raise DeployError(f"health check failed: {health.failures[:3]}")
        primary = (tb.layout.host(tb.layout.primary).address, 53)
        stream, ops = write_stream(
            zonefile, out / "updates.nsupdate", updates, seed=7, server=primary
        )
        say(f"replaying the trace through the layout while nsupdate sends {updates:,} UPDATEs")
        plan = load_manifest(manifest_path).plan
        targets = {g.index: (tb.layout.host(g.servers[0]).address, 53) for g in tb.layout.slices}
        t = time.monotonic()
        sender = subprocess.Popen(
            ["nsupdate", "-k", str(workdir / local.TSIG_KEY), str(stream)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        rep = replay(
            trace, plan, targets, mode="closed-loop", outstanding=20, timeout=2.0, limit=20000
        )
        seconds["testbed_replay"] = time.monotonic() - t
        output, _ = sender.communicate(timeout=600)
        update_seconds = time.monotonic() - t
        if sender.returncode != 0:
            raise DeployError(f"nsupdate failed ({sender.returncode}): {output.strip()[-500:]}")
        say("waiting for every slice server to reach the primary's serial")
        serial, lag = _converged(
            primary, [(h.address, 53) for h in tb.layout.slice_servers], plan.origin
        )
        xdp = _xdp_counters(workdir, [h.name for h in tb.layout.slice_servers])
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
        "updates": {
            "messages": updates,
            "operations": ops,
            "seconds": round(update_seconds, 1),
            "serial": serial,
            "converged_after": round(lag, 2),
        },
        "xdp": xdp,
    }


def _xdp_counters(workdir: Path, hosts: list[str]) -> dict[str, int]:
    """The XDP program's counters summed over the slice servers (their ``xdp.json``)."""
    import json

    total: dict[str, int] = {}
    for name in hosts:
        path = workdir / "hosts" / name / "run" / "stats" / "xdp.json"
        try:
            counters = json.loads(path.read_text())["counters"]
        except (OSError, ValueError, KeyError):
            continue
        for k, v in counters.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _converged(
    primary: tuple[str, int], servers: list[tuple[str, int]], origin: Any, timeout: float = 60.0
) -> tuple[int, float]:
    """The primary's serial and how long until every server answered it (error after ``timeout``)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    from zoneslice.errors import DeployError

    def serial(where: tuple[str, int]) -> int | None:
        q = dns.message.make_query(origin, dns.rdatatype.SOA)
        try:
            r = dns.query.udp(q, where[0], port=where[1], timeout=1.0)
        except Exception:  # noqa: BLE001 - a timeout or a bad answer: not there yet
            return None
        soa = [rr for rrset in r.answer if rrset.rdtype == dns.rdatatype.SOA for rr in rrset]
        return soa[0].serial if soa else None

    want = serial(primary)
    if want is None:
        raise DeployError(f"the primary {primary[0]} does not answer its SOA")
    t0 = time.monotonic()
    behind = list(servers)
    while behind:
        behind = [w for w in behind if serial(w) != want]
        if not behind:
            break
        if time.monotonic() - t0 > timeout:
            raise DeployError(
                f"slice servers {', '.join(a for a, _ in behind)} not at serial {want} "
                f"{timeout:.0f} s after the last update"
            )
        time.sleep(0.2)
    return want, time.monotonic() - t0
