"""`zoneslice serve --xdp` for real: UPDATEs never leave a stale XDP answer, live counts promote.

One node in a server namespace (`cli.py serve` of a whole-zone database, the
program attached in generic mode to its veth end, unsigned UPDATEs allowed from
the client address, hot set re-ranked every second), BIND's nsupdate and dig in
a client namespace. The program's counters come from ``STATS/xdp.json``, which
the serve parent rewrites twice a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dns.name
import dns.rdatatype
import pytest
from xdp_common import require_bpf

from datasets.gen_zone import generate_zone
from tests.netns import netns, require_netns, veth
from zoneslice.hot.hotset import write_counts
from zoneslice.split import split_zone
from zoneslice.store.db import connect_readonly
from zoneslice.store.keys import key_name

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
SRV, CLI = "10.53.43.1", "10.53.43.2"
NX = "zz-hot-nx.com."
PER_NAME = 40  # queries per name and round: workers count one query in 16

# Sends each "name type" line N times over UDP, prints how many got an answer.
BLAST = """
import socket, sys, dns.message
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
ok = 0
for line in sys.stdin:
    name, rdtype = line.split()
    for _ in range(int(sys.argv[2])):
        s.sendto(dns.message.make_query(name, rdtype, use_edns=0).to_wire(), (sys.argv[1], 53))
        try:
            s.recvfrom(65535)
            ok += 1
        except TimeoutError:
            pass
