"""One call for `serve --xdp IFACE --hot N`: learn the hot set, attach, keep it fresh, detach.

::

    with hot_path(slice_db, "eth1", top=10000, counts="hot.json", slice_index=3) as hot:
        serve(slice_db, listen, workers, role=..., commit_hooks=[hot.on_update])

The program is compiled and attached in the calling (parent) process, so it
stays attached while forked workers serve and is detached when the block
ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import dns.name

from zoneslice.hot import entries as E
from zoneslice.hot.hotset import HotSet, read_counts
from zoneslice.store.db import connect_readonly, read_meta
from zoneslice.store.keys import key_name
from zoneslice.xdp.loader import HotPath, Options

log = logging.getLogger("zoneslice.hot")

CountsFn = Callable[[], Counter[tuple[bytes, int]]]


def _origin(slice_db: str | os.PathLike[str]) -> dns.name.Name:
    conn = connect_readonly(slice_db)
    try:
        return dns.name.from_text(read_meta(conn)["origin"])
    finally:
        conn.close()


def slice_cuts(slice_db: str | os.PathLike[str], limit: int) -> Counter[tuple[bytes, int]]:
    """Without counts: the slice's first ``limit`` delegations, each counted once."""
    origin = _origin(slice_db)
    conn = connect_readonly(slice_db)
    try:
        rows = conn.execute(
            "SELECT DISTINCT rkey FROM rr WHERE rdtype = 2 AND origin = 1 AND rkey != x'' "
            "ORDER BY rkey LIMIT ?",
            (limit,),
        ).fetchall()
    finally:
        conn.close()
    return Counter({(key_name(k, origin).to_wire(), 1): 1 for (k,) in rows})


