"""A slice server's role: follow the primary by IXFR (fallback AXFR), forward UPDATEs.

:class:`SecondaryRole` runs in the node's writer process (the one process that
changes the slice database, :mod:`zoneslice.engine.node`). It checks the
primary's SOA when a NOTIFY comes in (answered NOERROR+AA at once, RFC 1996)
and on the SOA refresh timer (retry after a failure); the SOA query is unsigned,
the transfer request signed when a key is set. A newer serial (RFC 1982)
is fetched by IXFR over TCP carrying the slice option of
:mod:`zoneslice.xfr.transfer` (for a database split into N parts), verified
(one SOA chain from our serial to the primary's; TSIG when a key is set) and
applied in ONE SQLite transaction: the rows, the apex SOA, meta.serial and the
database's own journal entry, so workers' caches drop the changed names. An
IXFR that does not fit (a record to delete is missing) is retried as AXFR. A
full load replaces every row and resets the journal (workers drop everything).
Only after the commit are the commit hooks run (caches, XDP maps).

The SOA expire timer (RFC 1035 §3.3.13): meta ``refreshed_at`` holds the unix
time of the last check that reached the primary (written with the transfer, or
in its own small transaction when no transfer was needed); a database without
it counts as refreshed when the role starts. Once EXPIRE seconds have passed
(checked at start and at the expiry moment, not only on the retry timer) meta
``expired`` is set to '1' and the hooks run with None: workers answer SERVFAIL
and the XDP maps are emptied, as BIND, NSD and Knot stop serving an expired
zone. The retry timer keeps trying; the next successful check clears the flag.

UPDATEs are forwarded to the primary as received (RFC 2136 §6: the TSIG-signed
wire untouched, same ID) over TCP, or UDP when they came over UDP and fit;
the primary's answer is relayed as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from zoneslice import journal
from zoneslice.errors import ZonesliceError
from zoneslice.slicing import SlicePlan
from zoneslice.store import models
from zoneslice.store.db import write_transaction
from zoneslice.store.keys import first_label_bounds, name_key
from zoneslice.updates.ddns import serial_gt
from zoneslice.updates.queue import connect_writer
from zoneslice.xfr.projection import covers_of
from zoneslice.xfr.transfer import SLICE_OPTION, slice_option_data

log = logging.getLogger("zoneslice.secondary")

OP_NOTIFY, OP_UPDATE = 4, 5
T_SOA = 6
PAUSE_ENV = "ZONESLICE_XFR_APPLY_PAUSE"
"""Seconds to sleep inside the apply transaction, before COMMIT (crash tests only)."""


EXPIRED_KEY = "expired"
REFRESHED_KEY = "refreshed_at"


def time_to_expire(refreshed_at: float, expire: int, now: float) -> float:
    """Seconds left before the zone expires; <= 0 means it has expired."""
    return refreshed_at + expire - now


def next_wake(refresh_left: float, to_expire: float, expired: bool) -> float:
    """How long the timer sleeps: until the next refresh/retry, or the expiry moment if sooner."""
    wait = refresh_left if expired else min(refresh_left, to_expire)
    return max(0.0, wait)


class TransferError(ZonesliceError):
    """The zone transfer failed or did not verify."""


Rec = tuple[dns.name.Name, int, int, bytes, int | None]
"""A received answer record: (owner, rdtype, ttl, rdata, origin octet or None)."""


def _soa_fields(rdata: bytes) -> tuple[int, int, int, int, int]:
    """(serial, refresh, retry, expire, minimum) of SOA rdata."""
    return struct.unpack_from("!IIIII", rdata, len(rdata) - 20)


class SecondaryRole:
    """:class:`~zoneslice.engine.node.NodeRole` of a slice server (or a whole-zone secondary)."""

    def __init__(
        self,
        primary: tuple[str, int],
        *,
        keyring: Any = None,
        keyname: dns.name.Name | str | None = None,
        refresh: float | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.primary = (str(primary[0]), int(primary[1]))
        self.keyring = keyring
        self.keyname = dns.name.from_text(keyname) if isinstance(keyname, str) else keyname
        if self.keyring is not None and self.keyname is None and len(self.keyring) == 1:
            self.keyname = next(iter(self.keyring))
        self.refresh_override = refresh
        self.timeout = timeout
        self.counters: dict[str, Any] = {
            "serial": 0, "checks": 0, "ixfr": 0, "axfr": 0, "failures": 0, "notify": 0,
            "forwarded": 0, "forward_failed": 0, "last_error": "",
            "expired": False, "refreshed_at": 0.0, "expirations": 0,
        }  # fmt: skip
        self.expired = False
        self.refreshed_at = 0.0
        self.expire = 0
        self._stamp = 0.0
        self.ctx: Any = None
        self.conn: sqlite3.Connection | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self.transferred: asyncio.Event | None = None

    # ---- NodeRole

    async def start(self, ctx: Any) -> None:
        self.ctx = ctx
        self.conn = connect_writer(ctx.slice_db)
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        self.origin = dns.name.from_text(meta["origin"])
        self.index = int(meta.get("index", "0") or 0)
        self.parts = int(meta.get("parts", "1") or 1)
        self.dnssec = meta.get("dnssec", "")
        plan = SlicePlan.from_bounds_text(meta["origin"], [""] + meta.get("bounds", "").split())
        self.lo_key, self.hi_key = first_label_bounds(*plan.range_of(self.index))
        self.counters["serial"] = self.serial()
        self.expire = _soa_fields(self._our_soa())[3]
        now = time.time()
        if REFRESHED_KEY in meta:
            self.refreshed_at = float(meta[REFRESHED_KEY])
        else:
            self.refreshed_at = now
            self._write_meta({REFRESHED_KEY: _stamp_text(now)})
        self.expired = meta.get(EXPIRED_KEY) == "1"
        self._show()
        if self.expired:
            ctx.committed(None)
        elif time_to_expire(self.refreshed_at, self.expire, now) <= 0:
            self._expire()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.transferred = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._timer())

    async def handle(self, wire: bytes, client: tuple[str, int], tcp: bool) -> bytes | None:
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        opcode = (wire[2] >> 3) & 0xF
        if opcode == OP_NOTIFY:
            return self._notify(wire)
        if opcode == OP_UPDATE:
            return await self._forward(wire, tcp)
        return _header(wire, dns.rcode.NOTIMP)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._lock is not None:
            async with self._lock:
                pass
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ---- NOTIFY and the timers

    def _notify(self, wire: bytes) -> bytes | None:
        try:
            msg = dns.message.from_wire(wire, keyring=False)
        except Exception:  # noqa: BLE001 - malformed NOTIFY
            return _header(wire, dns.rcode.FORMERR)
        resp = dns.message.make_response(msg)
        if not msg.question or msg.question[0].name != self.origin:
            resp.set_rcode(dns.rcode.NOTAUTH)
            return resp.to_wire()
        self.counters["notify"] += 1
        resp.flags |= dns.flags.AA
        if self._wake is not None:
            self._wake.set()
        return resp.to_wire()

    async def _timer(self) -> None:
        due = time.monotonic()
        while True:
            assert self._wake is not None
            to_expire = time_to_expire(self.refreshed_at, self.expire, time.time())
            wait = next_wake(due - time.monotonic(), to_expire, self.expired)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            woke = self._wake.is_set()
            self._wake.clear()
            if woke or time.monotonic() >= due:
                ok = await self.refresh_now()
                soa = self._our_soa()
                _serial, refresh, retry, _expire, _min = _soa_fields(soa)
                if self.refresh_override is not None:
                    refresh = retry = self.refresh_override
                due = time.monotonic() + float(refresh if ok else min(retry, refresh))
            if not self.expired and time_to_expire(self.refreshed_at, self.expire, time.time()) <= 0:
                await self.expire_now()

    async def expire_now(self) -> None:
        """Mark the zone expired if EXPIRE has passed since the last successful check."""
        assert self._lock is not None
        async with self._lock:
            await asyncio.to_thread(self._expire)

    async def refresh_now(self) -> bool:
        """Check the primary's serial and transfer if it is newer; False on failure."""
        assert self._lock is not None
        async with self._lock:
            ok = await asyncio.to_thread(self._refresh)
        if ok and self.transferred is not None:
            self.transferred.set()
        return ok

    # ---- the transfer (in a thread: blocking sockets and SQLite)

    def serial(self) -> int:
        return _soa_fields(self._our_soa())[0]

    def _our_soa(self) -> bytes:
        assert self.conn is not None
        return self.conn.execute("SELECT rdata FROM rr WHERE rkey = x'' AND rdtype = 6").fetchone()[0]

    def _refresh(self) -> bool:
        self.counters["checks"] += 1
        try:
            ours = self.serial()
            theirs = self._primary_serial()
            self._stamp = time.time()
            if not serial_gt(theirs, ours):
                self._checked()
                return True
            try:
                applied = self._transfer(dns.rdatatype.IXFR, ours)
            except TransferError as exc:
                log.warning("IXFR from %s:%d failed (%s); trying AXFR", *self.primary, exc)
                applied = self._transfer(dns.rdatatype.AXFR, ours)
            if not applied:
                self._checked()
            return True
        except Exception as exc:  # noqa: BLE001 - the timer retries; the data stays as it was
            self.counters["failures"] += 1
            self.counters["last_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("refresh from %s:%d failed: %s", *self.primary, exc)
            return False

    # ---- the expire timer's state (meta refreshed_at / expired)

    def _show(self) -> None:
        self.counters["expired"] = self.expired
        self.counters["refreshed_at"] = self.refreshed_at

    def _write_meta(self, values: dict[str, str | None]) -> None:
        """One small transaction setting (or deleting, for None) meta keys."""
        conn = self.conn
        assert conn is not None
        with write_transaction(conn):
            _put_meta(conn, values)

    def _refreshed(self) -> bool:
        """After the commit that stamped ``refreshed_at``; True when that ended an expiry."""
        was = self.expired
        self.refreshed_at = self._stamp
        self.expire = _soa_fields(self._our_soa())[3]
        self.expired = False
        self._show()
        if was:
            log.warning("zone %s no longer expired: the primary %s:%d answered",
                        self.origin, *self.primary)  # fmt: skip
        return was

    def _checked(self) -> None:
        """A check reached the primary and needed no transfer: stamp it, end any expiry."""
        self._write_meta({REFRESHED_KEY: _stamp_text(self._stamp), EXPIRED_KEY: None})
        if self._refreshed():
            self.ctx.committed(None)

    def _expire(self) -> None:
        now = time.time()
        if self.expired or time_to_expire(self.refreshed_at, self.expire, now) > 0:
            return
        self._write_meta({EXPIRED_KEY: "1"})
        self.expired = True
        self.counters["expirations"] += 1
        self._show()
        log.warning("zone %s expired: no successful refresh from %s:%d for %.0f s (SOA expire %d)",
                    self.origin, *self.primary, now - self.refreshed_at, self.expire)  # fmt: skip
        self.ctx.committed(None)

    def _sign(self, msg: dns.message.Message) -> None:
        if self.keyring is not None and self.keyname is not None:
            msg.use_tsig(self.keyring, self.keyname)

    def _primary_serial(self) -> int:
        q = dns.message.make_query(self.origin, dns.rdatatype.SOA)
        addr, port = self.primary
        r = dns.query.udp(q, addr, port=port, timeout=self.timeout)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, addr, port=port, timeout=self.timeout)
        if r.rcode() != dns.rcode.NOERROR:
            raise TransferError(f"SOA query answered {dns.rcode.to_text(r.rcode())}")
        for rrset in r.answer:
            if rrset.rdtype == T_SOA and rrset.name == self.origin:
                return int(rrset[0].serial)
        raise TransferError("no SOA in the primary's answer")

    def _request(self, rdtype: int, ours: int) -> dns.message.Message:
        options = []
        if self.parts > 1:
            options.append(dns.edns.GenericOption(SLICE_OPTION, slice_option_data(self.index, self.parts)))
        q = dns.message.make_query(self.origin, rdtype, use_edns=0 if options else None,
                                   options=options or None)  # fmt: skip
        if rdtype == dns.rdatatype.IXFR:
            q.authority.append(dns.rrset.from_text(
                self.origin, 0, dns.rdataclass.IN, dns.rdatatype.SOA, f". . {ours} 0 0 0 0"))
        self._sign(q)
        return q

    def _receive(self, q: dns.message.Message) -> Iterator[Rec]:
        """Answer records of the transfer in order, TSIG verified (RFC 8945 §5.3.1)."""
        addr, port = self.primary
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        wire = q.to_wire()
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect((addr, port))
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            tsig_ctx = None
            first = True
            n_serial: int | None = None
            mode = ""  # "", "axfr", or "del"/"add" (where an IXFR sequence stands)
            count = 0
            while True:
                head = _recv_exact(s, 2)
                body = _recv_exact(s, int.from_bytes(head, "big"))
                r = dns.message.from_wire(
                    body, keyring=self.keyring, request_mac=q.mac if self.keyring else b"",
                    xfr=True, origin=None, tsig_ctx=tsig_ctx, multi=True,
                    one_rr_per_rrset=True,
                )  # fmt: skip
                if self.keyring is not None:
                    if first and not r.had_tsig:
                        raise TransferError("the primary's answer is not signed")
                    tsig_ctx = r.tsig_ctx
                if r.id != q.id:
                    raise TransferError("answer ID does not match")
                if r.rcode() != dns.rcode.NOERROR:
                    raise TransferError(f"transfer answered {dns.rcode.to_text(r.rcode())}")
                origins: bytes | None = None
                for opt in r.options:
                    if opt.otype == SLICE_OPTION:
                        origins = opt.to_wire()[4:]
                first = False
                done = False
                for n, rrset in enumerate(r.answer):
                    if done:
                        raise TransferError("records after the closing SOA")
                    rd = rrset[0]
                    o = origins[n] if origins is not None and n < len(origins) else None
                    rec: Rec = (rrset.name, int(rrset.rdtype), int(rrset.ttl), rd.to_wire(), o)
                    is_soa = rec[1] == T_SOA
                    serial = int(rd.serial) if is_soa else None
                    if count == 0:
                        if not is_soa:
                            raise TransferError("the transfer does not start with a SOA")
                        n_serial = serial
                    elif count == 1:
                        if is_soa and q.question[0].rdtype == dns.rdatatype.IXFR and serial != n_serial:
                            mode = "del"
                        elif is_soa and serial == n_serial:
                            done = True  # an empty zone or an empty IXFR
                        else:
                            mode = "axfr"
                    elif is_soa:
                        if mode == "axfr":
                            done = serial == n_serial
                        elif mode == "del":
                            mode = "add"
                        elif serial == n_serial:
                            done = True
                        else:
                            mode = "del"
                    count += 1
                    yield rec
                if done or (count == 1 and len(r.answer) == 1):
                    return

    def _origin(self, key: bytes, rdtype: int, covers: int) -> int:
        """A row's origin when the primary did not say (a whole-zone transfer)."""
        nsec3 = rdtype == 50 or (rdtype == 46 and covers == 50)
        owned = key == b"" or (key >= self.lo_key and (self.hi_key is None or key < self.hi_key))
        if owned and not nsec3:
            return models.OWNED
        if nsec3:
            return models.COPY_NSEC3
        if rdtype in (1, 28, 2) or (rdtype == 46 and covers in (1, 28)):
            return models.COPY_GLUE
        if rdtype == 47 or (rdtype == 46 and covers == 47):
            return models.COPY_NSEC
        return models.COPY_TARGET

    def _row(self, rec: Rec) -> journal.Row:
        name, rdtype, ttl, rdata, o = rec
        if not name.is_subdomain(self.origin):
            raise TransferError(f"{name} is outside {self.origin}")
        key = name_key(name, self.origin)
        covers = covers_of(rdtype, rdata)
        return key, rdtype, covers, rdata, ttl, o if o else self._origin(key, rdtype, covers)

    def _transfer(self, rdtype: int, ours: int) -> bool:
        """Fetch and apply; False when the answer was only the SOA (nothing to apply)."""
        q = self._request(rdtype, ours)
        recs = list(self._receive(q))
        if not recs or recs[0][1] != T_SOA:
            raise TransferError("the transfer does not start with a SOA")
        newest = recs[0]
        new_serial = _soa_fields(newest[3])[0]
        if len(recs) == 1:
            if serial_gt(new_serial, ours):
                raise TransferError("single SOA answer for a newer serial")
            return False
        if recs[-1][1] != T_SOA or _soa_fields(recs[-1][3])[0] != new_serial:
            raise TransferError("the transfer does not end with the new SOA")
        incremental = (
            rdtype == dns.rdatatype.IXFR
            and recs[1][1] == T_SOA
            and _soa_fields(recs[1][3])[0] == ours
        )
        if incremental:
            self._apply_ixfr(recs, ours, new_serial)
            self.counters["ixfr"] += 1
        else:
            self._apply_axfr(recs)
            self.counters["axfr"] += 1
        self.counters["serial"] = new_serial
        return True

    def _apply_ixfr(self, recs: list[Rec], ours: int, new_serial: int) -> None:
        steps: list[tuple[bytes, list[Rec], bytes, list[Rec]]] = []
        i = 1
        last = len(recs) - 1
        while i < last:
            soa_from = recs[i]
            if soa_from[1] != T_SOA:
                raise TransferError("IXFR sequence does not start with a SOA")
            i += 1
            deleted = []
            while i < last and recs[i][1] != T_SOA:
                deleted.append(recs[i])
                i += 1
            if i >= last + 1 or recs[i][1] != T_SOA:
                raise TransferError("IXFR sequence without its new SOA")
            soa_to = recs[i]
            i += 1
            added = []
            while i < last and recs[i][1] != T_SOA:
                added.append(recs[i])
                i += 1
            steps.append((soa_from[3], deleted, soa_to[3], added))
        expect = ours
        for soa_from, _d, soa_to, _a in steps:
            if _soa_fields(soa_from)[0] != expect:
                raise TransferError(f"IXFR chain breaks at serial {expect}")
            expect = _soa_fields(soa_to)[0]
        if expect != new_serial:
            raise TransferError(f"IXFR chain ends at {expect}, not {new_serial}")
        conn = self.conn
        assert conn is not None
        old_soa = self._our_soa()
        gone: list[journal.RR] = []
        come: list[journal.RR] = []
        with write_transaction(conn):
            for _sf, deleted, _st, added in steps:
                for rec in deleted:
                    key, rdt, covers, rdata, _ttl, _o = self._row(rec)
                    cur = conn.execute(
                        "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND covers = ? AND rdata = ?",
                        (key, rdt, covers, rdata),
                    )
                    if cur.rowcount != 1:
                        raise TransferError(f"IXFR deletes {rec[0]} type {rdt}, which we lack")
                    gone.append(rec[:4])
                rows = [self._row(rec) for rec in added]
                conn.executemany("INSERT OR REPLACE INTO rr VALUES (?, ?, ?, ?, ?, ?)", rows)
                come += [rec[:4] for rec in added]
            self._finish(conn, recs[-1])
            journal.append(conn, journal.Changeset(old_soa, recs[-1][3], gone, come))
            _pause()
        names = {r[0] for r in gone} | {r[0] for r in come} | {self.origin}
        self.ctx.committed(None if self._refreshed() else names)

    def _apply_axfr(self, recs: list[Rec]) -> None:
        conn = self.conn
        assert conn is not None
        rows = [self._row(rec) for rec in recs[1:-1] if rec[1] != T_SOA]
        with write_transaction(conn):
            conn.execute("DELETE FROM rr")
            conn.executemany("INSERT OR REPLACE INTO rr VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("INSERT INTO rr VALUES (x'', 6, 0, ?, ?, ?)",
                         (recs[-1][3], recs[-1][2], models.OWNED))  # fmt: skip
            self._finish(conn, recs[-1])
            journal.reset_entry(conn, recs[-1][3])
            _pause()
        self._refreshed()
        self.ctx.committed(None)

    def _finish(self, conn: sqlite3.Connection, soa: Rec) -> None:
        conn.execute("UPDATE rr SET rdata = ?, ttl = ? WHERE rkey = x'' AND rdtype = 6",
                     (soa[3], soa[2]))  # fmt: skip
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('serial', ?)",
                     (str(_soa_fields(soa[3])[0]),))  # fmt: skip
        _put_meta(conn, {REFRESHED_KEY: _stamp_text(self._stamp), EXPIRED_KEY: None})

    # ---- UPDATE forwarding (RFC 2136 §6)

    async def _forward(self, wire: bytes, tcp: bool) -> bytes | None:
        addr, port = self.primary
        try:
            async with asyncio.timeout(self.timeout):
                if tcp or len(wire) > 512:
                    reader, writer = await asyncio.open_connection(addr, port)
                    try:
                        writer.write(len(wire).to_bytes(2, "big") + wire)
                        await writer.drain()
                        head = await reader.readexactly(2)
                        out = await reader.readexactly(int.from_bytes(head, "big"))
                    finally:
                        writer.close()
                else:
                    out = await _udp_exchange(wire, (addr, port))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.counters["forward_failed"] += 1
            log.warning("UPDATE forward to %s:%d failed: %s", addr, port, exc)
            return _header(wire, dns.rcode.SERVFAIL)
        self.counters["forwarded"] += 1
        return wire[:2] + out[2:] if len(out) >= 12 else _header(wire, dns.rcode.SERVFAIL)


def _stamp_text(t: float) -> str:
    return f"{t:.3f}"


def _put_meta(conn: sqlite3.Connection, values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _pause() -> None:
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise TransferError("the primary closed the connection mid-transfer")
        buf += chunk
    return bytes(buf)


async def _udp_exchange(wire: bytes, target: tuple[str, int], tries: int = 3) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(target)
        for n in range(tries):
            await loop.sock_sendall(sock, wire)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 * (n + 1)):
                    while True:
                        got = await loop.sock_recv(sock, 65535)
                        if got[:2] == wire[:2] and len(got) >= 12 and got[2] & 0x80:
                            return got
    raise TimeoutError("no answer from the primary")


def _header(wire: bytes, rcode: int) -> bytes:
    ident, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | rcode, 0, 0, 0, 0)


def secondary_role_factory(primary: tuple[str, int], **kw: Any):
    """``role`` for :func:`zoneslice.engine.server.serve` (built after the fork)."""

    def make() -> SecondaryRole:
        return SecondaryRole(primary, **kw)

    return make