print(ok)
"""


def _cuts(db: Path) -> tuple[list[dns.name.Name], dict[dns.name.Name, list[dns.name.Name]]]:
    """Delegations in order, and the in-bailiwick glue names of each."""
    origin = dns.name.from_text("com.")
    conn = connect_readonly(db)
    try:
        keys = [
            k
            for (k,) in conn.execute(
                "SELECT DISTINCT rkey FROM rr WHERE rdtype = 2 AND rkey != x'' ORDER BY rkey"
            )
        ]
        addr = {
            key_name(k, origin)
            for (k,) in conn.execute("SELECT DISTINCT rkey FROM rr WHERE rdtype = 1")
        }
    finally:
        conn.close()
    cuts = [key_name(k, origin) for k in keys]
    glue = {c: sorted(a for a in addr if a.is_subdomain(c) and a != c) for c in cuts}
    return cuts, glue


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_bpf()
    require_netns()
    d = tmp_path_factory.mktemp("xdp-coh")
    generate_zone(d / "z.zone", delegations=600, seed=21)
    db = split_zone(d / "z.zone", 1, d / "whole").manifest.slice_path(0)
    cuts, glue = _cuts(db)
    inb = [c for c in cuts if glue[c]]
    hot = Counter({(b"\x03com\x00", 6): 1000, (b"\x03com\x00", 2): 900})
    hot[(dns.name.from_text(NX).to_wire(), 1)] = 800
    for c in inb[:60]:
        hot[(c.to_wire(), 2)] = 10
    write_counts(d / "hot.json", {0: hot})
    stats = d / "stats"
    with (
        netns("xcsrv") as srv,
        netns("xccli") as cli,
        veth(srv, cli, f"{SRV}/24", f"{CLI}/24", ethtool_off=("tx",)) as link,
    ):
        argv = [
            sys.executable, str(ROOT / "cli.py"), "serve", str(db),
            "--listen", f"{SRV}:53", "--workers", "1", "--stats", str(stats),
            "--xdp", link.a_if, "--xdp-mode", "generic", "--hot", "150",
            "--hot-counts", str(d / "hot.json"), "--hot-refresh", "1",
            "--allow-update", f"{CLI}/32",
        ]  # fmt: skip
        proc = srv.popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (stats / "xdp.json").exists() or not (stats / "server.json").exists():
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "serve --xdp did not come up"
                time.sleep(0.1)
            yield {"cli": cli, "srv": srv, "stats": stats, "inb": inb, "glue": glue, "link": link}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            out = srv.run(["ip", "-j", "link", "show", "dev", link.a_if]).stdout
            assert "xdp" not in json.loads(out)[0], "program left attached"
            assert proc.returncode == 0, err[-3000:]


def xdp_counters(stats: Path) -> dict[str, int]:
    """The program's counters as published after this call (waits for a fresh xdp.json)."""
    t = time.time()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = json.loads((stats / "xdp.json").read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("time", 0) > t:
            return data["counters"]
        time.sleep(0.05)
    raise AssertionError("xdp.json is not being refreshed")


def from_xdp(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[k] - before[k] for k in ("answered_exact", "answered_deleg"))


def dig(cli, name: str, rdtype: str = "A") -> str:
    return cli.run(
        ["dig", f"@{SRV}", name, rdtype, "+norecurse", "+nocookie", "+tries=1", "+time=3"],
        timeout=30,
    ).stdout


def nsupdate(cli, commands: str) -> None:
    script = f"server {SRV} 53\nzone com.\n{commands}\nsend\n"
    r = cli.run(["nsupdate", "-t", "5"], input=script, check=False, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def serial(text: str) -> int:
    line = next(x for x in text.splitlines() if "\tSOA\t" in x and not x.startswith(";"))
    return int(line.split()[6])


def test_update_then_query_never_sees_the_old_answer(node) -> None:
    cli, stats = node["cli"], node["stats"]
    cut = node["inb"][0]
    sib = node["glue"][cut][0]
    c0 = xdp_counters(stats)
    out = dig(cli, f"www.{cut}")
    soa0 = dig(cli, "com.", "SOA")
    c1 = xdp_counters(stats)
    assert "status: NOERROR" in out and f"{sib}" in out
    assert from_xdp(c0, c1) == 2, (c0, c1)

    for i in range(1, 5):  # glue of a hot delegation: the next referral carries the new address
        nsupdate(cli, f"update delete {sib} A\nupdate add {sib} 300 A 10.53.99.{i}")
        out = dig(cli, f"www.{cut}")
        assert f"10.53.99.{i}" in out.split("ADDITIONAL SECTION")[1], out
    c2 = xdp_counters(stats)
    assert from_xdp(c1, c2) == 4, "the updated referrals should still come from XDP"

    nsupdate(cli, f"update delete {cut} NS\nupdate add {cut} 300 NS ns9.elsewhere.net.")
    out = dig(cli, f"mail.{cut}")
    auth = out.split("AUTHORITY SECTION")[1]
    assert "ns9.elsewhere.net." in auth and f"{sib}" not in auth, out

    soa = dig(cli, "com.", "SOA")
    nx = dig(cli, NX)
    assert serial(soa) > serial(soa0)
    assert "status: NXDOMAIN" in nx and serial(nx) == serial(soa)
    c3 = xdp_counters(stats)
    assert from_xdp(c2, c3) == 3, (c2, c3)

    # sibling glue appearing for a name only the NS rdata of a hot referral mentions
    other = node["inb"][2]
    nsupdate(cli, f"update delete {cut} NS\nupdate add {cut} 300 NS zs-new.{other}")
    assert "10.53.98.7" not in dig(cli, f"www.{cut}")
    nsupdate(cli, f"update add zs-new.{other} 300 A 10.53.98.7")
    out = dig(cli, f"www.{cut}")
    assert f"zs-new.{other}" in out and "10.53.98.7" in out.partition("ADDITIONAL SECTION")[2], out
    assert from_xdp(c3, xdp_counters(stats)) == 2


def test_deleted_delegation_is_nxdomain_at_once(node) -> None:
    cli, stats = node["cli"], node["stats"]
    cut = node["inb"][1]
    c0 = xdp_counters(stats)
    assert "AUTHORITY SECTION" in dig(cli, f"www.{cut}")
    assert from_xdp(c0, xdp_counters(stats)) == 1
    nsupdate(cli, f"update delete {cut}")
    out = dig(cli, f"www.{cut}")
    assert "status: NXDOMAIN" in out and f"{cut}\t" not in out.split("AUTHORITY SECTION")[1], out


def test_live_counts_promote_cold_names(node) -> None:
    cli, stats = node["cli"], node["stats"]
    cold = node["inb"][100:115]
    lines = "".join(f"{c} A\n" for c in cold)
    before = xdp_counters(stats)
    sent = answered = 0
    deadline = time.monotonic() + 20
    first = None
    while time.monotonic() < deadline:
        c0 = xdp_counters(stats)
        r = cli.run([sys.executable, "-c", BLAST, SRV, str(PER_NAME)], input=lines, timeout=60)
        n = int(r.stdout)
        c1 = xdp_counters(stats)
        assert n == PER_NAME * len(cold)
        if first is None:
            first = c1["answered_deleg"] - c0["answered_deleg"]
        sent += n
        answered = c1["answered_deleg"] - c0["answered_deleg"]
        if answered == n:
            break
        time.sleep(0.5)
    assert first == 0, "the cold names were in the maps from the start"
    assert answered == n, f"not promoted within 20 s ({answered}/{n})"
    data = json.loads((stats / "xdp.json").read_text())
    assert data["refreshes"] >= 1 and data["counters"]["pass_miss"] > before["pass_miss"]
    assert os.path.exists(stats / "xdp.json")
