"""Slice projection: slice_records() equals what `split --parts N` writes (plain, NSEC, NSEC3,
hand-written corner cases), and the per-slice journal written inside each update transaction,
applied to the split slices, gives slice_records() of the updated whole zone."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.update
import pytest

from datasets.gen_zone import generate_zone
from datasets.sign import sign_zone
from zoneslice import journal
from zoneslice.split import split_zone
from zoneslice.store.keys import first_label_bounds, key_name, name_key
from zoneslice.updates.queue import Job, UpdateQueue
from zoneslice.xfr.projection import (
    Projector,
    apply_slice_changes,
    nsec_before,
    slice_records,
    target_key,
)

CORNERS = Path(__file__).resolve().parents[1] / "data" / "corners.zone"
PARTS = 3


def rows_of(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as c:
        got = c.execute("SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr").fetchall()
    return sorted(got, key=lambda r: (r[0], r[1], r[2], r[3]))


def split_both(zone: Path, out: Path, parts: int = PARTS):
    whole = split_zone(zone, 1, out / "whole").manifest
    sliced = split_zone(zone, parts, out / "parts").manifest
    return whole, sliced


@pytest.fixture(scope="module")
def gen_zones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gen")
    plain = d / "plain.zone"
    generate_zone(plain, 1200, seed=5)
    zones = {"plain": plain}
    for mode in ("nsec", "nsec3"):
        zones[mode] = sign_zone(plain, d / f"{mode}.zone", "com.", mode, verify=False)
    return zones


@pytest.mark.parametrize("kind", ["plain", "nsec", "nsec3", "corners"])
def test_slice_records_equal_split(kind: str, gen_zones: dict[str, Path], tmp_path: Path) -> None:
    zone = CORNERS if kind == "corners" else gen_zones[kind]
    parts = 5 if kind == "corners" else PARTS
    whole, sliced = split_both(zone, tmp_path, parts)
    with sqlite3.connect(whole.slice_path(0)) as wc:
        for i in range(parts):
            got = slice_records(wc, sliced.plan, i)
            want = rows_of(sliced.slice_path(i))
            assert got == want, f"slice {i} of {kind}"
            assert any(r[5] != 1 for r in want) or kind == "plain"


# ---------------------------------------------------------------- updates


def _job(u: dns.update.UpdateMessage) -> Job:
    wire = u.to_wire()
    return Job(dns.message.from_wire(wire, one_rr_per_rrset=True), wire)


class Primary:
    def __init__(self, whole_db: Path, plan) -> None:
        self.proj = Projector(plan)
        self.q = UpdateQueue(whole_db, in_transaction=self.proj.in_transaction)
        self.proj.install(self.q.conn)
        self.origin = plan.origin

    def batch(self, *updates: dns.update.UpdateMessage) -> None:
        results = self.q.apply_batch([_job(u) for u in updates])
        assert [r.rcode for r in results] == [dns.rcode.NOERROR] * len(updates), [
            r.reason for r in results
        ]

    def new(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.origin)


def shared_glue(conn: sqlite3.Connection, plan, origin: dns.name.Name):
    """An in-zone NS target named from several slices other than the one owning it."""
    users: dict[bytes, set[int]] = {}
    for rkey, rdata in conn.execute("SELECT rkey, rdata FROM rr WHERE rdtype = 2 AND rkey != x''"):
        t = target_key(2, rdata, origin)
        if t is not None:
            users.setdefault(t, set()).add(plan.slice_for(key_name(rkey, origin)))
    best = max(users, key=lambda t: len(users[t] - {plan.slice_for(key_name(t, origin))}))
    return key_name(best, origin), users


def check_slices(p: Primary | sqlite3.Connection, sliced, copies: Path) -> Counter:
    """Apply each slice's journal to a copy of the split slice; compare with slice_records()."""
    conn = p if isinstance(p, sqlite3.Connection) else p.q.conn
    serial = journal.soa_serial(
        conn.execute("SELECT rdata FROM rr WHERE rkey = x'' AND rdtype = 6").fetchone()[0]
    )
    moved = Counter()
    for i in range(sliced.parts):
        dst = copies / f"slice-{i}.db"
        if not dst.exists():
            shutil.copy(sliced.slice_path(i), dst)
        with sqlite3.connect(dst) as c:
            cur = int(c.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0])
            chain = journal.slice_changes_since(conn, i, cur, serial)
            assert chain is not None, f"slice {i}: no chain from {cur} to {serial}"
            apply_slice_changes(c, chain)
            moved[i] += sum(len(cs.added) + len(cs.deleted) for cs in chain)
        assert rows_of(dst) == slice_records(conn, sliced.plan, i), f"slice {i} at {serial}"
    return moved


