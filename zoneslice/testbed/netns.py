"""Thin wrappers over iproute2 for the local testbed: namespaces, links, their processes.

Every call is an ``ip`` command line so what the testbed did can be replayed by
hand; failures raise :class:`TestbedError` with the command and its stderr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from zoneslice.errors import TestbedError, ToolMissing

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the local testbed needs root (network namespaces, sshd)")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if not (os.path.exists(t) or shutil.which(t))]
    if missing:
        raise ToolMissing(
            f"missing {', '.join(missing)}: install iproute2 openssh-server openssh-client "
            "(scripts/setup.sh)"
        )


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [IP] + (["-n", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc


def ip_json(*args: str, ns: str | None = None) -> list[dict]:
    out = ip("-j", *args, ns=ns).stdout.strip()
    return json.loads(out) if out else []


def netns_list() -> set[str]:
    proc = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def link_exists(name: str, ns: str | None = None) -> bool:
    if ns is not None and not netns_exists(ns):
        return False
    return ip("link", "show", "dev", name, ns=ns, check=False).returncode == 0


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (what ``ip netns pids`` finds)."""
    if not netns_exists(name):
        return []
    proc = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True, timeout=30)
    return sorted(int(p) for p in proc.stdout.split() if p.isdigit())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pids(pids: Sequence[int], timeout: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL whatever is still there after ``timeout``; returns the stubborn."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        alive = [p for p in pids if _alive(p)]
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in alive if _alive(p)]
        if not alive:
            return []
    return [p for p in pids if _alive(p)]


def kill_netns_processes(name: str, timeout: float = 5.0) -> list[int]:
    return kill_pids(netns_pids(name), timeout)


def route_conflicts(network: ipaddress.IPv4Network) -> list[str]:
    """Host routes (the default route aside) and addresses that overlap ``network``."""
    found = []
    for r in ip_json("-4", "route", "show", "table", "all"):
        dst = r.get("dst", "default")
        if dst == "default":
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.overlaps(network):
            found.append(f"route {dst} dev {r.get('dev', '?')}")
    for link in ip_json("-4", "addr", "show"):
        for a in link.get("addr_info", []):
            if ipaddress.ip_address(a["local"]) in network:
                found.append(f"address {a['local']}/{a['prefixlen']} on {link.get('ifname')}")
    return found
