"""The single writer: UPDATEs queue up and one thread applies them, many per commit.

As Knot's ``ddns_queue`` drained by the update event: whatever is waiting when
the writer comes round is applied in one SQLite transaction (group commit). Each
message is applied to the group's rows in memory, a refused one leaves them as
they were (:func:`zoneslice.updates.ddns.process`), and the group's net change is
written once. The transaction commits in WAL mode
with ``synchronous=FULL`` (fsync) before any of the group's futures resolve, so
an answer is never sent for a change that is not on disk (RFC 2136 §3.5).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.name
import dns.rcode

from zoneslice import journal
from zoneslice.errors import StoreError
from zoneslice.store.db import write_transaction
from zoneslice.updates import ddns
from zoneslice.updates.wire import Update, parse_update

BUSY_TIMEOUT_MS = 10_000
CHECKPOINT_PAGES = 4000
CHECKPOINT_EVERY = 0.25


def connect_writer(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (transactions are explicit), WAL, fsync on commit."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such slice database")
    conn = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    journal.ensure_table(conn)
    return conn


class CommitSignal:
    """An 8-byte file next to the database, rewritten after every commit.

    Worker processes map it and compare it with the value they last saw before
    each query (a memory read, where ``PRAGMA data_version`` costs a SQLite call);
    a change means "read the journal for what to invalidate". Writers store the
    commit time in nanoseconds, so two writers never leave a reader's last value
    in place.
    """

    SIZE = 8

    def __init__(self, slice_db: str | os.PathLike[str]) -> None:
        self.path = Path(f"{slice_db}-commit")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self.map = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def value(self) -> bytes:
        return self.map[: self.SIZE]

    def bump(self) -> None:
        self.map[: self.SIZE] = time.time_ns().to_bytes(self.SIZE, "big")

    def close(self) -> None:
        self.map.close()


InTransaction = Callable[
    [sqlite3.Connection, list[journal.Changeset], Mapping[bytes, frozenset[ddns.Row]]], None
]


@dataclass
class Job:
    """One parsed UPDATE waiting for the writer (a dnspython message is re-read from ``wire``)."""

    msg: Update | dns.message.Message
    wire: bytes
    allowed: ddns.Allowed | None = None
    future: Future[ddns.UpdateResult] | asyncio.Future[ddns.UpdateResult] = field(
        default_factory=Future
    )
    """A thread future (:meth:`UpdateQueue.submit`) or the caller's asyncio one."""


