"""updgen streams against UpdateQueue: every message applies (NOERROR, one serial step each), and
group commit (messages sharing a transaction, a row cache and one SOA write) ends in exactly the
state that one commit per message gives, journal included."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import dns.message
import dns.rcode
import dns.tsigkeyring
import pytest

from datasets.gen_zone import generate_zone
from zoneslice import journal
from zoneslice.split import split_zone
from zoneslice.updates.queue import Job, UpdateQueue
from zoneslice.updates.updgen import UpdateGenerator, parse_stream, read_zone, to_message
from zoneslice.updates.wire import parse_update, response

RING = dns.tsigkeyring.from_text({"k.": ("hmac-sha256", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")})


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("updgen")
    generate_zone(d / "z.zone", delegations=300, seed=11)
    return d / "z.zone", split_zone(d / "z.zone", 1, d / "whole").manifest.slice_path(0)


def dump(db: Path) -> tuple[list, list, str]:
    with sqlite3.connect(db) as conn:
        rows = sorted(conn.execute("SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr"))
        js = [(c.serial_from, c.serial_to, sorted(c.deleted), sorted(c.added))
              for c in journal.changes_since(conn, 1767225600) or []]
        serial = conn.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0]
    return rows, js, serial


def test_stream_applies_and_group_commit_equals_one_by_one(zone, tmp_path: Path) -> None:
    zfile, db = zone
    model = read_zone(zfile)
    gen = UpdateGenerator(model, seed=3)
    msgs = list(gen.messages(400, batch=1, window=16))
    assert all(gen.counts[k] > 0 for k in gen.counts), gen.counts
    wires = []
    for lines in msgs:
        u = to_message(model.origin, lines)
        u.use_tsig(RING, "k.")
        wires.append(u.to_wire())
    ones, groups = tmp_path / "ones.db", tmp_path / "groups.db"
    shutil.copyfile(db, ones)
    shutil.copyfile(db, groups)
    q1, qg = UpdateQueue(ones), UpdateQueue(groups)
    try:
        for w in wires:
            assert q1.apply(parse_update(w, RING), w).rcode == dns.rcode.NOERROR
        jobs = [Job(parse_update(w, RING), w) for w in wires]
        results = []
        for i in range(0, len(jobs), 16):
            results += qg.apply_batch(jobs[i : i + 16])
        assert [r.rcode for r in results] == [dns.rcode.NOERROR] * len(wires)
        assert qg.counters["commits"] == 25
    finally:
        q1.close()
        qg.close()
    a, b = dump(ones), dump(groups)
    assert a[2] == b[2] == str(1767225600 + len(wires))
    assert len(a[1]) == len(wires)
    assert a == b


def test_stream_text_round_trip(zone) -> None:
    zfile, _db = zone
    model = read_zone(zfile)
    gen = UpdateGenerator(model, seed=4)
    text = "zone com.\n" + "".join("\n".join(m) + "\nsend\n" for m in gen.messages(30, batch=3))
    origin, msgs = parse_stream(text)
    assert str(origin) == "com." and len(msgs) == 10
    u = to_message(origin, msgs[0])
    u.use_tsig(RING, "k.")
    w = u.to_wire()
    upd = parse_update(w, RING)
    assert len(upd.updates) == sum(line.startswith("update ") for line in msgs[0])
    assert len(upd.prereqs) == sum(line.startswith("prereq ") for line in msgs[0])
    back = response(upd, w, dns.rcode.NOERROR)
    r = dns.message.from_wire(back, keyring=RING, request_mac=u.mac)
    assert r.rcode() == dns.rcode.NOERROR and r.had_tsig and r.id == u.id
