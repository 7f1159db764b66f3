"""The SOA expire timer on a slice server (RFC 1035 §3.3.13), with real servers on loopback:
a zoneslice primary and a slice secondary of a zone whose SOA says refresh 1, retry 1,
expire 3. With the primary gone the secondary answers SERVFAIL (and ``meta expired`` is
'1') within expire + 2 s; restarted while expired it comes up expired; a database last
refreshed long ago expires the moment the server starts; when a primary answers again
the zone recovers. The XDP hot maps of an expired slice hold nothing and are refilled
after recovery (root: BPF).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import struct
import time
from collections import Counter
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from xdp_common import CLIENT4, SERVER4, require_bpf

from datasets.gen_zone import generate_zone
from tests.nsd import free_port
from zoneslice.engine.server import Background
from zoneslice.engine.stats import read_stats
from zoneslice.hot import entries as E
from zoneslice.hot.serving import hot_path
from zoneslice.split import split_zone
from zoneslice.store.keys import key_name
from zoneslice.updates.primary import primary_role_factory
from zoneslice.xdp import frames, testrun
from zoneslice.xfr.projection import Projector
from zoneslice.xfr.secondary import secondary_role_factory

PRIMARY = "127.0.0.31"
SECONDARY = "127.0.0.32"
EXPIRE = 3


def meta(db: Path, key: str) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def ask(name: dns.name.Name, port: int, rdtype: str = "NS", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, SECONDARY, port=port, timeout=2)
    return dns.query.udp(q, SECONDARY, port=port, timeout=2)


def wait_rcode(name: dns.name.Name, port: int, rcode: int, within: float) -> float:
    """Seconds until the secondary answers ``rcode`` (fails after ``within``)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < within:
        with contextlib.suppress(dns.exception.Timeout):
            last = ask(name, port).rcode()
            if last == rcode:
                return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"still {dns.rcode.to_text(last) if last is not None else 'no answer'} "
                         f"after {within} s, wanted {dns.rcode.to_text(rcode)}")  # fmt: skip


