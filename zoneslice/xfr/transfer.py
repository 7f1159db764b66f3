"""The primary's side of IXFR (RFC 1995) and AXFR, whole-zone or projected onto one slice.

:meth:`zoneslice.engine.query.Responder.axfr` hands every IXFR, and every AXFR
carrying an EDNS option, to :func:`serve_transfer`. Without option
:data:`SLICE_OPTION` (and without TSIG, when the Responder's own AXFR
serves it) the transfer is of the whole database (what dig, NSD and
Knot ask); with it (data ``struct.pack("!HH", index, parts)``) it is slice
``index`` of the N-part plan the primary projects for (``meta.xfr_plan``,
written by :class:`~zoneslice.xfr.projection.Projector`): REFUSED when there is
no plan or ``parts`` differs. IXFR comes from the journal (whole zone) or the
slice journal; when they do not reach the client's serial the answer is in
AXFR form (RFC 1995 §4), SOA, the full content, SOA.
An IXFR spanning several commits is condensed into one step (:func:`condense`).

Every response message of a slice transfer carries the option back with one
more octet per answer record: the record's ``origin`` in the slice table (0 for
SOA records), so the secondary stores exactly what split would have written.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig

from zoneslice import journal
from zoneslice.store.keys import key_name
from zoneslice.updates.ddns import serial_gt
from zoneslice.updates.handler import tsig_error_response
from zoneslice.xfr import projection

SLICE_OPTION = 65433
MESSAGE_SIZE = 16000
T_SOA, T_OPT, T_IXFR, T_AXFR = 6, 41, 251, 252
R_FORMERR, R_NOTAUTH, R_REFUSED = 1, 9, 5

_TSIG_ERRORS: list[tuple[type[Exception], int]] = [
    (dns.message.UnknownTSIGKey, 17),
    (dns.tsig.BadKey, 17),
    (dns.tsig.BadAlgorithm, 17),
    (dns.tsig.BadSignature, 16),
    (dns.tsig.BadTime, 18),
]

Wire = tuple[bytes, int, int, bytes, int]
"""An answer record ready to encode: (owner wire, rdtype, ttl, rdata, origin octet)."""


def slice_option_data(index: int, parts: int) -> bytes:
    return struct.pack("!HH", index, parts)


def _header_only(wire: bytes, question: bytes, rcode: int) -> bytes:
    ident, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x0110) | rcode,
                       1 if question else 0, 0, 0, 0) + question  # fmt: skip


class _Encoder:
    """Packs answer records into messages of about MESSAGE_SIZE octets."""

    def __init__(
        self,
        ident: int,
        flags: int,
        question: bytes,
        option: bytes | None,
        tsig: tuple[dns.tsig.Key, bytes] | None = None,
    ) -> None:
        self.head = (ident, flags)
        self.tsig = tsig
        self.tsig_ctx: Any = None
        self.question = question
        self.option = option
        self.rrs: list[bytes] = []
        self.origins = bytearray()
        self.size = 0

    def add(self, rec: Wire) -> bytes | None:
        owner, rdtype, ttl, rdata, origin = rec
        rr = owner + struct.pack("!HHIH", rdtype, 1, ttl, len(rdata)) + rdata
        self.rrs.append(rr)
        self.origins.append(origin)
        self.size += len(rr) + 1
        return self.flush() if self.size > MESSAGE_SIZE else None

    def flush(self) -> bytes:
        ident, flags = self.head
        opt = b""
        if self.option is not None:
            data = self.option + bytes(self.origins)
            opt = b"\x00" + struct.pack("!HHIH", T_OPT, 1232, 0, 4 + len(data))
            opt += struct.pack("!HH", SLICE_OPTION, len(data)) + data
        out = (
            struct.pack("!HHHHHH", ident, flags, 1, len(self.rrs), 0, 1 if opt else 0)
            + self.question
            + b"".join(self.rrs)
            + opt
        )
        self.rrs = []
        self.origins = bytearray()
        self.size = 0
        return self._sign(out) if self.tsig is not None else out

    def _sign(self, out: bytes) -> bytes:
        """Multi-message TSIG (RFC 8945 §5.3.1): every message signed, chained by the context."""
        assert self.tsig is not None
        key, request_mac = self.tsig
        template = dns.rdtypes.ANY.TSIG.TSIG(
            dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm, 0, 300, b"", self.head[0], 0, b""
        )
        rd, self.tsig_ctx = dns.tsig.sign(
            out, key, template, int(time.time()), request_mac, self.tsig_ctx, True
        )
        rdata = rd.to_wire()
        tail = key.name.to_wire() + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY,
                                                0, len(rdata))  # fmt: skip
        arcount = struct.unpack_from("!H", out, 10)[0] + 1
        return out[:10] + struct.pack("!H", arcount) + out[12:] + tail + rdata


def _stream(enc: _Encoder, records: Iterable[Wire], conn: sqlite3.Connection) -> Iterator[bytes]:
    try:
        for rec in records:
            msg = enc.add(rec)
            if msg is not None:
                yield msg
        yield enc.flush()
    finally:
        conn.close()


def _find_option(msg: dns.message.Message) -> bytes | None:
    for opt in msg.options:
        if opt.otype == SLICE_OPTION:
            return opt.to_wire() if hasattr(opt, "to_wire") else opt.data
    return None


def serve_transfer(responder: Any, wire: bytes, client: Any) -> Iterator[bytes] | bytes | None:
    """The response stream for an IXFR or option-carrying AXFR over TCP (None: a plain AXFR,
    left to the Responder). Transfers need ``responder.axfr_allowed`` like AXFR."""
    ring = getattr(responder, "xfr_keyring", None) or {}
    try:
        req = dns.message.from_wire(wire, keyring=ring, one_rr_per_rrset=True)
    except Exception as exc:  # noqa: BLE001 - TSIG failures get their error, the rest FORMERR
        for cls, err in _TSIG_ERRORS:
            if isinstance(exc, cls):
                return tsig_error_response(wire, err)
        return _header_only(wire, b"", R_FORMERR)
    if len(req.question) != 1:
        return _header_only(wire, b"", R_FORMERR)
    q = req.question[0]
    question = q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)
    option = _find_option(req)
    if q.rdtype == T_AXFR and option is None and not req.had_tsig:
        return None
    if q.rdtype not in (T_AXFR, T_IXFR):
        return _header_only(wire, question, R_FORMERR)
    if q.name != responder.origin or not responder._xfr_allowed(client):
        return _header_only(wire, question, R_REFUSED)
    client_serial = None
    if q.rdtype == T_IXFR:
        soa = [rrs for rrs in req.authority if rrs.rdtype == T_SOA]
        if not soa:
            return _header_only(wire, question, R_FORMERR)
        client_serial = int(soa[0][0].serial)
    conn = sqlite3.connect(f"file:{responder.path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        soa_rdata, soa_ttl = conn.execute(
            "SELECT rdata, ttl FROM rr WHERE rkey = x'' AND rdtype = 6"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        part: int | None = None
        if option is not None:
            plan = projection.stored_plan(conn)
            if len(option) < 4 or plan is None:
                conn.close()
                return _header_only(wire, question, R_REFUSED)
            part, parts = struct.unpack_from("!HH", option)
            if parts != plan.parts or part >= parts:
                conn.close()
                return _header_only(wire, question, R_REFUSED)
    except BaseException:
        conn.close()
        raise
    origin = responder.origin
    apex = origin.to_wire()
    current = journal.soa_serial(soa_rdata)
    flags = 0x8400 | (struct.unpack_from("!H", wire, 2)[0] & 0x0110)
    tsig = (ring[req.keyname], req.mac) if req.had_tsig else None
    enc = _Encoder(req.id, flags, question, None if part is None else option[:4], tsig)
    soa_rec: Wire = (apex, T_SOA, soa_ttl, soa_rdata, 0)

    if client_serial is not None and not serial_gt(current, client_serial):
        return _stream(enc, [soa_rec], conn)

    def full() -> Iterator[Wire]:
        yield soa_rec
        names: dict[bytes, bytes] = {}
        if part is not None:
            rows: Iterable[tuple] = projection.slice_records(conn, plan, part)
        else:
            whole = int(meta.get("parts", "1") or 1) == 1 or meta.get("index", "0") == "0"
            sql = "SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr"
            if int(meta.get("parts", "1") or 1) > 1:
                sql += " WHERE origin = 1" + (" OR origin = 4" if whole else "")
            rows = conn.execute(sql + " ORDER BY rkey, rdtype, covers")
        for rkey, rdtype, _covers, rdata, ttl, orig in rows:
            if rdtype == T_SOA and rkey == b"":
                continue
            owner = names.get(rkey)
            if owner is None:
                owner = names[rkey] = key_name(rkey, origin).to_wire()
            yield owner, rdtype, ttl, rdata, orig
        yield soa_rec

    if client_serial is None:
        return _stream(enc, full(), conn)
    if part is not None:
        chain = journal.slice_changes_since(conn, part, client_serial, current)
    elif int(meta.get("parts", "1") or 1) == 1:
        chain = journal.changes_since(conn, client_serial)
        if chain is not None and (not chain or chain[-1].serial_to != current):
            chain = None
    else:
        chain = None
    if chain is None:
        return _stream(enc, full(), conn)

    def diffs() -> Iterator[Wire]:
        yield soa_rec
        names: dict[bytes, bytes] = {}

        def owner(rkey: bytes) -> bytes:
            got = names.get(rkey)
            if got is None:
                got = names[rkey] = key_name(rkey, origin).to_wire()
            return got

        def records(rows: Any) -> Iterator[Any]:
            if part is not None:
                for rkey, rdtype, _c, rdata, ttl, orig in rows:
                    yield owner(rkey), rdtype, ttl, rdata, orig
            else:
                for name, rdtype, ttl, rdata in rows:
                    yield name.to_wire(), rdtype, ttl, rdata, 0

        deleted, added = condense(chain)
        yield apex, T_SOA, soa_ttl, chain[0].soa_from, 0
        yield from records(deleted)
        yield apex, T_SOA, soa_ttl, chain[-1].soa_to, 0
        yield from records(added)
        yield soa_rec

    return _stream(enc, diffs(), conn)


def condense(chain: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The net rows deleted and added from the first changeset's start to the last one's end.

    RFC 1995 §6 lets a server condense the steps of an IXFR into one: a secondary
    many commits behind (NOTIFYs are coalesced) then receives each changed record
    once, without a SOA pair per commit. Rows are whole tuples (TTL and origin
    included), as the journals store them, so a TTL change stays a delete and an add.
    """
    gone: dict[Any, None] = {}
    come: dict[Any, None] = {}
    for cs in chain:
        for row in cs.deleted:
            if row in come:
                del come[row]
            else:
                gone[row] = None
        for row in cs.added:
            if row in gone:
                del gone[row]
            else:
                come[row] = None
    return list(gone), list(come)


def keyed_responder_factory(keyring: dict, base: Any = None) -> Any:
    """A ``responder_factory`` for ``serve`` whose transfers accept (and sign with) TSIG keys
    from ``keyring``; a signed transfer request without a matching key gets BADKEY."""

    def factory(slice_db: Any, **kw: Any) -> Any:
        if base is None:
            from zoneslice.engine.query import Responder

            r = Responder(slice_db, **kw)
        else:
            r = base(slice_db, **kw)
        target = getattr(r, "inner", r)
        target.xfr_keyring = keyring
        return r

    return factory