class UpdateQueue:
    """Apply UPDATEs to one database from a single writer thread, grouped per commit.

    ``on_commit(names)`` runs in the writer thread after each commit that changed
    the zone, before the group's answers are released: the place to invalidate
    caches (and, later, XDP maps) so that no stale answer follows an ack.
    ``in_transaction(conn, changesets, before)`` runs inside the transaction, before
    the commit, so that what it writes (the per-slice projection of the changes)
    commits or rolls back with them; ``before`` holds the owned rows of every key the
    group read, as they were before it (the projection need not read them again).
    """

    def __init__(
        self,
        slice_db: str | os.PathLike[str],
        *,
        serial_policy: str = "increment",
        max_batch: int = 256,
        on_commit: Callable[[set[dns.name.Name]], None] | None = None,
        in_transaction: InTransaction | None = None,
    ) -> None:
        if serial_policy not in ddns.SERIAL_POLICIES:
            raise ValueError(f"serial policy must be one of {ddns.SERIAL_POLICIES}")
        self.path = Path(slice_db)
        self.conn = connect_writer(self.path)
        self.signal = CommitSignal(self.path)
        self.zone = ddns.Zone.from_conn(self.conn)
        self.serial_policy = serial_policy
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.in_transaction = in_transaction
        self.counters = {"updates": 0, "commits": 0, "changed": 0, "refused": 0, "max_group": 0,
                         "process_us": 0, "project_us": 0, "commit_us": 0, "hooks_us": 0}
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ckpt: tuple[threading.Thread, threading.Event] | None = None

    # ---- synchronous core (also what tests drive)

    def apply_batch(self, jobs: list[Job]) -> list[ddns.UpdateResult]:
        """Apply ``jobs`` in one transaction and commit; one result per job, in order."""
        return self._finish_batch(self._commit_batch(jobs))

    def _commit_batch(self, jobs: list[Job]) -> tuple[list[ddns.UpdateResult], int]:
        """Apply and commit ``jobs`` (fsync included: synchronous=FULL)."""
        conn = self.conn
        results: list[ddns.UpdateResult] = []
        c = self.counters
        clock = time.perf_counter
        with self._lock, write_transaction(conn):
            t0 = clock()
            batch = ddns.Batch()
            for job in jobs:
                upd = job.msg if isinstance(job.msg, Update) else _reparse(job.wire)
                if upd is None:
                    results.append(ddns.UpdateResult(dns.rcode.FORMERR, reason="unparsable"))
                    continue
                results.append(
                    ddns.process(
                        conn,
                        upd,
                        self.zone,
                        allowed=job.allowed,
                        serial_policy=self.serial_policy,
                        batch=batch,
                    )
                )
            batch.finish(conn)
            t1 = clock()
            changesets = [r.changeset for r in results if r.changeset is not None]
            if changesets and self.in_transaction is not None:
                self.in_transaction(conn, changesets, batch.stored)
            t2 = clock()
        t3 = clock()
        c["process_us"] += int(1e6 * (t1 - t0))
        c["project_us"] += int(1e6 * (t2 - t1))
        c["commit_us"] += int(1e6 * (t3 - t2))
        return results, len(jobs)

    def _finish_batch(self, staged: tuple[list[ddns.UpdateResult], int]) -> list[ddns.UpdateResult]:
        """After the commit: tell the workers, count, run ``on_commit``."""
        results, njobs = staged
        self.signal.bump()
        c = self.counters
        c["updates"] += njobs
        c["commits"] += 1
        c["max_group"] = max(c["max_group"], njobs)
        names: set[dns.name.Name] = set()
        for r in results:
            if r.changeset is not None:
                c["changed"] += 1
                names |= r.names
            elif r.rcode != dns.rcode.NOERROR:
                c["refused"] += 1
        if names and self.on_commit is not None:
            t = time.perf_counter()
            self.on_commit(names)
            c["hooks_us"] += int(1e6 * (time.perf_counter() - t))
        return results

    def apply(
        self, msg: Update | dns.message.Message, wire: bytes, allowed: ddns.Allowed | None = None
    ) -> ddns.UpdateResult:
        """One UPDATE, committed on return (bypasses the thread)."""
        return self.apply_batch([Job(msg, wire, allowed)])[0]

    # ---- the writer thread

    def submit(
        self, msg: Update | dns.message.Message, wire: bytes, allowed: ddns.Allowed | None = None
    ) -> Future[ddns.UpdateResult]:
        """Queue one UPDATE; the future resolves after its group has committed."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zoneslice-writer", daemon=True)
            self._thread.start()
        job = Job(msg, wire, allowed)
        self._q.put(job)
        return job.future  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            try:
                results = self.apply_batch(jobs)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                for job in jobs:
                    job.future.set_exception(exc)
            else:
                for job, res in zip(jobs, results, strict=True):
                    job.future.set_result(res)
            if stop:
                return

    def checkpoint_in_background(self, pages: int = CHECKPOINT_PAGES) -> None:
        """Move WAL checkpoints off the commit: SQLite's automatic one runs inside the
        COMMIT that crosses 1 000 pages (copy to the database, two more fsyncs) while the
        group waits for its answers; a thread with its own connection runs a PASSIVE one
        (it neither blocks nor waits for the writer) whenever the WAL exceeds ``pages``."""
        if self._ckpt is not None:
            return
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        page = self.conn.execute("PRAGMA page_size").fetchone()[0]
        stop = threading.Event()
        thread = threading.Thread(
            target=_checkpointer, args=(self.path, page * pages, stop, self.counters),
            name="zoneslice-checkpoint", daemon=True,
        )
        self._ckpt = (thread, stop)
        thread.start()

    def close(self) -> None:
        """Finish what is queued, stop the writer, close the connection."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self._ckpt is not None:
            thread, stop = self._ckpt
            stop.set()
            thread.join()
            self._ckpt = None
            self.conn.execute("PRAGMA wal_autocheckpoint=1000")
        self.conn.close()
        self.signal.close()


def _checkpointer(path: Path, limit: int, stop: threading.Event, counters: dict[str, int]) -> None:
    wal = Path(f"{path}-wal")
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=FULL")
        while not stop.wait(CHECKPOINT_EVERY):
            try:
                if wal.stat().st_size < limit:
                    continue
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                counters["checkpoints"] = counters.get("checkpoints", 0) + 1
            except (OSError, sqlite3.Error):
                continue
    finally:
        conn.close()


def _reparse(wire: bytes) -> Update | None:
    try:
        return parse_update(wire, None)
    except Exception:  # noqa: BLE001 - whatever the parser refuses is FORMERR
        return None
