"""Changesets by serial, kept in the slice database next to the records they change.

The append half (:func:`append`) writes inside the caller's transaction, so a
change and its journal entry commit together or not at all (RFC 2136 §3.5).
The read half (:func:`changes_since`) gives the chain of changesets an IXFR
(RFC 1995) needs, and :func:`names_since` the owners a cache must drop.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import dns.name
import dns.rdataclass
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from zoneslice.errors import JournalError
from zoneslice.store import models

RR = tuple[dns.name.Name, int, int, bytes]
"""(owner, rdtype, ttl, rdata in uncompressed wire form)."""

_DDL = [
    str(CreateTable(models.journal, if_not_exists=True).compile(dialect=sqlite_dialect.dialect()))
] + [
    str(CreateIndex(ix, if_not_exists=True).compile(dialect=sqlite_dialect.dialect()))
    for ix in sorted(models.journal.indexes, key=lambda i: i.name or "")
]


@dataclass
class Changeset:
    """One step of the zone's history: the SOA before and after, and the RRs in between."""

    soa_from: bytes
    soa_to: bytes
    deleted: list[RR] = field(default_factory=list)
    added: list[RR] = field(default_factory=list)
    seq: int = 0

    @property
    def serial_from(self) -> int:
        return soa_serial(self.soa_from)

    @property
    def serial_to(self) -> int:
        return soa_serial(self.soa_to)

    def names(self) -> set[dns.name.Name]:
        """Every owner this changeset touches (not the apex, unless records there changed)."""
        return {rr[0] for rr in self.deleted} | {rr[0] for rr in self.added}


def soa_serial(rdata: bytes) -> int:
    """The SERIAL field of SOA rdata (the fifth-last 32-bit word)."""
    return struct.unpack_from("!I", rdata, len(rdata) - 20)[0]


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the journal table in a slice database written before it existed."""
    for ddl in _DDL:
        conn.execute(ddl)


def encode_rrs(rrs: Iterable[RR]) -> bytes:
    """RRs as consecutive uncompressed wire records (class IN)."""
    out = bytearray()
    for owner, rdtype, ttl, rdata in rrs:
        out += owner.to_wire()
        out += struct.pack("!HHIH", rdtype, dns.rdataclass.IN, ttl, len(rdata))
        out += rdata
    return bytes(out)


def decode_rrs(blob: bytes) -> list[RR]:
    """Inverse of :func:`encode_rrs`."""
    out: list[RR] = []
    pos = 0
    try:
        while pos < len(blob):
            labels = []
            while True:
                ln = blob[pos]
                if ln > 63:
                    raise JournalError("compressed or bad owner name in a journal entry")
                labels.append(blob[pos + 1 : pos + 1 + ln])
                pos += ln + 1
                if ln == 0:
                    break
            rdtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", blob, pos)
            pos += 10
            rdata = blob[pos : pos + rdlen]
            if len(rdata) != rdlen:
                raise JournalError("truncated journal entry")
            pos += rdlen
            out.append((dns.name.Name(labels), rdtype, ttl, rdata))
    except (IndexError, struct.error) as exc:
        raise JournalError(f"truncated journal entry ({exc})") from exc
    return out


# ---- append half


def append(conn: sqlite3.Connection, cs: Changeset, *, stamp: int | None = None) -> int:
    """Add ``cs`` inside the caller's open transaction; returns its sequence number."""
    cur = conn.execute(
        "INSERT INTO journal (serial_from, serial_to, soa_from, soa_to, deleted, added, stamp)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            cs.serial_from,
            cs.serial_to,
            cs.soa_from,
            cs.soa_to,
            encode_rrs(cs.deleted),
            encode_rrs(cs.added),
            int(time.time()) if stamp is None else stamp,
        ),
    )
    cs.seq = int(cur.lastrowid or 0)
    return cs.seq


def trim(conn: sqlite3.Connection, keep: int) -> int:
    """Drop all but the newest ``keep`` entries (older IXFR clients then get AXFR); returns
    how many went."""
    cur = conn.execute(
        "DELETE FROM journal WHERE seq <= (SELECT max(seq) FROM journal) - ?", (max(keep, 0),)
    )
    return cur.rowcount


# ---- read half