def test_projected_updates_follow_the_whole_zone(gen_zones: dict[str, Path], tmp_path: Path) -> None:
    whole, sliced = split_both(gen_zones["plain"], tmp_path)
    plan = sliced.plan
    copies = tmp_path / "copies"
    copies.mkdir()
    p = Primary(whole.slice_path(0), plan)
    origin = plan.origin
    try:
        glue, users = shared_glue(p.q.conn, plan, origin)
        owner_slice = plan.slice_for(glue)
        assert len(users[name_key(glue, origin)] - {owner_slice}) >= 2

        # 1. the shared glue's address changes: every slice holding a sibling copy follows
        u = p.new()
        u.delete(glue, "A")
        u.add(glue, 3600, "A", "198.51.100.7")
        p.batch(u)
        moved = check_slices(p, sliced, copies)
        assert sum(1 for i in moved if moved[i]) >= 2

        # 2. new delegations in different slices, one using the shared glue, one with own glue
        a = p.new()
        a.add("aaaa-new-deleg.com.", 172800, "NS", glue.to_text())
        a.add("aaaa-new-deleg.com.", 172800, "NS", "ns1.zzzz-new-deleg.com.")
        b = p.new()
        b.add("zzzz-new-deleg.com.", 172800, "NS", "ns1.zzzz-new-deleg.com.")
        b.add("ns1.zzzz-new-deleg.com.", 172800, "A", "198.51.100.8")
        p.batch(a, b)
        check_slices(p, sliced, copies)

        # 3. the delegation in slice 0 moves away from the glue in the last slice; the
        #    glue's owner deletes its address, then the whole delegation goes
        u = p.new()
        u.delete("aaaa-new-deleg.com.", "NS", "ns1.zzzz-new-deleg.com.")
        p.batch(u)
        check_slices(p, sliced, copies)
        u = p.new()
        u.delete("ns1.zzzz-new-deleg.com.")
        u2 = p.new()
        u2.delete("zzzz-new-deleg.com.")
        p.batch(u, u2)
        check_slices(p, sliced, copies)

        # 4. CNAME into another slice (target subtree copied), wildcard, TTL change, removal
        target = key_name(
            p.q.conn.execute(
                "SELECT rkey FROM rr WHERE rdtype = 2 AND rkey >= ? ORDER BY rkey LIMIT 1",
                (b"t",),
            ).fetchone()[0],
            origin,
        )
        u = p.new()
        u.add("aaab-alias.com.", 300, "CNAME", target.to_text())
        p.batch(u)
        moved = check_slices(p, sliced, copies)
        assert moved[0] > 0
        u = p.new()
        u.add("*.com.", 300, "TXT", "wild")
        u2 = p.new()
        u2.replace(target, 60, "NS", glue.to_text())
        p.batch(u, u2)
        check_slices(p, sliced, copies)
        u = p.new()
        u.delete("aaab-alias.com.")
        u.delete("*.com.")
        p.batch(u)
        check_slices(p, sliced, copies)
    finally:
        p.q.close()


def test_corner_zone_updates(tmp_path: Path) -> None:
    whole, sliced = split_both(CORNERS, tmp_path, 5)
    copies = tmp_path / "copies"
    copies.mkdir()
    p = Primary(whole.slice_path(0), sliced.plan)
    try:
        steps = []
        u = p.new()
        u.delete("ns1.example.", "A")
        u.add("ns1.example.", 3600, "A", "192.0.2.111")
        steps.append([u])
        u = p.new()
        u.add("zz-late.example.", 3600, "MX", "5 mail.sub.example.")
        u.add("aa-early.example.", 3600, "SRV", "0 0 53 ns1.multi.example.")
        steps.append([u])
        u = p.new()
        u.delete("mail.sub.example.", "A")
        steps.append([u])
        u = p.new()
        u.add("aa-alias.example.", 3600, "CNAME", "www.example.")
        u2 = p.new()
        u2.add("zz-alias.example.", 3600, "DNAME", "multi.example.")
        steps.append([u, u2])
        u = p.new()
        u.delete("aa-alias.example.")
        steps.append([u])
        for batch in steps:
            p.batch(*batch)
            check_slices(p, sliced, copies)
    finally:
        p.q.close()


def test_dnssec_mode_change_resets_every_slice(tmp_path: Path) -> None:
    """An NSEC3PARAM added at the apex changes every slice's rules: slices must AXFR."""
    whole, sliced = split_both(CORNERS, tmp_path, 3)
    p = Primary(whole.slice_path(0), sliced.plan)
    try:
        u = p.new()
        u.add("www.example.", 3600, "TXT", "before")
        p.batch(u)
        u = p.new()
        u.add("example.", 0, "NSEC3PARAM", "1 0 0 -")
        p.batch(u)
        serial = sliced.serial + 2
        for i in range(3):
            assert journal.slice_changes_since(p.q.conn, i, sliced.serial, serial) is None
            assert journal.slice_changes_since(p.q.conn, i, serial, serial) == []
        assert p.proj.counters["resets"] == 1
    finally:
        p.q.close()


