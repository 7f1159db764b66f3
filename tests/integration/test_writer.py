"""The node's writer process: UPDATEs from every worker reach one PrimaryRole and share commits;
a dead or stuck writer answers SERVFAIL, never hangs; workers=0 serves the role inline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from tests.example import EXAMPLE_ZONE, SECRET
from zoneslice.engine import server as server_mod
from zoneslice.engine.server import Background
from zoneslice.split import split_zone
from zoneslice.updates.primary import primary_role_factory

ZONE = EXAMPLE_ZONE
RING = dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", SECRET)})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "example.zone").write_text(ZONE)
    return split_zone(tmp_path / "example.zone", 1, tmp_path / "whole").manifest.slice_path(0)


def update(name: str, addr: str) -> dns.update.UpdateMessage:
    u = dns.update.UpdateMessage("example.")
    u.replace(name, 300, "A", addr)
    u.use_tsig(RING, "k1.")
    return u


def send(port: int, u: dns.message.Message, tcp: bool = False, timeout: float = 10) -> int:
    """The rcode of the answer (read without TSIG checks: a SERVFAIL from a dead writer is
    unsigned)."""
    wire = u.to_wire()
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            f = s.makefile("rb")
            out = f.read(int.from_bytes(f.read(2), "big"))
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(wire, ("127.0.0.1", port))
            out = s.recv(65535)
    return dns.message.from_wire(out, keyring=False).rcode()


def lookup(port: int, name: str) -> list[str]:
    q = dns.message.make_query(f"{name}.example.", "A")
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
    return sorted(rd.to_text() for rrs in r.answer for rd in rrs)


def writer_stats(stats: Path, after: float) -> dict:
    deadline = time.monotonic() + 10
    while True:
        try:
            w = json.loads((stats / "writer.json").read_text())
            if w["updated"] >= after:
                return w
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, "no fresh writer stats"
        time.sleep(0.1)


def test_concurrent_updates_share_commits(db: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    with Background(db, [("127.0.0.1", 0)], workers=2, stats_path=stats,
                    role=primary_role_factory(db, RING)) as srv:
        port = srv.info.listen[0][1]
        assert srv.info.writer_pid and srv.info.writer_pid not in srv.info.pids
        for _ in range(4):
            lookup(port, "w0")  # warm both workers' caches with the NXDOMAIN
        n = 96
        with ThreadPoolExecutor(48) as pool:
            rcodes = list(pool.map(
                lambda i: send(port, update(f"w{i}", f"10.53.0.{i % 250 + 1}"), tcp=i % 3 == 0),
                range(n),
            ))
        assert rcodes == [dns.rcode.NOERROR] * n
        for i in (0, 1, n - 1):  # any worker, right after the ack
            for _ in range(4):
                assert lookup(port, f"w{i}") == [f"10.53.0.{i % 250 + 1}"]
        w = writer_stats(stats, time.time())
    q = w["role"]["queue"]
    assert q["updates"] == n and q["changed"] == n
    assert q["commits"] < n, q  # group commit: concurrent UPDATEs shared fsyncs
    assert w["writer"]["requests"] == n
    assert srv.exitcode == 0


def test_dead_writer_is_servfail_then_restarted(db: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    with Background(db, [("127.0.0.1", 0)], workers=1, stats_path=stats,
                    role=primary_role_factory(db, RING)) as srv:
        port = srv.info.listen[0][1]
        assert send(port, update("a", "10.53.0.1")) == dns.rcode.NOERROR
        old = srv.info.writer_pid
        os.kill(old, signal.SIGKILL)
        rcodes = set()
        deadline = time.monotonic() + 15
        while True:
            t = time.monotonic()
            rc = send(port, update("b", "10.53.0.2"), timeout=server_mod.WRITER_TIMEOUT + 5)
            assert time.monotonic() - t < server_mod.WRITER_TIMEOUT + 1
            rcodes.add(rc)
            if rc == dns.rcode.NOERROR:
                break
            assert rc == dns.rcode.SERVFAIL
            assert time.monotonic() < deadline, "writer not restarted"
            time.sleep(0.2)
        w = writer_stats(stats, time.time())
        assert w["pid"] != old
        assert lookup(port, "a") == ["10.53.0.1"] and lookup(port, "b") == ["10.53.0.2"]
    assert srv.exitcode == 0


class StuckRole:
    """A role that never answers (a wedged writer)."""

    counters: dict = {}

    async def start(self, ctx) -> None:
        return None

    async def handle(self, wire, client, tcp):
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        return None


@pytest.mark.parametrize("workers", [1, 0])
def test_stuck_writer_is_servfail(db: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(server_mod, "WRITER_TIMEOUT", 1.0)
    monkeypatch.setattr(server_mod, "STOP_GRACE", 2.0)  # the stuck request delays the stop
    with Background(db, [("127.0.0.1", 0)], workers=workers, role=StuckRole) as srv:
        port = srv.info.listen[0][1]
        for tcp in (False, True):
            t = time.monotonic()
            assert send(port, update("a", "10.53.0.1"), tcp=tcp) == dns.rcode.SERVFAIL
            assert time.monotonic() - t < 3
        assert lookup(port, "www") == ["192.0.2.80"]  # queries still flow


def test_inline_role_with_nsupdate_over_tcp(db: Path) -> None:
    """workers=0: the role runs in the serving process; nsupdate -v sends over TCP."""
    with Background(db, [("127.0.0.1", 0)], workers=0, role=primary_role_factory(db, RING)) as srv:
        port = srv.info.listen[0][1]
        assert lookup(port, "www") == ["192.0.2.80"]
        script = (f"server 127.0.0.1 {port}\nzone example.\n"
                  "update delete www.example. A\nupdate add www.example. 300 A 192.0.2.99\nsend\n")
        r = subprocess.run(["nsupdate", "-v", "-t", "5", "-y", f"hmac-sha256:k1:{SECRET}"],
                           input=script, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert lookup(port, "www") == ["192.0.2.99"]
        # a NOTIFY to the primary is the writer's too: refused, not NOTIMP
        n = dns.message.make_query("example.", "SOA")
        n.set_opcode(dns.opcode.NOTIFY)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(n.to_wire(), ("127.0.0.1", port))
            assert dns.message.from_wire(s.recv(4096)).rcode() == dns.rcode.REFUSED
    assert srv.exitcode == 0


def signed_raw(update_records: bytes, count: int, ident: int) -> tuple[bytes, bytes]:
    """An UPDATE for example. with ``count`` raw update-section records, TSIG-signed with k1
    (valid MAC over whatever the records are), and its MAC."""
    head = struct.pack("!HHHHHH", ident, dns.opcode.UPDATE << 11, 1, 0, count, 0)
    body = head + b"\x07example\x00" + struct.pack("!HH", 6, 1) + update_records
    key = RING[dns.name.from_text("k1.")]
    tmpl = dns.rdtypes.ANY.TSIG.TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm,
                                     0, 300, b"", ident, 0, b"")
    rd, _ctx = dns.tsig.sign(body, key, tmpl, int(time.time()), b"")
    rdata = rd.to_wire()
    wire = bytearray(body + key.name.to_wire()
                     + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
                     + rdata)
    struct.pack_into("!H", wire, 10, 1)
    return bytes(wire), rd.mac


def test_malformed_records_in_a_signed_update_are_formerr_from_the_writer(db: Path) -> None:
    """Workers check the TSIG and step over the records; the writer's parse finds what is
    wrong in them: a signed FORMERR, nothing applied, the next update applied."""
    owner = b"\x03bad\x07example\x00"
    broken = {
        "A rdata of 3 bytes": owner + struct.pack("!HHIH", 1, 1, 300, 3) + b"\x0a\x35\x00",
        "NS rdata pointing at itself": owner + struct.pack("!HHIH", 2, 1, 300, 2) + b"\xc0\x30",
        "owner pointing past the end": b"\xc0\xff" + struct.pack("!HHIH", 1, 1, 300, 4) + b"\x0a\x35\x00\x01",
        "label type 0x40 in NS rdata": owner + struct.pack("!HHIH", 2, 1, 300, 3) + b"\x41ab",
    }
    with Background(db, [("127.0.0.1", 0)], workers=2, role=primary_role_factory(db, RING)) as srv:
        port = srv.info.listen[0][1]
        for i, (what, record) in enumerate(broken.items()):
            wire, mac = signed_raw(record, 1, 0x5300 + i)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(10)
                s.sendto(wire, ("127.0.0.1", port))
                reply = dns.message.from_wire(s.recv(65535), keyring=RING, request_mac=mac)
            assert reply.id == 0x5300 + i, what
            assert reply.rcode() == dns.rcode.FORMERR, what
            assert reply.had_tsig, what
        assert lookup(port, "bad") == []
        assert send(port, update("bad", "10.53.0.7")) == dns.rcode.NOERROR
        assert lookup(port, "bad") == ["10.53.0.7"]
    assert srv.exitcode == 0