class Hot:
    """What the block gets: the program, the hot set, the update hook and the re-ranking.

    The maps are kernel objects shared by every process forked from the one that
    loaded them; the bookkeeping of what is loaded (``HotSet.loaded``) lives in
    ``state_dir/index.marshal`` under ``state_dir/lock`` (a POSIX lock), so the serve parent
    (re-ranking) and the writer process (:meth:`on_update` after each commit) never
    work from stale copies: each re-reads the index when another wrote it. A
    SQLite connection never crosses a fork: each process opens its own Responder.

    While a secondary's zone is expired (meta ``expired``), the maps hold nothing:
    the loaded keys are parked in ``state_dir/parked.marshal`` and installed again,
    learnt from the data then committed, by the first commit hook after recovery.
    """

    def __init__(
        self,
        slice_db: str | os.PathLike[str],
        path: HotPath,
        state_dir: str | os.PathLike[str],
        *,
        origin: dns.name.Name | None = None,
    ) -> None:
        self.slice_db = Path(slice_db)
        self.path = path
        self.state_dir = Path(state_dir)
        self.origin = origin if origin is not None else _origin(slice_db)
        self.hotset = HotSet(self._respond, path, origin=self.origin)
        self.stats: dict[str, int] = {}
        self.last_refresh: dict[str, int] = {}
        self.refreshes = 0
        self._hit_score: Counter[tuple[str, bytes, int]] = Counter()
        self._class_seq = 0
        self._responder: Any = None
        self._pid = 0
        self._seen = b""  # token of the index this process last read or wrote
        self._tlock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._tlock = threading.Lock()

    # -- per-process engine ------------------------------------------------------
    def responder(self) -> Any:
        """This process's Responder on the slice (opened on first use after a fork)."""
        if self._pid != os.getpid():
            from zoneslice.engine.query import Responder

            self._responder = Responder(self.slice_db)
            self._pid = os.getpid()
        return self._responder

    def _respond(self, wire: bytes) -> bytes | None:
        return self.responder().respond(wire, tcp=False)

    # -- the shared index ----------------------------------------------------------
    @property
    def _index(self) -> Path:
        return self.state_dir / "index.marshal"

    @property
    def _parked(self) -> Path:
        return self.state_dir / "parked.marshal"

    def zone_expired(self) -> bool:
        """Whether the slice is an expired secondary zone (nothing may be answered from it)."""
        return read_meta(self.responder().conn).get("expired") == "1"

    def _read_parked(self) -> dict[tuple[str, bytes, int], int]:
        try:
            return marshal.loads(self._parked.read_bytes())
        except FileNotFoundError:
            return {}

    def _park(self, hs: HotSet, more: Iterable[tuple[Any, int]] = ()) -> int:
        """Empty the maps, remembering what was loaded (and ``more``) for after recovery.
        Call with the file lock held."""
        parked = self._read_parked()
        for k, count in [*((k, v.count) for k, v in hs.loaded.items()), *more]:
            parked[(k[0], k[1], int(k[2]))] = int(count)
        tmp = self.state_dir / f".parked.{os.getpid()}.tmp"
        tmp.write_bytes(marshal.dumps(parked))
        os.replace(tmp, self._parked)
        n = len(hs.loaded)
        hs.drop(list(hs.loaded))
        self.stats["parked"] = len(parked)
        return n

    def _unpark(self, hs: HotSet) -> int:
        """Load the keys parked while the zone was expired; returns how many were loaded."""
        parked = self._read_parked()
        if not parked:
            return 0
        ranked = [(k, v.count) for k, v in hs.loaded.items()]
        ranked += [(k, c) for k, c in parked.items() if k not in hs.loaded]
        ranked.sort(key=lambda kc: -kc[1])
        st = hs.install(ranked)
        self._parked.unlink(missing_ok=True)
        self.stats["parked"] = 0
        log.info("zone no longer expired: %d hot keys loaded again", st["loaded"])
        return st["loaded"]

    @contextlib.contextmanager
    def shared(self) -> Iterator[HotSet]:
        """Exclusive use of the hot set across processes and threads, with its latest state."""
        with self._tlock, self._file_lock():
            self._sync()
            self.responder().invalidate(None)  # learn from what is committed now
            before = self.hotset.version
            try:
                yield self.hotset
            finally:
                if self.hotset.version != before:
                    self._save()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """A POSIX record lock: owned by the process, so a child forked while it is held
        (a restarted worker or writer) does not keep it."""
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _sync(self) -> None:
        """Read the index if another process wrote it since this one last did."""
        try:
            with open(self._index, "rb") as f:
                token = f.read(8)
                if token != self._seen:
                    self.hotset.import_state(f.read())
                    self._seen = token
        except FileNotFoundError:
            pass

    def _save(self) -> None:
        """Write the index with a fresh token (what tells the other processes it changed)."""
        token = os.urandom(8)
        tmp = self.state_dir / f".index.{os.getpid()}.tmp"
        tmp.write_bytes(token + self.hotset.export_state())
        os.replace(tmp, self._index)
        self._seen = token

    # -- what the server calls -------------------------------------------------------
    def on_update(self, changed: Iterable[dns.name.Name] | None) -> int:
        """CommitHook: replace or delete every entry the committed change may alter.

        Runs in whichever process committed (the node's writer), after the commit and
        before the acks; returns how many keys were relearned or patched
        (:meth:`HotSet.on_commit`). None: reload all. An expired zone (a secondary
        that lost its primary) empties the maps; the first call after recovery
        refills them.
        """
        if changed is not None:
            changed = {n.derelativize(self.origin) for n in changed}  # journal names are relative
        with self.shared() as hs:
            try:
                if self.zone_expired():
                    n = self._park(hs)
                    log.warning("zone expired: %d hot keys removed from the maps", n)
                    return 0
                n = hs.on_commit(changed) + self._unpark(hs)
            except Exception:  # noqa: BLE001 - whatever failed, no stale answer may stay
                keys = hs.affected(changed)
                log.exception("updating the hot set failed; removing %d keys", len(keys))
                try:
                    hs.drop(keys)
                except Exception:  # noqa: BLE001
                    log.exception("removing them failed too; XDP answers switched off")
                    self.path.set_enabled(False)
                return 0
            self.stats["updated"] = self.stats.get("updated", 0) + n
            return n

    def install(self, counts: Counter[tuple[bytes, int]], top: int) -> dict[str, int]:
        """Load the ``top`` keys of ``counts`` (the start of serving); none while expired."""
        with self.shared() as hs:
            ranked = hs.rank(counts, top)
            if self.zone_expired():
                self._park(hs, ranked)
                return {"parked": len(ranked), "loaded": 0}
            return hs.install(ranked)

    def refresh(self, counts: Counter[tuple[bytes, int]], top: int) -> dict[str, int]:
        """Promote what became hot, evict what cooled.

        ``counts`` are the engine's (what XDP passed up, decayed by the workers with a
        half-life of the refresh period); the program's per-key hits are added for
        the loaded keys, decayed the same way. Keys nobody asked for are evicted only
        when hotter ones need their room; without any traffic nothing changes.

        Ranking and learning the new keys happen without the lock, so commits are not
        held up; if one happened meanwhile (the journal moved), the new keys it may
        have changed are learnt again under the lock before they are installed.
        """
        from zoneslice import journal

        with self._tlock:
            r = self.responder()
            if self.zone_expired():
                self.last_refresh = {"skipped_expired": 1}
                return self.last_refresh
            seq = journal.last_seq(r.conn)
            r.invalidate(None)
            self._sync()
            hs = self.hotset
            if seq != self._class_seq:  # the zone changed: names may fold differently now
                hs.forget_classes()
                self._class_seq = seq
            folded = hs.fold(counts)
            self._hit_score = Counter(
                {k: v >> 1 for k, v in self._hit_score.items() if v > 1 and k in hs.loaded}
            )
            self._hit_score.update(hs.hit_counts())
            folded.update(self._hit_score)
            if not folded:
                self.last_refresh = {"skipped": 1}
                return self.last_refresh
            ranked = folded.most_common(top)
            if len(ranked) < top:  # room left: what cooled stays until something displaces it
                chosen = {k for k, _ in ranked}
                rest = sorted(
                    (k for k in hs.loaded if k not in chosen), key=lambda k: -hs.loaded[k].count
                )
                ranked += [(k, 0) for k in rest[: top - len(ranked)]]
            learned = hs.learn(k for k, _ in ranked if k not in hs.loaded)
            with self._file_lock():
                self._sync()
                if self.zone_expired():  # it expired while the new keys were learnt
                    self.last_refresh = {"skipped_expired": 1}
                    return self.last_refresh
                before = hs.version
                try:
                    names, _ = journal.names_since(r.conn, seq)
                    if names is None or names:
                        r.invalidate(None)
                        if names is not None:
                            names = {n.derelativize(self.origin) for n in names}
                        described = {k: hs.describe(k, v) for k, v in learned.items()}
                        learned.update(hs.learn(hs.affected(names, among=described)))
                    self.last_refresh = hs.install(ranked, learned)
                finally:
                    if hs.version != before:
                        self._save()
            self.refreshes += 1
            return self.last_refresh


