"""Journal: wire encoding round trip, the append half and the read half (IXFR chains)."""

from __future__ import annotations

import sqlite3

import dns.name
import pytest

from tests.example import soa_rdata as soa
from zoneslice import journal
from zoneslice.errors import JournalError


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    journal.ensure_table(c)
    journal.ensure_table(c)  # idempotent
    yield c
    c.close()


def rr(name: str, last: int) -> journal.RR:
    return (dns.name.from_text(name), 1, 300, bytes((192, 0, 2, last)))


def test_encode_decode_round_trip() -> None:
    rrs = [rr("a.example.", 1), rr("B.example.", 2), (dns.name.from_text("example."), 16, 0, b"")]
    assert journal.decode_rrs(journal.encode_rrs(rrs)) == rrs
    with pytest.raises(JournalError):
        journal.decode_rrs(journal.encode_rrs(rrs)[:-3])


def test_chain_and_gaps(conn: sqlite3.Connection) -> None:
    assert journal.changes_since(conn, 1) is None  # empty journal: AXFR
    journal.append(conn, journal.Changeset(soa(1), soa(2), [rr("a.example.", 1)], []))
    journal.append(conn, journal.Changeset(soa(2), soa(3), [], [rr("b.example.", 2)]))
    journal.append(conn, journal.Changeset(soa(3), soa(0xFFFFFFFF), [], [rr("c.example.", 3)]))
    journal.append(conn, journal.Changeset(soa(0xFFFFFFFF), soa(1 + 3), [], [rr("d.example.", 4)]))
    chain = journal.changes_since(conn, 2)
    assert [(c.serial_from, c.serial_to) for c in chain] == [(2, 3), (3, 0xFFFFFFFF), (0xFFFFFFFF, 4)]
    assert chain[0].added == [rr("b.example.", 2)]
    assert journal.changes_since(conn, 4) == []
    assert journal.changes_since(conn, 9) is None
    conn.execute("DELETE FROM journal WHERE serial_from = 3")  # a hole in the chain
    assert journal.changes_since(conn, 2) is None
    names, seq = journal.names_since(conn, 1)
    assert names is None and seq == 4  # entry 2 is still there, 3 is gone: assume everything
    names, seq = journal.names_since(conn, 3)
    assert names == {dns.name.from_text("d.example."), dns.name.empty} and seq == 4
    assert journal.last_seq(conn) == 4