def _rows(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[Changeset]:
    sql = (
        "SELECT seq, soa_from, soa_to, deleted, added FROM journal WHERE seq > ? ORDER BY seq"
    )
    for seq, soa_from, soa_to, deleted, added in conn.execute(sql, (after_seq,)):
        yield Changeset(soa_from, soa_to, decode_rrs(deleted), decode_rrs(added), seq)


def last_seq(conn: sqlite3.Connection) -> int:
    """Sequence number of the newest entry (0 when the journal is empty or absent)."""
    try:
        row = conn.execute("SELECT max(seq) FROM journal").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def changes_since(conn: sqlite3.Connection, serial: int) -> list[Changeset] | None:
    """The changesets leading from ``serial`` to the newest one, oldest first.

    ``[]`` when ``serial`` is the newest serial in the journal; None when the
    journal cannot bridge it (unknown, too old, or a broken chain): the caller
    falls back to AXFR.
    """
    try:
        start = conn.execute(
            "SELECT max(seq) FROM journal WHERE serial_from = ?", (serial,)
        ).fetchone()[0]
        newest = conn.execute(
            "SELECT serial_to FROM journal ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    if newest is None:
        return None
    if start is None:
        return [] if newest[0] == serial else None
    chain: list[Changeset] = []
    expect = serial
    for cs in _rows(conn, start - 1):
        if cs.serial_from != expect:
            return None
        chain.append(cs)
        expect = cs.serial_to
    return chain


def names_since(
    conn: sqlite3.Connection, seq: int, at_most: int | None = None
) -> tuple[set[dns.name.Name] | None, int]:
    """Owners changed by the entries after ``seq`` and the newest sequence number.

    The apex appears as the relative empty name (its SOA changed in every entry);
    ``Responder.invalidate`` derelativizes it to the origin.

    The names are None when some entries after ``seq`` are gone (trimmed), or when
    more than ``at_most`` are pending (decoding them would cost the caller more than
    starting afresh): the caller must then assume everything changed.
    """
    if at_most is not None:
        newest = last_seq(conn)
        if newest - seq > at_most:
            return None, newest
    names: set[dns.name.Name] = set()
    newest = seq
    try:
        for cs in _rows(conn, seq):
            if cs.seq != newest + 1:
                return None, last_seq(conn)
            names |= cs.names()
            names.add(dns.name.empty)
            newest = cs.seq
    except sqlite3.OperationalError:
        return set(), seq
    return names, newest



# ---- per-slice journal (the primary's projection of each commit onto an N-part plan)

Row = tuple[bytes, int, int, bytes, int, int]
"""A slice database row: (rkey, rdtype, covers, rdata, ttl, origin)."""

_SLICE_DDL = [
    "CREATE TABLE IF NOT EXISTS slice_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " part INTEGER NOT NULL, serial_from INTEGER NOT NULL, serial_to INTEGER NOT NULL,"
    " soa_from BLOB NOT NULL, soa_to BLOB NOT NULL, deleted BLOB NOT NULL, added BLOB NOT NULL,"
    " reset INTEGER NOT NULL DEFAULT 0, stamp INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_slice_journal_from ON slice_journal (part, serial_from)",
]


@dataclass
class SliceChangeset:
    """One commit as slice ``part`` sees it: rows (with their origin) gone and come.

    A ``reset`` entry says the projection could not be computed step by step
    (e.g. the zone's DNSSEC mode changed): clients older than it get AXFR.
    """

    part: int
    soa_from: bytes
    soa_to: bytes
    deleted: list[Row] = field(default_factory=list)
    added: list[Row] = field(default_factory=list)
    reset: bool = False
    seq: int = 0

    @property
    def serial_from(self) -> int:
        return soa_serial(self.soa_from)

    @property
    def serial_to(self) -> int:
        return soa_serial(self.soa_to)


def ensure_slice_table(conn: sqlite3.Connection) -> None:
    for ddl in _SLICE_DDL:
        conn.execute(ddl)


def encode_rows(rows: Iterable[Row]) -> bytes:
    out = bytearray()
    for rkey, rdtype, covers, rdata, ttl, origin in rows:
        out += struct.pack("!H", len(rkey)) + rkey
        out += struct.pack("!HHIBH", rdtype, covers, ttl, origin, len(rdata)) + rdata
    return bytes(out)


def decode_rows(blob: bytes) -> list[Row]:
    out: list[Row] = []
    pos = 0
    try:
        while pos < len(blob):
            (klen,) = struct.unpack_from("!H", blob, pos)
            rkey = blob[pos + 2 : pos + 2 + klen]
            pos += 2 + klen
            rdtype, covers, ttl, origin, rdlen = struct.unpack_from("!HHIBH", blob, pos)
            pos += 11
            rdata = blob[pos : pos + rdlen]
            if len(rdata) != rdlen or len(rkey) != klen:
                raise JournalError("truncated slice journal entry")
            pos += rdlen
            out.append((rkey, rdtype, covers, rdata, ttl, origin))
    except struct.error as exc:
        raise JournalError(f"truncated slice journal entry ({exc})") from exc
    return out


def append_slice(conn: sqlite3.Connection, cs: SliceChangeset, *, stamp: int | None = None) -> int:
    """Add ``cs`` inside the caller's open transaction; returns its sequence number."""
    cur = conn.execute(
        "INSERT INTO slice_journal (part, serial_from, serial_to, soa_from, soa_to, deleted,"
        " added, reset, stamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cs.part,
            cs.serial_from,
            cs.serial_to,
            cs.soa_from,
            cs.soa_to,
            encode_rows(cs.deleted),
            encode_rows(cs.added),
            int(cs.reset),
            int(time.time()) if stamp is None else stamp,
        ),
    )
    cs.seq = int(cur.lastrowid or 0)
    return cs.seq


def clear_slices(conn: sqlite3.Connection) -> None:
    """Forget every slice entry (the plan changed)."""
    conn.execute("DELETE FROM slice_journal")


def trim_slices(conn: sqlite3.Connection, keep: int) -> int:
    """Keep the newest ``keep`` entries of each slice; returns how many went."""
    cur = conn.execute(
        "DELETE FROM slice_journal WHERE seq IN (SELECT seq FROM (SELECT seq, row_number()"
        " OVER (PARTITION BY part ORDER BY seq DESC) AS n FROM slice_journal) WHERE n > ?)",
        (max(keep, 0),),
    )
    return cur.rowcount


def slice_changes_since(
    conn: sqlite3.Connection, part: int, serial: int, current: int
) -> list[SliceChangeset] | None:
    """Slice ``part``'s changesets from ``serial`` to ``current`` (the zone's serial now).

    None when they do not bridge it (unknown serial, trimmed, a reset on the
    way, or a commit made without the projection): the caller sends AXFR form;
    ``[]`` when ``serial`` is ``current``.
    """
    if serial == current:
        return []
    try:
        start = conn.execute(
            "SELECT max(seq) FROM slice_journal WHERE part = ? AND serial_from = ?", (part, serial)
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return None
    if start is None:
        return None
    chain: list[SliceChangeset] = []
    expect = serial
    sql = (
        "SELECT seq, soa_from, soa_to, deleted, added, reset FROM slice_journal"
        " WHERE part = ? AND seq >= ? ORDER BY seq"
    )
    for seq, soa_from, soa_to, deleted, added, reset in conn.execute(sql, (part, start)):
        cs = SliceChangeset(part, soa_from, soa_to, decode_rows(deleted), decode_rows(added),
                            bool(reset), seq)  # fmt: skip
        if cs.reset or cs.serial_from != expect:
            return None
        chain.append(cs)
        expect = cs.serial_to
    return chain if expect == current else None


def reset_entry(conn: sqlite3.Connection, soa: bytes) -> int:
    """Mark a full reload in a secondary's own journal: drops the history (it described
    other content) and leaves a gap in ``seq``, so :func:`names_since` answers None
    (every cache drops everything) and :func:`changes_since` cannot bridge old serials."""
    newest = last_seq(conn)
    conn.execute("DELETE FROM journal")
    conn.execute(
        "INSERT INTO journal (seq, serial_from, serial_to, soa_from, soa_to, deleted, added, stamp)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (newest + 2, soa_serial(soa), soa_serial(soa), soa, soa, b"", b"", int(time.time())),
    )
    return newest + 2
