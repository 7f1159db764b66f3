"""Network namespaces and veth pairs for tests and benches, always cleaned up.

::

    with netns("srv") as srv, netns("cli") as cli, \\
            veth(srv, cli, "10.53.0.1/24", "10.53.0.2/24") as link:
        server = srv.popen(["nsd", "-d", "-c", conf])
        cli.run(["dig", "@10.53.0.1", "com.", "SOA"])

Leaving a ``netns`` block kills every process still inside the namespace
(SIGTERM, then SIGKILL) and deletes it, which also removes its veth ends, even
when the block raised. Names carry the creating pid (``zs-<tag>-<pid>-<n>``),
so parallel runs never collide and :func:`remove_stale` can clean up after a
run that was killed. Addresses must be inside 10.53.0.0/16.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

ALLOWED = ipaddress.ip_network("10.53.0.0/16")
_seq = itertools.count()
_NAME = re.compile(r"^zs-[a-z0-9]+-(\d+)-\d+$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def check_address(cidr: str) -> ipaddress.IPv4Interface:
    """``cidr`` as an interface address, refused unless inside 10.53.0.0/16."""
    iface = ipaddress.ip_interface(cidr)
    if iface.ip not in ALLOWED:
        raise ValueError(f"{cidr}: test networks must use 10.53.0.0/16")
    return iface  # type: ignore[return-value]


def missing_privileges() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def require_netns() -> None:
    """Skip the calling test without root/iproute2, or fail it when CI is set."""
    import pytest

    why = missing_privileges()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


class Netns:
    """A named network namespace; run programs inside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.argv(cmd), check=check, **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), **kw)

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(x) for x in out.split()]

    def kill_all(self, grace: float = 3.0) -> None:
        """SIGTERM every process inside, SIGKILL what is left after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def _name(tag: str) -> str:
    tag = re.sub(r"[^a-z0-9]", "", tag.lower())[:8] or "ns"
    return f"zs-{tag}-{os.getpid()}-{next(_seq)}"


@contextlib.contextmanager
def netns(tag: str = "ns") -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up; on exit its processes are killed and it is deleted."""
    ns = Netns(_name(tag))
    _ip("netns", "add", ns.name)
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
        yield ns
    finally:
        try:
            ns.kill_all()
        finally:
            _ip("netns", "delete", ns.name, check=False)


@dataclass
class Veth:
    """Both ends of a veth pair: interface names and addresses (without prefix length)."""

    a_ns: Netns | None
    a_if: str
    a_addr: str
    b_ns: Netns | None
    b_if: str
    b_addr: str


def _in(ns: Netns | None, *args: str) -> None:
    cmd = ["ip", *args]
    if ns is None:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    else:
        ns.run(cmd)


@contextlib.contextmanager
def veth(
    a: Netns | None,
    b: Netns | None,
    a_cidr: str,
    b_cidr: str,
    *,
    mtu: int | None = None,
    ethtool_off: Sequence[str] = (),
) -> Iterator[Veth]:
    """A veth pair between namespaces ``a`` and ``b`` (None = the root namespace).

    ``ethtool_off`` turns offloads off on both ends (e.g. ``("gro", "tso")``),
    which XDP tests may need.
    """
    ai, bi = check_address(a_cidr), check_address(b_cidr)
    n = next(_seq)
    a_if, b_if = f"zs{os.getpid() % 100000}a{n}"[:15], f"zs{os.getpid() % 100000}b{n}"[:15]
    _ip("link", "add", a_if, "type", "veth", "peer", "name", b_if)
    try:
        for ns, ifname, iface in ((a, a_if, ai), (b, b_if, bi)):
            if ns is not None:
                _ip("link", "set", ifname, "netns", ns.name)
            _in(ns, "addr", "add", str(iface), "dev", ifname)
            if mtu:
                _in(ns, "link", "set", ifname, "mtu", str(mtu))
            _in(ns, "link", "set", ifname, "up")
            if ethtool_off:
                cmd = [
                    "ethtool",
                    "-K",
                    ifname,
                    *itertools.chain(*((f, "off") for f in ethtool_off)),
                ]
                ns.run(cmd) if ns else subprocess.run(cmd, check=True, capture_output=True)
        yield Veth(a, a_if, str(ai.ip), b, b_if, str(bi.ip))
    finally:
        for ns, ifname in ((a, a_if), (b, b_if)):
            args = ["link", "del", ifname]
            if ns is None:
                _ip(*args, check=False)
            else:
                ns.run(["ip", *args], check=False)


def remove_stale() -> list[str]:
    """Delete ``zs-*`` namespaces left by processes that no longer exist; returns their names."""
    out = _ip("netns", "list", check=False).stdout
    gone = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        ns = Netns(name)
        ns.kill_all(grace=1.0)
        _ip("netns", "delete", name, check=False)
        gone.append(name)
    return gone