def test_updgen_stream_in_batches(gen_zones: dict[str, Path], tmp_path: Path) -> None:
    """300 updgen operations (delegation adds, NS and glue changes, DS, deletions) applied in
    groups of 1 to 60 messages per commit; the slices follow after every commit."""
    from zoneslice.updates.updgen import parse_stream, to_message, write_stream

    whole, sliced = split_both(gen_zones["plain"], tmp_path)
    copies = tmp_path / "copies"
    copies.mkdir()
    text, counts = write_stream(gen_zones["plain"], None, 300, seed=3)
    assert min(counts.values()) > 0, counts
    _origin, messages = parse_stream(text)
    p = Primary(whole.slice_path(0), sliced.plan)
    try:
        pos = 0
        moved: Counter = Counter()
        for size in (1, 2, 7, 20, 60, 1, 40, 60, 109):
            group = [to_message(p.origin, lines) for lines in messages[pos : pos + size]]
            pos += size
            if group:
                p.batch(*group)
                moved += check_slices(p, sliced, copies)
        assert pos >= len(messages) and all(moved[i] > 0 for i in range(PARTS))
    finally:
        p.q.close()


@pytest.mark.parametrize("kind", ["nsec", "nsec3"])
def test_signed_zone_changes(kind: str, gen_zones: dict[str, Path], tmp_path: Path) -> None:
    """Signed zones take no UPDATE, but a changeset applied to one (as an online signer would
    write it) projects too: here the NSEC just before slice 1 (copied into it) goes, so the
    copy moves to the NSEC before it; with NSEC3 a chain record goes from every slice."""
    whole, sliced = split_both(gen_zones[kind], tmp_path)
    plan = sliced.plan
    copies = tmp_path / "copies"
    copies.mkdir()
    conn = sqlite3.connect(whole.slice_path(0), isolation_level=None)
    try:
        proj = Projector(plan)
        proj.install(conn)
        if kind == "nsec":
            victim = nsec_before(conn, first_label_bounds(*plan.range_of(1))[0])
            where = "(rdtype = 47 OR (rdtype = 46 AND covers = 47))"
        else:
            victim = conn.execute("SELECT rkey FROM rr WHERE rdtype = 50 LIMIT 1").fetchone()[0]
            where = "(rdtype = 50 OR (rdtype = 46 AND covers = 50))"
        name = key_name(victim, plan.origin)
        rows = conn.execute(
            f"SELECT rdtype, rdata, ttl FROM rr WHERE rkey = ? AND {where}", (victim,)
        ).fetchall()
        assert rows
        old_soa, ttl = conn.execute("SELECT rdata, ttl FROM rr WHERE rkey = x'' AND rdtype = 6").fetchone()
        serial = journal.soa_serial(old_soa) + 1
        new_soa = old_soa[:-20] + serial.to_bytes(4, "big") + old_soa[-16:]
        cs = journal.Changeset(old_soa, new_soa, [(name, t, ttl_, rd) for t, rd, ttl_ in rows], [])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM rr WHERE rkey = ? AND {where}", (victim,))
        conn.execute("UPDATE rr SET rdata = ? WHERE rkey = x'' AND rdtype = 6", (new_soa,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'serial'", (str(serial),))
        journal.append(conn, cs)
        proj.in_transaction(conn, [cs])
        conn.execute("COMMIT")
        moved = check_slices(conn, sliced, copies)
        if kind == "nsec":
            assert moved[1] >= 4  # the old copy (NSEC + RRSIG) out, the new one in
        else:
            assert all(moved[i] == len(rows) for i in range(PARTS))
    finally:
        conn.close()


def test_carried_reads_equal_fresh_reads(gen_zones: dict[str, Path], tmp_path: Path) -> None:
    """The "after" state a projection builds from its "before" reads and the journal
    (`_State.carried`) holds, for every key it has, what reading the database gives."""
    from zoneslice.updates.updgen import parse_stream, to_message, write_stream
    from zoneslice.xfr.projection import _State

    whole, sliced = split_both(gen_zones["plain"], tmp_path)
    text, _counts = write_stream(gen_zones["plain"], None, 200, seed=11)
    _origin, messages = parse_stream(text)
    p = Primary(whole.slice_path(0), sliced.plan)
    try:
        pos, compared = 0, Counter()
        for size in (1, 3, 10, 30, 60, 96):
            group = [to_message(p.origin, lines) for lines in messages[pos : pos + size]]
            pos += size
            if not group:
                continue
            p.batch(*group)
            views = p.proj._views
            assert views is not None
            carried = next(iter(views.values())).state
            fresh = _State(p.q.conn, carried.los)
            for k, rows in carried._rows.items():
                assert sorted(rows) == sorted(fresh.rows(k)), k
            for t, refs in carried._refs.items():
                assert refs == fresh.ref_slices(t), t
            for k, below in carried._below.items():
                assert sorted(below) == sorted(fresh.addr_below(k)), k
            compared.update(rows=len(carried._rows), refs=len(carried._refs),
                            below=len(carried._below))
        assert min(compared.values()) > 50, compared
    finally:
        p.q.close()