def writer_role(stats: Path, within: float = 5.0, checks: int = 0, **want: object) -> dict:
    """The writer's role counters once they show ``want`` (written every second)."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            role = read_stats(stats)["writer"]["role"]
            if role["checks"] >= checks and all(role.get(k) == v for k, v in want.items()):
                return role
        assert time.monotonic() < deadline, f"writer counters never showed {want}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("expire")
    path = tmp / "com.zone"
    generate_zone(path, 300, seed=5)
    text, n = re.subn(r"(\tSOA\t\S+ \S+ \d+) \d+ \d+ \d+ (\d+)", rf"\1 1 1 {EXPIRE} \2",
                      path.read_text(), count=1)  # fmt: skip
    assert n == 1
    path.write_text(text)
    whole = split_zone(path, 1, tmp / "whole").manifest
    sliced = split_zone(path, 2, tmp / "parts").manifest
    db = whole.slice_path(0)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
        Projector(sliced.plan).install(c)
    slice_db = sliced.slice_path(0)
    with contextlib.closing(sqlite3.connect(slice_db)) as c:
        (rkey,) = c.execute("SELECT rkey FROM rr WHERE rdtype = 2 AND origin = 1 AND rkey != x'' "
                            "LIMIT 1").fetchone()  # fmt: skip
    return {"tmp": tmp, "db": db, "slice_db": slice_db,
            "name": key_name(rkey, dns.name.from_text("com."))}  # fmt: skip


def primary(z: dict, port: int) -> Background:
    return Background(z["db"], [(PRIMARY, port)], workers=1,
                      role=primary_role_factory(z["db"], None, allow_unsigned=["127.0.0.0/8"]))  # fmt: skip


def secondary(db: Path, port: int, pport: int, stats: Path) -> Background:
    return Background(db, [(SECONDARY, port)], workers=1, stats_path=stats,
                      role=secondary_role_factory((PRIMARY, pport), timeout=1.0))  # fmt: skip


def test_expires_without_primary_and_recovers(zone: dict, tmp_path: Path) -> None:
    db = tmp_path / "slice-0.db"
    shutil.copy(zone["slice_db"], db)
    assert meta(db, "refreshed_at") is None  # as split wrote it
    name = zone["name"]
    pport, sport = free_port(PRIMARY), free_port(SECONDARY)
    with contextlib.ExitStack() as stack:
        prim = stack.enter_context(primary(zone, pport))
        sec = secondary(db, sport, pport, tmp_path / "st")
        stack.callback(lambda: sec.stop())
        assert ask(name, sport).rcode() == dns.rcode.NOERROR
        role = writer_role(tmp_path / "st", checks=1, expired=False)
        assert role["failures"] == 0
        assert float(meta(db, "refreshed_at") or 0) > time.time() - 10

        prim.stop()
        took = wait_rcode(name, sport, dns.rcode.SERVFAIL, EXPIRE + 2)
        assert took <= EXPIRE + 2
        assert meta(db, "expired") == "1"
        q = dns.message.make_query(name, "A")
        q.flags |= dns.flags.RD
        r = dns.query.udp(q, SECONDARY, port=sport, timeout=2)
        assert r.rcode() == dns.rcode.SERVFAIL and r.id == q.id
        assert r.flags & dns.flags.RD and not r.flags & dns.flags.AA
        assert r.question == q.question and not r.answer and not r.authority
        assert ask(name, sport, tcp=True).rcode() == dns.rcode.SERVFAIL
        assert ask(dns.name.from_text("com."), sport, "SOA").rcode() == dns.rcode.SERVFAIL
        axfr = dns.query.tcp(dns.message.make_query("com.", "AXFR"), SECONDARY, port=sport, timeout=2)
        assert axfr.rcode() == dns.rcode.SERVFAIL and not axfr.answer
        role = writer_role(tmp_path / "st", expired=True)
        assert role["expirations"] == 1 and role["failures"] >= 1
        stamp = float(meta(db, "refreshed_at") or 0)
        assert role["refreshed_at"] == pytest.approx(stamp, abs=0.01)

        sec.stop()  # restarted while expired: expired from the first answer on
        sec = secondary(db, sport, pport, tmp_path / "st2")
        assert ask(name, sport).rcode() == dns.rcode.SERVFAIL
        assert writer_role(tmp_path / "st2")["expired"] is True

        prim = stack.enter_context(primary(zone, pport))  # the primary is back, same port and data
        wait_rcode(name, sport, dns.rcode.NOERROR, 5)
        assert meta(db, "expired") is None
        assert float(meta(db, "refreshed_at") or 0) > stamp
        assert ask(dns.name.from_text("com."), sport, "SOA").rcode() == dns.rcode.NOERROR
        role = writer_role(tmp_path / "st2", expired=False)
        assert role["refreshed_at"] > stamp


def test_restarted_long_after_last_refresh_is_expired_at_once(zone: dict, tmp_path: Path) -> None:
    db = tmp_path / "slice-0.db"
    shutil.copy(zone["slice_db"], db)
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('refreshed_at', ?)", (str(time.time() - 3600),))
        c.commit()
    dead = free_port(PRIMARY)  # nobody listens: every check fails
    with secondary(db, free_port(SECONDARY), dead, tmp_path / "st") as sec:
        assert sec.info is not None
        port = sec.info.listen[0][1]
        r = ask(zone["name"], port)
        assert r.rcode() == dns.rcode.SERVFAIL
        assert meta(db, "expired") == "1"
        role = writer_role(tmp_path / "st", expired=True)
        assert role["expirations"] == 1


def test_servfail_wire_keeps_id_question_rd_and_edns() -> None:
    from zoneslice.updates.handler import servfail

    q = dns.message.make_query("a.example.", "AAAA", want_dnssec=True)
    q.flags |= dns.flags.RD
    wire = q.to_wire()
    out = servfail(wire)
    assert out is not None
    r = dns.message.from_wire(out)
    assert r.id == q.id and r.rcode() == dns.rcode.SERVFAIL
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RD and not r.flags & dns.flags.AA
    assert r.question == q.question
    assert r.edns == 0 and r.payload == 1232 and r.ednsflags & dns.flags.DO
    plain = dns.message.from_wire(servfail(dns.message.make_query("a.example.", "A").to_wire()))
    assert plain.edns == -1 and plain.rcode() == dns.rcode.SERVFAIL
    no_do = dns.message.from_wire(servfail(dns.message.make_query("a.example.", "A",
                                                                   use_edns=0).to_wire()))
    assert no_do.edns == 0 and not no_do.ednsflags & dns.flags.DO
    assert servfail(out) is None  # never answer a response
    assert struct.unpack_from("!H", servfail(wire[:12] + b"\xff") or b"", 4)[0] == 0


def set_expired(db: Path, on: bool) -> None:
    with contextlib.closing(sqlite3.connect(db)) as c:
        if on:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('expired', '1')")
        else:
            c.execute("DELETE FROM meta WHERE key = 'expired'")
        c.commit()


@pytest.mark.root
def test_hot_maps_empty_while_expired_and_refilled_after(zone: dict, tmp_path: Path) -> None:
    require_bpf()
    db = tmp_path / "slice-0.db"
    shutil.copy(zone["slice_db"], db)

    def verdicts(keys: list) -> set[str]:
        out = set()
        for _kind, wire, qtype in keys:
            q = E.make_query(wire, qtype or dns.rdatatype.NS, 0)
            fr = frames.udp_frame(CLIENT4, SERVER4, 33000, 53, q)
            out.add(testrun.run(hot.path.prog_fd, fr).name)
        return out

    with hot_path(db, None, top=20) as hot:
        loaded = dict(hot.hotset.loaded)
        assert len(loaded) >= 10 and verdicts(list(loaded)) == {"XDP_TX"}
        set_expired(db, True)  # what SecondaryRole commits before calling the hooks with None
        assert hot.on_update(None) == 0
        assert not hot.hotset.loaded and verdicts(list(loaded)) == {"XDP_PASS"}
        assert hot.refresh(Counter({(k[1], 2): 5 for k in loaded}), 20) == {"skipped_expired": 1}
        assert not hot.hotset.loaded
        set_expired(db, False)  # the next successful refresh
        assert hot.on_update(None) == len(loaded)
        assert set(hot.hotset.loaded) == set(loaded) and verdicts(list(loaded)) == {"XDP_TX"}
    set_expired(db, True)  # a server started on an expired slice loads nothing
    with hot_path(db, None, top=20) as hot:
        assert hot.stats == {"parked": 20, "loaded": 0} and not hot.hotset.loaded
        set_expired(db, False)
        assert hot.on_update(None) == 20 and verdicts(list(hot.hotset.loaded)) == {"XDP_TX"}
