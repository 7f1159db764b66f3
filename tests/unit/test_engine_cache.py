"""The answer cache: reused per question, dropped exactly where the slice data changed."""

from __future__ import annotations

import socket
import sqlite3
import struct
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import pytest

from zoneslice.engine import Responder
from zoneslice.engine.cache import AnswerCache, Entry
from zoneslice.split import split_zone
from zoneslice.store.keys import labels_key

CORNERS = Path(__file__).resolve().parents[1] / "data" / "corners.zone"


def query(name: str, qtype: int = 1, ident: int = 7) -> bytes:
    qname = (
        b"".join(bytes((len(lb),)) + lb.encode() for lb in name.rstrip(".").split(".")) + b"\x00"
    )
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def key(*labels: str) -> bytes:
    return labels_key(tuple(lb.encode() for lb in labels))


def entry() -> Entry:
    return Entry((b"",) * 4, b"", "NOERROR")


def test_affected_by_dependency_subtree_and_gap() -> None:
    c = AnswerCache(10)
    c.put(b"q1", entry(), [key("www")], [], [])
    c.put(b"q2", entry(), [key("x", "www")], [key("x", "www")], [])
    c.put(b"q3", entry(), [], [], [("nsec", key("mail"))])
    c.put(b"q4", entry(), [key("other")], [], [])
    assert c.affected([key("www")], []) == {b"q1"}
    assert c.affected([key("x", "www", "deep")], []) == {b"q2"}
    assert c.affected([], [("nsec", key("mail"))]) == {b"q3"}
    assert c.invalidate([key("www")], [("nsec", key("mail"))]) == 2
    assert set(c.entries) == {b"q2", b"q4"}


def test_bounded_oldest_first() -> None:
    c = AnswerCache(3)
    for i in range(5):
        c.put(b"q%d" % i, entry(), [key(f"n{i}")], [], [])
    assert list(c.entries) == [b"q2", b"q3", b"q4"]
    assert c.affected([key("n0")], []) == set()


@pytest.fixture
def writable(tmp_path: Path) -> tuple[Responder, Path]:
    manifest = split_zone(CORNERS, 1, tmp_path / "slices").manifest
    path = manifest.slice_path(0)
    r = Responder(path)
    yield r, path
    r.close()


def answer(r: Responder, name: str, qtype: int = 1) -> dns.message.Message:
    return dns.message.from_wire(r.respond(query(name, qtype), tcp=False))


def test_change_is_seen_after_invalidate_and_only_there(writable) -> None:
    r, path = writable
    assert answer(r, "www.example.").answer[-1][0].address == "192.0.2.80"
    assert answer(r, "alias.example.").answer[-1][0].address == "192.0.2.80"
    assert answer(r, "txtonly.example.", 16).answer
    assert answer(r, "q.b.c.example.").rcode() == dns.rcode.NXDOMAIN
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE rr SET rdata = ? WHERE rkey = ? AND rdtype = 1",
        (socket.inet_aton("192.0.2.81"), key("www")),
    )
    db.execute(
        "INSERT INTO rr VALUES (?, 1, 0, ?, 60, 1)",
        (key("c", "b", "q"), socket.inet_aton("192.0.2.9")),
    )
    db.commit()
    db.close()
    assert answer(r, "www.example.").answer[-1][0].address == "192.0.2.80", "served from the cache"
    r.invalidate([dns.name.from_text("www.example."), dns.name.from_text("q.b.c.example.")])
    hits = r.counters["cache_hits"]
    assert answer(r, "txtonly.example.", 16).answer
    assert r.counters["cache_hits"] == hits + 1, "an unrelated answer stays cached"
    assert answer(r, "www.example.").answer[-1][0].address == "192.0.2.81"
    assert answer(r, "alias.example.").answer[-1][0].address == "192.0.2.81", "CNAME target changed"
    added = answer(r, "q.b.c.example.")
    assert added.rcode() == dns.rcode.NOERROR and added.answer[0][0].address == "192.0.2.9"
    assert r.counters["cache_hits"] == hits + 1


def test_apex_change_reloads_soa_and_invalidate_all(writable) -> None:
    r, path = writable
    before = answer(r, "x.www.example.").authority[0][0].serial
    db = sqlite3.connect(path)
    (rdata,) = db.execute("SELECT rdata FROM rr WHERE rkey = x'' AND rdtype = 6").fetchone()
    serial_at = len(rdata) - 20
    new = rdata[:serial_at] + struct.pack("!I", before + 1) + rdata[serial_at + 4 :]
    db.execute("UPDATE rr SET rdata = ? WHERE rkey = x'' AND rdtype = 6", (new,))
    db.commit()
    db.close()
    r.invalidate([dns.name.from_text("example.")])
    assert answer(r, "x.www.example.").authority[0][0].serial == before + 1
    assert answer(r, "example.", 6).answer[0][0].serial == before + 1
    r.invalidate(None)
    assert len(r.cache) == 0
