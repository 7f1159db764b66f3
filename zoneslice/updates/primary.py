"""The primary's role in the node's writer process: UPDATEs in, group commits, acks, NOTIFY.

Every worker checks TSIG and policy itself (:class:`PrimaryWorkerSide`, on every
core) and hands what passes to the one writer process (see
:mod:`zoneslice.engine.server`), whose asyncio loop calls :meth:`PrimaryRole.handle`
for each as it arrives. Whatever arrived in one turn of the loop is applied by
:meth:`UpdateQueue.apply_batch` in one transaction and one fsync (group commit),
in the loop's own thread: a separate commit thread would make ~15 short SQLite
calls per update, each waiting for the GIL. After the commit, still before any
of the group's answers leaves, the node's commit hooks run (``ctx.committed``:
workers' caches, XDP maps); then the secondaries are notified of the new serial.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dns.name
import dns.rcode

from zoneslice.updates.acl import Keyring, UpdatePolicy
from zoneslice.updates.handler import UpdateGate, header_error
from zoneslice.updates.queue import InTransaction, Job, UpdateQueue
from zoneslice.updates.wire import parse_update, response

log = logging.getLogger("zoneslice.primary")

OP_NOTIFY = 4
WAIT_PAUSE = 1.0
"""Seconds without commit delays after a delayed group that nobody joined late."""
LATE_AFTER = 0.002
"""An update joining a delayed group later than this (or half the delay) did not come
back from an answer of ours within a local round trip: the senders are not all waiting."""
GATED = b"ZSG1"
"""Head of a message a worker has already gated: GATED, key name length, key name, wire."""


class PrimaryRole:
    """:class:`~zoneslice.engine.node.NodeRole` of the node that applies UPDATEs.

    ``notify`` lists the secondaries' ``(addr, port)``: a commit that moves the
    serial calls ``zoneslice.xfr.notify.Notifier.changed(serial)``, at most once
    per ``notify_delay`` seconds (the latest serial when the delay is up; BIND's
    ``notify-delay``), so that a secondary fetches one IXFR per burst of
    updates instead of one per update.
    ``in_transaction(conn, changesets, before)`` runs inside each commit (the
    per-slice projection of the changes; see :class:`UpdateQueue`).
    ``commit_delay`` (seconds) lets a group that would be smaller than
    ``commit_group`` wait that long for more updates before its transaction starts
    (PostgreSQL's ``commit_delay``): at a steady trickle of updates each commit
    would otherwise carry one update and its fixed costs (fsync, projection of
    the slices, journal entries, NOTIFY timer) alone. Concurrent senders fill the
    group at once and never wait, and neither does an update that follows the one
    before it by more than ``commit_delay`` (no stream to wait for: an occasional
    update is applied at once). A wait that nobody joined after its first
    ``LATE_AFTER`` means the senders are waiting for our answers (a few closed-loop
    clients, as parallel ``nsupdate`` runs, all in the group within a round trip):
    groups then go at once for ``WAIT_PAUSE`` seconds before a wait is tried again,
    so those clients are not held to one group per ``commit_delay``.
    """

    def __init__(
        self,
        keyring: Keyring | None,
        policy: UpdatePolicy,
        *,
        serial_policy: str = "increment",
        notify: Iterable[tuple[str, int]] = (),
        in_transaction: InTransaction | None = None,
        max_batch: int = 256,
        notify_delay: float = 0.1,
        notifier_options: dict[str, Any] | None = None,
        commit_delay: float = 0.0,
        commit_group: int = 8,
    ) -> None:
        self.gate = UpdateGate(keyring, policy)
        self.keyring = keyring or {}
        self.serial_policy = serial_policy
        self.notify = list(notify)
        self.in_transaction = in_transaction
        self.max_batch = max_batch
        self.commit_delay = commit_delay
        self.commit_group = commit_group
        self._delayed: asyncio.TimerHandle | None = None
        self._last_arrival = float("-inf")
        self._late_from = 0.0
        self._late_joins = 0
        self._waits_paused_until = float("-inf")
        self.notifier_options = dict(notifier_options or {})
        self.notify_delay = notify_delay
        self._notify_serial: int | None = None
        self._notify_timer: asyncio.TimerHandle | None = None
        self._notified_at = 0.0
        self.queue: UpdateQueue | None = None
        self.notifier: Any = None
        self.ctx: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Job] = []
        self._scheduled = False
        self._scopes: dict[dns.name.Name | None, Any] = {}
        self._key_names: dict[bytes, dns.name.Name] = {}
        self.counters: dict[str, Any] = {
            "received": 0,
            "gated": 0,
            "acked": 0,
            "servfail": 0,
            "notify_received": 0,
            "delayed_groups": 0,
            "delay_pauses": 0,
            "rcodes": {},
        }

    # ---- NodeRole

    async def start(self, ctx: Any) -> None:
        self.ctx = ctx
        self._loop = asyncio.get_running_loop()
        self.queue = UpdateQueue(
            ctx.slice_db,
            serial_policy=self.serial_policy,
            max_batch=self.max_batch,
            on_commit=self._committed,
            in_transaction=self.in_transaction,
        )
        self.queue.checkpoint_in_background()
        self.counters["queue"] = self.queue.counters
        if self.notify:
            self.notifier = _make_notifier(self.queue.zone.origin, self.notify, self.keyring,
                                           self.notifier_options)
            start = getattr(self.notifier, "start", None)
            if start is not None:
                await _maybe_await(start())

    async def handle(self, wire: bytes, client: tuple[str, int], tcp: bool) -> bytes | None:
        if wire.startswith(GATED):
            return await self._handle_gated(wire)
        c = self.counters
        if len(wire) >= 12 and (wire[2] >> 3) & 0xF == OP_NOTIFY:
            c["notify_received"] += 1
            return header_error(wire, dns.rcode.REFUSED)
        c["received"] += 1
        checked = self.gate.check(wire, client)
        if not isinstance(checked, tuple):
            c["gated"] += 1
            return checked
        upd, allowed = checked
        assert self.queue is not None
        try:
            result = await self._submit(upd, wire, allowed)
        except Exception:  # noqa: BLE001 - the database failed: nothing was acknowledged
            log.exception("update failed")
            c["servfail"] += 1
            return response(upd, wire, dns.rcode.SERVFAIL)
        self._count(result.rcode)
        return response(upd, wire, result.rcode)

    async def _handle_gated(self, payload: bytes) -> bytes:
        """A message a worker gated (:class:`PrimaryWorkerSide`): apply, answer the rcode only
        (the worker signs the response)."""
        got = self.submit(payload)
        assert got is not None
        return await got

    def submit(self, payload: bytes) -> asyncio.Future[bytes] | None:
        """The one-byte answer (the rcode) to a gated message, as a future resolved right
        after its group's commit and hooks: the writer process calls this for each request
        instead of running a task per message. None: not gated, use :meth:`handle`."""
        if not payload.startswith(GATED):
            return None
        assert self._loop is not None and self.queue is not None
        self.counters["received"] += 1
        out: asyncio.Future[bytes] = self._loop.create_future()
        n = payload[len(GATED)]
        start = len(GATED) + 1
        try:
            key = self._key_names.get(payload[start : start + n]) if n else None
            if n and key is None:
                key = self._key_names[payload[start : start + n]] = dns.name.from_wire(payload, start)[0]
            wire = payload[start + n :]
            upd = parse_update(wire, None)
        except Exception:  # noqa: BLE001 - the worker only stepped over the records
            self._count(dns.rcode.FORMERR)
            out.set_result(bytes((dns.rcode.FORMERR,)))
            return out
        job = self._submit(upd, wire, self._allowed(key))
        job.add_done_callback(functools.partial(self._gated_done, out))
        return out

    def _gated_done(self, out: asyncio.Future[bytes], job: asyncio.Future[Any]) -> None:
        c = self.counters
        if job.cancelled() or job.exception() is not None:
            if not job.cancelled():
                log.error("update failed", exc_info=job.exception())
            c["servfail"] += 1
            rcode = dns.rcode.SERVFAIL
        else:
            rcode = job.result().rcode
            self._count(rcode)
        if not out.done():
            out.set_result(bytes((rcode,)))

    def _count(self, rcode: int) -> None:
        """Tally an answered update by its rcode (NOERROR: acknowledged)."""
        c = self.counters
        name = dns.rcode.to_text(rcode)
        c["rcodes"][name] = c["rcodes"].get(name, 0) + 1
        if rcode == dns.rcode.NOERROR:
            c["acked"] += 1

    def _allowed(self, key: dns.name.Name | None) -> Any:
        """The policy check for ``key``'s records; None when the key may change the whole
        zone (ddns refuses names outside the zone before asking)."""
        got = self._scopes.get(key, False)
        if got is False:
            policy = self.gate.policy
            assert self.queue is not None
            if list(policy.scope(key)) == [self.queue.zone.origin]:
                got = None
            else:

                def got(name: dns.name.Name, _rdtype: int) -> bool:
                    return policy.may_change(key, name)

            self._scopes[key] = got
        return got

    def _submit(self, upd: Any, wire: bytes, allowed: Any) -> asyncio.Future[Any]:
        assert self._loop is not None
        job = Job(upd, wire, allowed, self._loop.create_future())
        self._pending.append(job)
        now = self._loop.time()
        streaming = now - self._last_arrival < self.commit_delay and now >= self._waits_paused_until
        self._last_arrival = now
        if self._delayed is not None and now >= self._late_from:
            self._late_joins += 1
        if not self._scheduled:
            self._scheduled = True
            if streaming and len(self._pending) < self.commit_group:
                self.counters["delayed_groups"] += 1
                self._late_from = now + min(self.commit_delay / 2, LATE_AFTER)
                self._late_joins = 0
                self._delayed = self._loop.call_later(self.commit_delay, self._drain)
            else:
                self._loop.call_soon(self._drain)
        elif self._delayed is not None and len(self._pending) >= self.commit_group:
            self._delayed.cancel()  # the wait paid off: the group is full
            self._delayed = None
            self._loop.call_soon(self._drain)
        return job.future  # type: ignore[return-value]

    def _drain(self) -> None:
        """Apply everything that arrived in this turn of the loop (or the commit delay)
        as one group."""
        self._scheduled = False
        if self._delayed is not None and not self._late_joins:
            assert self._loop is not None  # nobody came late: the senders wait for our answers
            self._waits_paused_until = self._loop.time() + WAIT_PAUSE
            self.counters["delay_pauses"] += 1
        self._delayed = None
        jobs, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)
        if not jobs:
            return
        assert self.queue is not None
        try:
            results = self.queue.apply_batch(jobs)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            _fail(jobs, exc)
            return
        for job, res in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(res)

    async def stop(self) -> None:
        if self._delayed is not None:
            delayed, self._delayed = self._delayed, None
            delayed.cancel()
            self._drain()
        if self._notify_timer is not None:
            self._notify_timer.cancel()
            self._notify()
        if self.queue is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.queue.close)
            self.queue = None
        if self.notifier is not None:
            stop = getattr(self.notifier, "stop", None) or getattr(self.notifier, "close", None)
            if stop is not None:
                await _maybe_await(stop())

    # ---- after the commit, before the acks

    def _committed(self, names: set[dns.name.Name]) -> None:
        self.ctx.committed(names)
        if self.notifier is None or self.queue is None or self._loop is None:
            return
        row = self.queue.conn.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()
        if row is None:
            return
        self._notify_serial = int(row[0])
        if self._notify_timer is None:
            wait = max(0.0, self._notified_at + self.notify_delay - self._loop.time())
            self._notify_timer = self._loop.call_later(wait, self._notify)

    def _notify(self) -> None:
        self._notify_timer = None
        serial = self._notify_serial
        if serial is None or self._loop is None:
            return
        self._notify_serial = None
        self._notified_at = self._loop.time()
        try:
            got = self.notifier.changed(serial)
            if inspect.isawaitable(got):
                asyncio.ensure_future(got)
        except Exception:  # noqa: BLE001 - a failed NOTIFY must not touch the update path
            log.exception("NOTIFY for serial %d failed", serial)


def _fail(jobs: list[Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


def _make_notifier(
    origin: dns.name.Name,
    targets: Sequence[tuple[str, int]],
    keyring: Keyring,
    options: dict[str, Any],
) -> Any:
    try:
        from zoneslice.xfr.notify import Notifier
    except ImportError:
        log.warning("zoneslice.xfr.notify is not available: secondaries will not be notified")
        return None
    return Notifier(origin, list(targets), **options)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class PrimaryWorkerSide:
    """The part of the primary that runs in every query worker: TSIG check, policy and the
    signed answer, in parallel on all workers; the writer then only applies.

    :meth:`prepare` gives the answer to send now (refusals, NOTIFY), or the payload for the
    writer and how to turn its one-byte reply (the rcode) into the answer.
    """

    def __init__(self, keyring: Keyring | None, policy: UpdatePolicy) -> None:
        self.gate = UpdateGate(keyring, policy, records=False)

    def prepare(
        self, wire: bytes, client: Any
    ) -> bytes | None | tuple[bytes, Callable[[bytes | None], bytes | None]]:
        if len(wire) >= 12 and (wire[2] >> 3) & 0xF == OP_NOTIFY:
            return header_error(wire, dns.rcode.REFUSED)
        checked = self.gate.check(wire, client)
        if not isinstance(checked, tuple):
            return checked
        upd, _allowed = checked
        key = upd.keyname.to_wire() if upd.keyname is not None else b""
        payload = GATED + bytes((len(key),)) + key + wire

        def finish(reply: bytes | None) -> bytes:
            rcode = reply[0] if reply else dns.rcode.SERVFAIL
            return response(upd, wire, rcode)

        return payload, finish


class PrimaryFactory:
    """``role`` for :func:`zoneslice.engine.server.serve`: builds the :class:`PrimaryRole` in the
    writer process and a :class:`PrimaryWorkerSide` in each worker."""

    def __init__(self, keyring: Keyring | None, policy: UpdatePolicy, **kw: Any) -> None:
        self.keyring = keyring
        self.policy = policy
        self.kw = kw

    def __call__(self) -> PrimaryRole:
        return PrimaryRole(self.keyring, self.policy, **self.kw)

    def worker_side(self) -> PrimaryWorkerSide:
        return PrimaryWorkerSide(self.keyring, self.policy)


def primary_role_factory(
    slice_db: Any,
    keyring: Keyring | None,
    *,
    grants: Iterable[str] = (),
    allow_unsigned: Iterable[str] = (),
    **kw: Any,
) -> PrimaryFactory:
    """The primary's ``role`` for :func:`zoneslice.engine.server.serve`: keys may change the
    zone (or their ``KEY=NAME`` grants), ``allow_unsigned`` addresses may send unsigned UPDATEs;
    ``kw`` go to :class:`PrimaryRole`."""
    import contextlib

    from zoneslice.store.db import connect_readonly, read_meta

    with contextlib.closing(connect_readonly(slice_db)) as conn:
        origin = read_meta(conn)["origin"]
    policy = UpdatePolicy.from_grants(origin, keyring or {}, grants, allow_unsigned)
    return PrimaryFactory(keyring, policy, **kw)