XDP_FILE = "xdp.json"


def _publish(hot: Hot, stats_dir: Path) -> None:
    from zoneslice.engine.stats import write_json

    write_json(
        stats_dir / XDP_FILE,
        {
            "time": time.time(),
            "iface": hot.path.iface,
            "mode": hot.path.attached_mode,
            "counters": hot.path.counters(),
            "hot": {k: v for k, v in hot.hotset.summary().items() if k != "rejected"},
            "last_refresh": hot.last_refresh,
            "refreshes": hot.refreshes,
        },
    )


def background(
    hot: Hot,
    top: int,
    *,
    counts: CountsFn | None = None,
    every: float = 60.0,
    stats_dir: str | os.PathLike[str] | None = None,
    tick: float = 0.25,
) -> tuple[threading.Event, threading.Thread]:
    """A daemon thread calling ``hot.refresh(counts(), top)`` every ``every`` seconds and
    writing the program's counters to ``stats_dir/xdp.json`` every ``tick``."""
    stop = threading.Event()

    def loop() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
        due = time.monotonic() + every
        while True:
            if stats_dir is not None:
                try:
                    _publish(hot, Path(stats_dir))
                except Exception:  # noqa: BLE001 - advisory file
                    log.exception("could not write %s", XDP_FILE)
            if stop.wait(tick):
                return
            if counts is not None and time.monotonic() >= due:
                due = time.monotonic() + every
                try:
                    st = hot.refresh(counts(), top)
                    log.info("hot set refreshed: %s", st)
                except Exception:  # noqa: BLE001 - a failed round leaves the maps as they were
                    log.exception("hot set refresh failed")

    t = threading.Thread(target=loop, name="zs-hot", daemon=True)
    t.start()
    return stop, t


@contextlib.contextmanager
def hot_path(
    slice_db: str | os.PathLike[str],
    iface: str | None,
    *,
    top: int,
    counts: str | os.PathLike[str] | None = None,
    slice_index: int | None = None,
    mode: str = "auto",
    port: int = 53,
    netns: str | None = None,
    live_counts: CountsFn | None = None,
    refresh_every: float = 60.0,
    stats_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Hot]:
    """Compile and attach the program with the ``top`` hottest answers of the slice loaded.

    ``counts`` is a `zoneslice hot` file (``slice_index`` defaults to the slice's own
    index); without it the slice's first delegations are used. With ``live_counts``,
    the set is re-ranked every ``refresh_every`` seconds (:meth:`Hot.refresh`). With
    ``stats_dir``, the program's counters are written to ``stats_dir/xdp.json``.
    """
    if counts and slice_index is None:
        conn = connect_readonly(slice_db)
        try:
            slice_index = int(read_meta(conn).get("index", 0))
        finally:
            conn.close()
    c = read_counts(counts, slice_index or 0) if counts else slice_cuts(slice_db, top)
    opts = Options(port=port, max_exact=max(1024, 3 * top), max_deleg=max(1024, 3 * top))
    state = tempfile.mkdtemp(prefix="zoneslice-hot-")
    try:
        with HotPath(options=opts) as hp:
            hot = Hot(slice_db, hp, state)
            hp.opts.cookie_flags = E.cookie_flags(
                hot._respond, hot.origin.canonicalize().to_wire(), 6
            )
            hp.configure()
            hot.stats = hot.install(c, top)
            if iface:
                hp.attach(iface, mode=mode, netns=netns)
            worker = None
            if live_counts is not None or stats_dir is not None:
                stop, worker = background(
                    hot, top, counts=live_counts, every=refresh_every, stats_dir=stats_dir
                )
            try:
                yield hot
            finally:
                if worker is not None:
                    stop.set()
                    worker.join(30)
    finally:
        shutil.rmtree(state, ignore_errors=True)
