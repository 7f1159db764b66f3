"""Replication with real parts: a zoneslice primary (whole zone, UPDATEs, per-slice projection,
NOTIFY), three zoneslice slice servers (SecondaryRole) and NSD as an IXFR secondary, all on
127.0.0.x loopback addresses; nsupdate and dig as clients.

- dig axfr / dig ixfr=SERIAL (TCP: incremental or AXFR form; UDP: the SOA only);
- a glue address change reaches every slice holding a sibling-glue copy, and every slice
  database equals slice_records() of the primary's zone after each step;
- an UPDATE sent to a slice server is forwarded with its TSIG and relayed;
- NSD takes IXFR from the primary and answers like it for generated queries;
- a slice server killed with SIGKILL in the middle of an IXFR apply restarts with its old
  serial and content intact, then catches up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest

from datasets.gen_zone import generate_zone
from tests.nsd import NsdServer, free_port
from zoneslice import journal
from zoneslice.engine.server import Background
from zoneslice.store.keys import key_name
from zoneslice.updates.acl import load_keys
from zoneslice.updates.primary import primary_role_factory
from zoneslice.xfr import secondary as secondary_mod
from zoneslice.xfr.projection import Projector, slice_records, target_key
from zoneslice.xfr.secondary import secondary_role_factory
from zoneslice.xfr.transfer import SLICE_OPTION, keyed_responder_factory

SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
PRIMARY = "127.0.0.11"
SLICES = ["127.0.0.12", "127.0.0.13", "127.0.0.14"]
NSD_ADDR = "127.0.0.21"
PARTS = 3

pytestmark = pytest.mark.skipif(
    shutil.which("nsupdate") is None or shutil.which("dig") is None,
    reason="bind9-dnsutils (nsupdate, dig) not installed",
)


def rows_of(path: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
        got = c.execute("SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr").fetchall()
    return sorted(got, key=lambda r: (r[0], r[1], r[2], r[3]))


def soa_serial(addr: str, port: int) -> int:
    r = dns.query.udp(dns.message.make_query("com.", "SOA"), addr, port=port, timeout=2)
    return int(r.answer[0][0].serial)


def wait_serial(targets: list[tuple[str, int]], serial: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = []
        for addr, port in targets:
            try:
                got.append(soa_serial(addr, port))
            except Exception:  # noqa: BLE001 - not up yet
                got.append(None)
        if all(g == serial for g in got):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"serials {got} did not reach {serial}")
        time.sleep(0.1)


def nsupdate(addr: str, port: int, commands: str, *key: str) -> None:
    script = f"server {addr} {port}\nzone com.\n{commands}\nsend\n"
    r = subprocess.run(["nsupdate", "-t", "10", *key], input=script, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def dig(*args: str) -> list[str]:
    out = subprocess.run(["dig", "+nocmd", "+nostats", "+tries=1", "+time=5", *args],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return [ln for ln in out.stdout.splitlines() if ln and not ln.startswith(";")]


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        zone = tmp / "com.zone"
        generate_zone(zone, 1500, seed=11)
        from zoneslice.split import split_zone

        self.zone = zone
        self.whole = split_zone(zone, 1, tmp / "whole").manifest
        self.sliced = split_zone(zone, PARTS, tmp / "parts").manifest
        self.plan = self.sliced.plan
        self.db = self.whole.slice_path(0)
        self.serial0 = self.whole.serial
        keyfile = tmp / "keys.conf"
        keyfile.write_text(f'key "k1" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n')
        self.ring = load_keys(keyfile)
        proj = Projector(self.plan)
        with contextlib.closing(sqlite3.connect(self.db, isolation_level=None)) as c:
            proj.install(c)
        self.pport = free_port(PRIMARY)
        self.sports = [free_port(a) for a in SLICES]
        self.nport = free_port(NSD_ADDR)
        targets = list(zip(SLICES, self.sports, strict=True)) + [(NSD_ADDR, self.nport)]
        self.stack = contextlib.ExitStack()
        self.primary = self.stack.enter_context(Background(
            self.db, [(PRIMARY, self.pport)], workers=1, axfr_allow=["127.0.0.0/8"],
            role=primary_role_factory(self.db, self.ring, allow_unsigned=["127.0.0.0/8"],
                                      in_transaction=proj.in_transaction, notify=targets),
            responder_factory=keyed_responder_factory(self.ring),
        ))  # fmt: skip
        self.slices = []
        for i, addr in enumerate(SLICES):
            self.slices.append(self.stack.enter_context(Background(
                self.sliced.slice_path(i), [(addr, self.sports[i])], workers=1,
                role=secondary_role_factory((PRIMARY, self.pport), refresh=60,
                                            keyring=self.ring if i == 0 else None),
            )))  # fmt: skip
        self.nsd_dir = tmp / "nsd"
        self.nsd_dir.mkdir()
        nsd_zone = self.nsd_dir / "com.zone"
        shutil.copy(zone, nsd_zone)
        self.nsd = NsdServer(nsd_zone, "com.", addr=NSD_ADDR, port=self.nport, extra_zone=[
            f"request-xfr: {PRIMARY}@{self.pport} NOKEY", "allow-notify: 127.0.0.0/8 NOKEY",
        ])  # fmt: skip
        try:
            self.stack.enter_context(self.nsd)
        except BaseException:
            self.stack.close()
            raise

    @property
    def slice_addrs(self) -> list[tuple[str, int]]:
        return list(zip(SLICES, self.sports, strict=True))

    def serial(self) -> int:
        return soa_serial(PRIMARY, self.pport)

    def check_slices(self) -> None:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            for i in range(PARTS):
                assert rows_of(self.sliced.slice_path(i)) == slice_records(c, self.plan, i), i


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    cl = Cluster(tmp_path_factory.mktemp("xfr"))
    try:
        yield cl
    finally:
        cl.stack.close()


def test_dig_axfr_and_ixfr(cluster: Cluster) -> None:
    port = str(cluster.pport)
    nsupdate(PRIMARY, cluster.pport, "update add dig-test.com. 3600 NS ns1.dig-test.com.\n"
             "update add ns1.dig-test.com. 3600 A 192.0.2.53")  # fmt: skip
    serial = cluster.serial()
    assert serial == cluster.serial0 + 1 or serial > cluster.serial0
    axfr = dig(f"@{PRIMARY}", "-p", port, "com.", "AXFR")
    with contextlib.closing(sqlite3.connect(f"file:{cluster.db}?mode=ro", uri=True)) as c:
        nrows = c.execute("SELECT count(*) FROM rr").fetchone()[0]
    assert len(axfr) == nrows + 1  # the SOA twice
    assert "dig-test.com.\t\t3600\tIN\tNS\tns1.dig-test.com." in axfr
    ixfr = dig(f"@{PRIMARY}", "-p", port, "com.", f"IXFR={cluster.serial0}")
    soas = [ln.split()[6] for ln in ixfr if "\tSOA\t" in ln]
    assert soas[0] == soas[-1] == str(serial) and soas[1] == str(cluster.serial0)
    assert any(ln.startswith("ns1.dig-test.com.") for ln in ixfr)
    assert len(ixfr) < 20
    udp = dig(f"@{PRIMARY}", "-p", port, "+notcp", "com.", f"IXFR={cluster.serial0}")
    assert len(udp) == 1 and udp[0].split()[6] == str(serial)
    # a serial the journal does not know: AXFR form
    old = dig(f"@{PRIMARY}", "-p", port, "com.", f"IXFR={cluster.serial0 - 5}")
    assert len(old) == len(axfr)
    # up to date: the SOA alone
    same = dig(f"@{PRIMARY}", "-p", port, "com.", f"IXFR={serial}")
    assert len(same) == 1
    # several commits behind: one condensed step with each record's net change only
    nsupdate(PRIMARY, cluster.pport, "update delete ns1.dig-test.com. A\n"
             "update add ns1.dig-test.com. 3600 A 192.0.2.54")  # fmt: skip
    nsupdate(PRIMARY, cluster.pport, "update add ns1.dig-test.com. 3600 A 192.0.2.55")
    newest = cluster.serial()
    many = dig(f"@{PRIMARY}", "-p", port, "com.", f"IXFR={cluster.serial0}")
    soas = [ln.split()[6] for ln in many if "\tSOA\t" in ln]
    assert soas == [str(newest), str(cluster.serial0), str(newest), str(newest)]
    body = [ln.split("\t")[-1] for ln in many if ln.startswith("ns1.dig-test.com.")]
    assert sorted(body) == ["192.0.2.54", "192.0.2.55"]
    step = dig(f"@{PRIMARY}", "-p", port, "com.", f"IXFR={serial}")
    assert [ln.split("\t")[-1] for ln in step if ln.startswith("ns1.dig-test.com.")] == [
        "192.0.2.53", "192.0.2.54", "192.0.2.55"]


def test_slice_option_contract(cluster: Cluster) -> None:
    q = dns.message.make_query("com.", "AXFR", use_edns=0, options=[
        dns.edns.GenericOption(SLICE_OPTION, (0).to_bytes(2, "big") + (5).to_bytes(2, "big"))])
    r = dns.query.tcp(q, PRIMARY, port=cluster.pport, timeout=10)
    assert r.rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("com.", "AXFR", use_edns=0, options=[
        dns.edns.GenericOption(SLICE_OPTION, (1).to_bytes(2, "big") + (PARTS).to_bytes(2, "big"))])
    r = dns.query.tcp(q, PRIMARY, port=cluster.pport, timeout=10, one_rr_per_rrset=True)
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].rdtype == dns.rdatatype.SOA
    (opt,) = [o for o in r.options if o.otype == SLICE_OPTION]
    assert len(opt.to_wire()) == 4 + len(r.answer)


def test_transfer_tsig(cluster: Cluster) -> None:
    """Signed transfers verify (dnspython checks every message); a wrong key is refused."""
    good = dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", SECRET)})
    msgs = list(dns.query.xfr(PRIMARY, "com.", port=cluster.pport, keyring=good, keyname="k1.",
                              relativize=False, lifetime=30))  # fmt: skip
    assert len(msgs) > 1 and all(m.had_tsig for m in msgs)
    bad = dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", "b3RoZXJzZWNyZXRvdGhlcnNlY3JldA==")})
    q = dns.message.make_query("com.", "IXFR")
    q.authority.append(dns.rrset.from_text("com.", 0, "IN", "SOA", f". . {cluster.serial0} 0 0 0 0"))
    q.use_tsig(bad, "k1.")
    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.query.tcp(q, PRIMARY, port=cluster.pport, timeout=10)


def test_signed_ixfr_over_several_messages_reaches_the_keyed_slice_server(cluster: Cluster) -> None:
    """A change bigger than one transfer message: the TSIG-keyed slice server verifies every
    message (RFC 8945 §5.3.1: each MAC chains the one before) and takes the IXFR."""
    name = dns.name.from_text("aaa-many-txt.com.")
    assert cluster.plan.slice_for(name) == 0
    adds = "\n".join(f"update add {name} 300 TXT \"{i:04d} {'x' * 120}\"" for i in range(300))
    nsupdate(PRIMARY, cluster.pport, adds, "-v")
    serial = cluster.serial()
    wait_serial([cluster.slice_addrs[0]], serial)
    r = dns.query.tcp(dns.message.make_query(name, "TXT"), SLICES[0], port=cluster.sports[0],
                      timeout=10)  # fmt: skip
    assert len(r.answer[0]) == 300
    nsupdate(PRIMARY, cluster.pport, f"update delete {name} TXT", "-v")
    wait_serial(cluster.slice_addrs, cluster.serial())
    cluster.check_slices()


def shared_glue(cluster: Cluster) -> tuple[dns.name.Name, dict[int, dns.name.Name]]:
    """A glue name owned by one slice and named by NS records in the other slices."""
    origin = cluster.plan.origin
    users: dict[bytes, dict[int, bytes]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{cluster.db}?mode=ro", uri=True)) as c:
        for rkey, rdata in c.execute("SELECT rkey, rdata FROM rr WHERE rdtype = 2 AND rkey != x''"):
            t = target_key(2, rdata, origin)
            if t is not None and c.execute("SELECT 1 FROM rr WHERE rkey = ? AND rdtype = 1",
                                           (t,)).fetchone():  # fmt: skip
                users.setdefault(t, {})[cluster.plan.slice_for(key_name(rkey, origin))] = rkey
    best = max(users, key=lambda t: len(set(users[t]) - {cluster.plan.slice_for(key_name(t, origin))}))
    return key_name(best, origin), {i: key_name(k, origin) for i, k in users[best].items()}


def test_glue_change_reaches_every_slice(cluster: Cluster) -> None:
    glue, users = shared_glue(cluster)
    owner = cluster.plan.slice_for(glue)
    others = set(users) - {owner}
    assert others, "the generated zone has no sibling glue"
    nsupdate(PRIMARY, cluster.pport,
             f"update delete {glue} A\nupdate add {glue} 3600 A 198.51.100.44")  # fmt: skip
    serial = cluster.serial()
    wait_serial(cluster.slice_addrs, serial)
    cluster.check_slices()
    for i in others:
        addr, port = cluster.slice_addrs[i]
        deleg = users[i]
        r = dns.query.udp(dns.message.make_query(dns.name.from_text("www", deleg), "A"), addr,
                          port=port, timeout=3)  # fmt: skip
        glue_a = [rr for rr in r.additional if rr.name == glue and rr.rdtype == dns.rdatatype.A]
        assert glue_a and {rd.address for rd in glue_a[0]} == {"198.51.100.44"}, (i, r)
    # the NS of one delegation moves to the glue of another slice, then away again
    some = users[min(others)]
    nsupdate(PRIMARY, cluster.pport, f"update add {some} 172800 NS ns9.zz-moved.com.\n"
             "update add ns9.zz-moved.com. 3600 A 198.51.100.45\n"
             "update add zz-moved.com. 172800 NS ns9.zz-moved.com.")  # fmt: skip
    wait_serial(cluster.slice_addrs, cluster.serial())
    cluster.check_slices()
    nsupdate(PRIMARY, cluster.pport, f"update delete {some} NS ns9.zz-moved.com.")
    wait_serial(cluster.slice_addrs, cluster.serial())
    cluster.check_slices()


def test_notify_answered_at_once(cluster: Cluster) -> None:
    n = dns.message.make_query("com.", "SOA")
    n.set_opcode(dns.opcode.NOTIFY)
    addr, port = cluster.slice_addrs[1]
    r = dns.query.udp(n, addr, port=port, timeout=3)
    assert r.opcode() == dns.opcode.NOTIFY and r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.id == n.id
    n = dns.message.make_query("org.", "SOA")
    n.set_opcode(dns.opcode.NOTIFY)
    assert dns.query.udp(n, addr, port=port, timeout=3).rcode() == dns.rcode.NOTAUTH


def test_update_forwarded_by_a_slice_server(cluster: Cluster) -> None:
    before = cluster.serial()
    addr, port = cluster.slice_addrs[2]
    nsupdate(addr, port, "update add fwd-test.com. 3600 NS ns1.fwd-test.com.\n"
             "update add ns1.fwd-test.com. 3600 A 192.0.2.99", "-y", f"hmac-sha256:k1:{SECRET}")
    assert cluster.serial() == before + 1
    # the same over TCP (nsupdate -v), to another slice server
    addr, port = cluster.slice_addrs[0]
    nsupdate(addr, port, "update add fwd-test.com. 3600 TXT tcp", "-v",
             "-y", f"hmac-sha256:k1:{SECRET}")  # fmt: skip
    assert cluster.serial() == before + 2
    wait_serial(cluster.slice_addrs, before + 2)
    cluster.check_slices()
    owner = cluster.plan.slice_for("ns1.fwd-test.com.")
    a, p = cluster.slice_addrs[owner]
    r = dns.query.udp(dns.message.make_query("ns1.fwd-test.com.", "A"), a, port=p, timeout=3)
    assert r.rcode() == dns.rcode.NOERROR


def _sections(r: dns.message.Message) -> tuple:
    def norm(section):
        return sorted(rr.to_text() for rrset in section for rr in [rrset])

    return (r.rcode(), bool(r.flags & dns.flags.AA), norm(r.answer), norm(r.authority),
            norm(r.additional))  # fmt: skip


def test_nsd_secondary_takes_ixfr_and_answers_the_same(cluster: Cluster) -> None:
    nsupdate(PRIMARY, cluster.pport, "update add nsd-test.com. 3600 NS ns1.nsd-test.com.\n"
             "update add ns1.nsd-test.com. 3600 A 192.0.2.77")  # fmt: skip
    serial = cluster.serial()
    try:
        wait_serial([(NSD_ADDR, cluster.nport)], serial)
    finally:
        log = (cluster.nsd.dir / "nsd.log").read_text(errors="replace")
        print(log[-3000:])
    # NSD logs each transfer's size: a few records (IXFR), not the zone (AXFR). (When two
    # reloads overlap NSD logs "update failed, restarting transfer" and takes the next one
    # by AXFR: its own race between xfrd and the reload, so not every transfer is IXFR.)
    sizes = [int(m) for m in re.findall(r"received update to serial \d+ .* of (\d+) bytes", log)]
    assert sizes and min(sizes) < 2000 < cluster.zone.stat().st_size, log
    with contextlib.closing(sqlite3.connect(f"file:{cluster.db}?mode=ro", uri=True)) as c:
        keys = [r[0] for r in c.execute(
            "SELECT DISTINCT rkey FROM rr WHERE rkey != x'' ORDER BY rkey")]  # fmt: skip
    origin = cluster.plan.origin
    names = [key_name(k, origin) for k in keys[:: max(1, len(keys) // 40)]]
    names += [dns.name.from_text("nsd-test.com."), dns.name.from_text("www.nsd-test.com."),
              dns.name.from_text("nothing-here-zz.com."), origin]  # fmt: skip
    checked = 0
    for name in names:
        for rdtype in ("A", "NS", "SOA"):
            q = dns.message.make_query(name, rdtype)
            q.flags &= ~dns.flags.RD
            want = dns.query.udp(q, NSD_ADDR, port=cluster.nport, timeout=3)
            got = dns.query.udp(q, PRIMARY, port=cluster.pport, timeout=3)
            i = cluster.plan.slice_for(name)
            a, p = cluster.slice_addrs[i]
            got_slice = dns.query.udp(q, a, port=p, timeout=3)
            assert _sections(got) == _sections(want), (name, rdtype)
            assert _sections(got_slice) == _sections(want), (name, rdtype, i)
            checked += 1
    assert checked > 100


def _kill(srv: Background) -> None:
    info = srv.info
    assert info is not None
    for pid in [info.writer_pid, *info.pids, srv.process.pid]:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    srv.process.join(10)


def test_slice_server_killed_during_ixfr_apply(cluster: Cluster, tmp_path: Path) -> None:
    nsupdate(PRIMARY, cluster.pport, "update add kill-test.com. 3600 NS ns1.kill-test.com.\n"
             "update add ns1.kill-test.com. 3600 A 192.0.2.66")  # fmt: skip
    serial = cluster.serial()
    db = tmp_path / "slice-1.db"
    shutil.copy(cluster.sliced.slice_path(1), db)  # as split wrote it, at the first serial
    before = rows_of(db)
    addr, port = SLICES[1], free_port(SLICES[1])
    os.environ[secondary_mod.PAUSE_ENV] = "30"
    try:
        srv = Background(db, [(addr, port)], workers=1, stats_path=tmp_path / "st",
                         role=secondary_role_factory((PRIMARY, cluster.pport), refresh=60))  # fmt: skip
    finally:
        del os.environ[secondary_mod.PAUSE_ENV]
    try:
        deadline = time.monotonic() + 20
        while True:  # the writer holds the write lock: it is inside the apply transaction
            with contextlib.closing(sqlite3.connect(db, timeout=0)) as c:
                try:
                    c.execute("BEGIN IMMEDIATE")
                    c.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    break
            assert time.monotonic() < deadline, "the IXFR apply never started"
            time.sleep(0.05)
        _kill(srv)
    finally:
        srv.stop()
    assert rows_of(db) == before
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0] == str(
            cluster.serial0)
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Background(db, [(addr, port)], workers=1, stats_path=tmp_path / "st2",
                    role=secondary_role_factory((PRIMARY, cluster.pport), refresh=60)):  # fmt: skip
        wait_serial([(addr, port)], serial)
        with contextlib.closing(sqlite3.connect(f"file:{cluster.db}?mode=ro", uri=True)) as c:
            assert rows_of(db) == slice_records(c, cluster.plan, 1)
        r = dns.query.udp(dns.message.make_query("ns1.kill-test.com.", "A"), addr, port=port,
                          timeout=3)  # fmt: skip
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.REFUSED)
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert journal.last_seq(c) >= 1  # the catch-up wrote its own journal entry


def test_unknown_serial_gets_the_slice_in_axfr_form(cluster: Cluster, tmp_path: Path) -> None:
    """A slice server at a serial the slice journal does not know is answered in AXFR form:
    its database is replaced in one transaction and its journal reset (caches drop all)."""
    db = tmp_path / "slice-2.db"
    shutil.copy(cluster.sliced.slice_path(2), db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
        soa, = c.execute("SELECT rdata FROM rr WHERE rkey = x'' AND rdtype = 6").fetchone()
        old = cluster.serial0 - 7
        c.execute("UPDATE rr SET rdata = ? WHERE rkey = x'' AND rdtype = 6",
                  (soa[:-20] + old.to_bytes(4, "big") + soa[-16:],))  # fmt: skip
        c.execute("DELETE FROM rr WHERE rkey = (SELECT max(rkey) FROM rr)")  # diverged content
    addr, port = SLICES[2], free_port(SLICES[2])
    with Background(db, [(addr, port)], workers=1, stats_path=tmp_path / "st",
                    role=secondary_role_factory((PRIMARY, cluster.pport), refresh=60)):  # fmt: skip
        wait_serial([(addr, port)], cluster.serial())
        with contextlib.closing(sqlite3.connect(f"file:{cluster.db}?mode=ro", uri=True)) as c:
            assert rows_of(db) == slice_records(c, cluster.plan, 2)
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert journal.names_since(c, 0)[0] is None
