"""Knot DNS (Debian knotd) as a secondary of the zoneslice primary: it loads the zone file at
the first serial, is NOTIFYed after an nsupdate, takes IXFR (its log says so) and then gives
the same answers as the primary for generated queries (rcode, AA, answer; authority of
referrals and negative answers)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from datasets.gen_zone import generate_zone
from tests.nsd import free_port
from zoneslice.engine.server import Background
from zoneslice.split import split_zone
from zoneslice.store.keys import key_name
from zoneslice.updates.primary import primary_role_factory

PRIMARY = "127.0.0.41"
KNOT = "127.0.0.42"

pytestmark = pytest.mark.skipif(
    shutil.which("knotd") is None or shutil.which("nsupdate") is None,
    reason="knot and bind9-dnsutils are not installed",
)


def knot_conf(d: Path, port: int, pport: int) -> str:
    return f"""server:
    rundir: "{d}"
    listen: {KNOT}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: "{d}/knot.log"
    any: info
database:
    storage: "{d}"
remote:
  - id: primary
    address: {PRIMARY}@{pport}
acl:
  - id: notify_from_primary
    address: 127.0.0.0/8
    action: notify
zone:
  - domain: com.
    storage: "{d}"
    file: "{d}/com.zone"
    master: primary
    acl: notify_from_primary
    zonefile-sync: -1
    semantic-checks: off
"""


def serial_of(addr: str, port: int) -> int | None:
    try:
        r = dns.query.udp(dns.message.make_query("com.", "SOA"), addr, port=port, timeout=1)
        return int(r.answer[0][0].serial) if r.answer else None
    except Exception:  # noqa: BLE001 - not up yet
        return None


def view(r: dns.message.Message) -> tuple:
    def norm(section):
        return sorted(rr.to_text() for rr in section)

    positive = bool(r.answer) and bool(r.flags & dns.flags.AA)
    # Knot leaves the apex NS out of positive answers (NSD and zoneslice add it): not compared
    return (r.rcode(), bool(r.flags & dns.flags.AA), norm(r.answer),
            [] if positive else norm(r.authority))  # fmt: skip


def test_knot_secondary_takes_ixfr(tmp_path: Path) -> None:
    zone = tmp_path / "com.zone"
    generate_zone(zone, 800, seed=21)
    db = split_zone(zone, 1, tmp_path / "whole").manifest.slice_path(0)
    kdir = tmp_path / "knot"
    kdir.mkdir()
    shutil.copy(zone, kdir / "com.zone")
    pport, kport = free_port(PRIMARY), free_port(KNOT)
    (kdir / "knot.conf").write_text(knot_conf(kdir, kport, pport))
    with Background(db, [(PRIMARY, pport)], workers=1, axfr_allow=["127.0.0.0/8"],
                    role=primary_role_factory(db, {}, allow_unsigned=["127.0.0.0/8"],
                                              notify=[(KNOT, kport)])):  # fmt: skip
        knot = subprocess.Popen(["knotd", "-c", str(kdir / "knot.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, process_group=0)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while serial_of(KNOT, kport) is None:
                assert knot.poll() is None, knot.stderr.read().decode()
                assert time.monotonic() < deadline, "knotd did not start"
                time.sleep(0.1)
            s0 = serial_of(KNOT, kport)
            script = (f"server {PRIMARY} {pport}\nzone com.\n"
                      "update add knot-test.com. 3600 NS ns1.knot-test.com.\n"
                      "update add ns1.knot-test.com. 3600 A 192.0.2.88\nsend\n")  # fmt: skip
            r = subprocess.run(["nsupdate", "-t", "10"], input=script, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
            assert r.returncode == 0, r.stderr
            want = serial_of(PRIMARY, pport)
            assert want == s0 + 1
            while serial_of(KNOT, kport) != want:
                assert time.monotonic() < deadline + 30, (kdir / "knot.log").read_text()[-2000:]
                time.sleep(0.1)
            log = (kdir / "knot.log").read_text()
            assert "IXFR, incoming" in log and "AXFR, incoming" not in log, log[-2000:]
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
                keys = [k for (k,) in c.execute("SELECT DISTINCT rkey FROM rr ORDER BY rkey")]
            names = [key_name(k, dns.name.from_text("com.")) for k in keys[:: max(1, len(keys) // 40)]]
            names.append(dns.name.from_text("www.knot-test.com."))
            for name in names:
                for rdtype in ("A", "NS", "SOA", "TXT"):
                    q = dns.message.make_query(name, rdtype)
                    q.flags &= ~dns.flags.RD
                    a = dns.query.udp(q, KNOT, port=kport, timeout=3)
                    b = dns.query.udp(q, PRIMARY, port=pport, timeout=3)
                    assert view(b) == view(a), (name, rdtype)
        finally:
            knot.send_signal(signal.SIGTERM)
            try:
                knot.wait(10)
            except subprocess.TimeoutExpired:
                knot.kill()
                knot.wait(10)
            knot.stderr.close()
