"""Live query counts: what the workers are asked, for re-ranking the hot set while serving.

Each worker wraps its Responder in a :class:`CountingResponder`. One query in
``sample`` (a power of two) has its (lower-cased qname, qtype) counted; about
once a second the worker writes its most frequent keys to
``hotcount-<pid>.pickle`` in the stats directory (write, then rename), and
every ``half_life`` seconds (the refresh period) it halves its counts, so a key
that stops being asked fades and memory stays bounded. The serve parent sums
the fresh files with :func:`read_live_counts`. Queries answered from XDP never reach a worker: the
program's per-key hit counters (``HotSet.hit_counts``) stand in for those.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "hotcount-"
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def question_key(wire: bytes) -> tuple[bytes, int] | None:
    """(lower-cased wire qname, qtype) of a one-question standard query, else None."""
    if len(wire) < 17 or wire[2] & 0xF8 or wire[4:6] != b"\0\1":
        return None
    p = 12
    n = len(wire)
    while p < n:
        ln = wire[p]
        if ln == 0:
            if p + 5 > n:
                return None
            return wire[12 : p + 1].translate(_LOWER), (wire[p + 1] << 8) | wire[p + 2]
        if ln > 63:
            return None
        p += ln + 1
    return None


class CountingResponder:
    """A Responder that also samples what it is asked (everything else is the inner one's)."""

    def __init__(
        self,
        inner: Any,
        out_dir: str | os.PathLike[str],
        *,
        sample: int = 16,
        every: float = 1.0,
        half_life: float = 30.0,
        keep: int = 20000,
        cap: int = 100_000,
    ) -> None:
        if sample < 1 or sample & (sample - 1):
            raise ValueError("sample must be a power of two")
        self.inner = inner
        self.out = Path(out_dir) / f"{PREFIX}{os.getpid()}.pickle"
        self.sample = sample
        self.every = min(every, half_life)
        self.half_life = half_life
        self.keep = keep
        self.cap = cap
        self.counts: Counter[tuple[bytes, int]] = Counter()
        self._next = time.monotonic() + self.every
        self._halve = time.monotonic() + half_life
        self.respond = self._make_respond(inner.respond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _make_respond(self, inner: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
        """The per-query path as a closure: one call layer, no attribute lookups."""
        mask = self.sample - 1
        n = 0
        counts = self.counts
        monotonic = time.monotonic

        def respond(wire: bytes, *, tcp: bool, client: Any = None) -> bytes | None:
            nonlocal n, counts
            n += 1
            if n & mask:
                return inner(wire, tcp=tcp, client=client)
            k = question_key(wire)
            if k is not None:
                counts[k] += 1
                if len(counts) > self.cap or monotonic() >= self._next:
                    self.publish()
                    counts = self.counts
            return inner(wire, tcp=tcp, client=client)

        return respond

    def publish(self) -> None:
        """Write the top counts (the reader scales them by the sampling); halve them when due."""
        now = time.monotonic()
        self._next = now + self.every
        top = self.counts.most_common(self.keep)
        data = {"pid": os.getpid(), "time": time.time(), "sample": self.sample, "counts": top}
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, self.out)
        if now >= self._halve or len(self.counts) > self.cap:
            self._halve = now + self.half_life
            self.counts = Counter({k: v >> 1 for k, v in top if v > 1})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.out.unlink()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def counting_factory(
    factory: Callable[..., Any] | None, out_dir: str | os.PathLike[str], **kw: Any
) -> Callable[..., CountingResponder]:
    """Wrap a server ``responder_factory`` (None: the engine's Responder) to count queries."""

    def make(slice_db: Any, **opts: Any) -> CountingResponder:
        if factory is None:
            from zoneslice.engine.query import Responder

            inner = Responder(slice_db, **opts)
        else:
            inner = factory(slice_db, **opts)
        return CountingResponder(inner, out_dir, **kw)

    return make


def read_live_counts(
    directory: str | os.PathLike[str], max_age: float = 10.0
) -> Counter[tuple[bytes, int]]:
    """The workers' published counts summed (files older than ``max_age`` s are ignored)."""
    total: Counter[tuple[bytes, int]] = Counter()
    now = time.time()
    for f in Path(directory).glob(f"{PREFIX}*.pickle"):
        try:
            data = pickle.loads(f.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
        if now - data.get("time", 0) > max_age:
            continue
        s = int(data.get("sample", 1))
        for k, v in data["counts"]:
            total[k] += v * s
    return total
