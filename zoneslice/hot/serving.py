"""One call for `serve --xdp IFACE --hot N`: learn the hot set, attach, keep it fresh, detach.

::

    with hot_path(slice_db, "eth1", top=10000, counts="hot.json", slice_index=3) as hot:
        serve(slice_db, listen, workers)        # misses reach the engine as usual
        # on an UPDATE commit, before the ack: hot.on_update(changed_names)

The program is compiled and attached in the calling (parent) process, so it
stays attached while forked workers serve and is detached when the block
ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import dns.name

from zoneslice.hot import entries as E
from zoneslice.hot.hotset import HotSet, read_counts
from zoneslice.store.db import connect_readonly, read_meta
from zoneslice.store.keys import key_name
from zoneslice.xdp.loader import HotPath, Options

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


@dataclass
class Hot:
    """What the block gets: the program, the hot set, and the update hook."""

    path: HotPath
    hotset: HotSet
    stats: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_update(self, changed: Iterable[dns.name.Name]) -> int:
        """Replace or delete every entry the committed change may alter; call before the ack."""
        with self._lock:
            return self.hotset.reload(self.hotset.affected(changed))

    def refresh(self, counts: Counter[tuple[bytes, int]], top: int) -> dict[str, int]:
        """Promote what became hot, evict what cooled."""
        with self._lock:
            return self.hotset.install(self.hotset.rank(counts, top))


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
) -> Iterator[Hot]:
    """Compile and attach the program with the ``top`` hottest answers of the slice loaded.

    ``counts`` is a `zoneslice hot` file (``slice_index`` defaults to the slice's own
    index); without it the slice's first delegations are used. With ``live_counts``, the set is re-ranked every ``refresh_every`` seconds.
    """
    from zoneslice.engine.query import Responder

    responder = Responder(slice_db)

    def respond(wire: bytes, client: object = None) -> bytes | None:
        return responder.respond(wire, tcp=False)

    if counts and slice_index is None:
        conn = connect_readonly(slice_db)
        try:
            slice_index = int(read_meta(conn).get("index", 0))
        finally:
            conn.close()
    c = read_counts(counts, slice_index or 0) if counts else slice_cuts(slice_db, top)
    opts = Options(port=port, max_exact=max(1024, 3 * top), max_deleg=max(1024, 3 * top))
    with HotPath(options=opts) as hp:
        hp.opts.cookie_flags = E.cookie_flags(respond, _origin(slice_db).to_wire(), 6)
        hp.configure()
        hs = HotSet(respond, hp)
        hot = Hot(hp, hs)
        hot.stats = hs.install(hs.rank(c, top))
        if iface:
            hp.attach(iface, mode=mode, netns=netns)
        stop = threading.Event()
        worker = None
        if live_counts is not None:

            def loop() -> None:
                while not stop.wait(refresh_every):
                    hot.refresh(live_counts(), top)

            worker = threading.Thread(target=loop, name="zs-hot-refresh", daemon=True)
            worker.start()
        try:
            yield hot
        finally:
            stop.set()
            if worker is not None:
                worker.join(5)
