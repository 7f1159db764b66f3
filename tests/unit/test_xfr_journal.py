"""The per-slice journal (rows with origins, chains to the zone's serial, resets), the reset
entry of a secondary's own journal, and the NOTIFY sender's retries against a real UDP peer."""

from __future__ import annotations

import asyncio
import socket
import sqlite3

import dns.message
import dns.name
import dns.opcode
import pytest

from tests.example import soa_rdata as soa
from zoneslice import journal
from zoneslice.errors import JournalError
from zoneslice.xfr.notify import Notifier


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    journal.ensure_table(c)
    journal.ensure_slice_table(c)
    journal.ensure_slice_table(c)
    yield c
    c.close()


ROW_A = (b"www\x00", 1, 0, bytes((192, 0, 2, 1)), 300, 1)
ROW_G = (b"ns1\x00host\x00", 28, 0, bytes(16), 3600, 2)


def test_rows_round_trip() -> None:
    blob = journal.encode_rows([ROW_A, ROW_G])
    assert journal.decode_rows(blob) == [ROW_A, ROW_G]
    with pytest.raises(JournalError):
        journal.decode_rows(blob[:-2])


def test_slice_chain_reaches_the_zone_serial(conn: sqlite3.Connection) -> None:
    for part in (0, 1):
        journal.append_slice(conn, journal.SliceChangeset(part, soa(1), soa(2), [], [ROW_A]))
        journal.append_slice(conn, journal.SliceChangeset(part, soa(2), soa(3), [ROW_A], [ROW_G]))
    chain = journal.slice_changes_since(conn, 1, 1, 3)
    assert [(c.serial_from, c.serial_to) for c in chain] == [(1, 2), (2, 3)]
    assert chain[1].deleted == [ROW_A] and chain[1].added == [ROW_G]
    assert journal.slice_changes_since(conn, 1, 2, 3)[0].added == [ROW_G]
    assert journal.slice_changes_since(conn, 1, 3, 4) is None  # a commit made without projection
    assert journal.slice_changes_since(conn, 1, 7, 3) is None  # unknown serial
    assert journal.slice_changes_since(conn, 5, 1, 3) is None  # no such slice
    journal.append_slice(conn, journal.SliceChangeset(1, soa(3), soa(4), reset=True))
    assert journal.slice_changes_since(conn, 1, 1, 4) is None  # AXFR across a reset
    assert journal.slice_changes_since(conn, 0, 1, 3) is not None
    assert journal.trim_slices(conn, 1) == 3
    assert journal.slice_changes_since(conn, 0, 1, 3) is None
    assert len(journal.slice_changes_since(conn, 0, 2, 3)) == 1


def test_reset_entry_makes_names_since_drop_everything(conn: sqlite3.Connection) -> None:
    rr = (dns.name.from_text("www.example."), 1, 300, bytes(4))
    journal.append(conn, journal.Changeset(soa(1), soa(2), [], [rr]))
    names, seq = journal.names_since(conn, 0)
    assert names is not None and seq == 1
    journal.reset_entry(conn, soa(9))
    names, newest = journal.names_since(conn, seq)
    assert names is None and newest == 3
    assert journal.changes_since(conn, 2) is None  # old serials cannot be bridged
    journal.append(conn, journal.Changeset(soa(9), soa(10), [], [rr]))
    names, _ = journal.names_since(conn, newest)
    assert names == {rr[0], dns.name.empty}


def test_notifier_retries_until_answered() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    seen: list[dns.message.Message] = []

    async def run() -> Notifier:
        loop = asyncio.get_running_loop()
        n = Notifier("example.", [peer.getsockname()], timeout=0.2)

        async def answer_second() -> None:
            for i in range(2):
                wire, addr = await loop.sock_recvfrom(peer, 65535)
                msg = dns.message.from_wire(wire)
                seen.append(msg)
                if i == 1:
                    resp = dns.message.make_response(msg)
                    await loop.sock_sendto(peer, resp.to_wire(), addr)

        task = loop.create_task(answer_second())
        n.changed(42)
        await asyncio.wait_for(n.wait(), 5)
        await task
        await n.stop()
        return n

    try:
        n = asyncio.run(run())
    finally:
        peer.close()
    assert n.counters == {"sent": 2, "answered": 1, "gave_up": 0}
    assert all(m.opcode() == dns.opcode.NOTIFY for m in seen)
    assert seen[0].answer[0][0].serial == 42 and seen[0].flags & 0x0400


def test_condensed_ixfr_equals_the_steps_applied_in_turn() -> None:
    """RFC 1995 §6 condensation: over random histories, start - deleted + added is the end
    state, only rows present at the start are deleted and none present are added."""
    import random

    from zoneslice.xfr.transfer import condense

    rng = random.Random(5)
    universe = [(f"n{i}".encode(), 1, 0, bytes((i,)), ttl, o)
                for i in range(12) for ttl in (60, 300) for o in (1, 2)]
    for _ in range(300):
        start = set(rng.sample(universe, 8))
        state = set(start)
        chain = []
        for _ in range(rng.randint(1, 6)):
            gone = [r for r in state if rng.random() < 0.3]
            free = [r for r in universe if r not in state and r not in gone]
            come = rng.sample(free, rng.randint(0, 3))
            state = (state - set(gone)) | set(come)
            chain.append(journal.SliceChangeset(0, b"", b"", gone, come))
        deleted, added = condense(chain)
        assert set(deleted) <= start and not set(added) & start
        assert (start - set(deleted)) | set(added) == state
