"""The ISC partition: each query goes to the slice that owns its name.

``Partitioner`` works on lower-cased wire names (as ``trace.wire`` returns
them) so that routing a query costs a label walk and a bisect, not a
dnspython ``Name``. ``partition`` writes one dnsperf/queryperf query file per
slice ("name TYPE" lines) for runs driven by those tools.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import dns.rdatatype

from zoneslice.errors import ManifestError
from zoneslice.slicing import SlicePlan
from zoneslice.trace.pcap import CaptureReader, DnsRecord
from zoneslice.trace.wire import name_text, question

TraceSource = str | os.PathLike[str] | IO[bytes] | Iterable[DnsRecord]


def load_plan(path: str | os.PathLike[str]) -> SlicePlan:
    """The slice plan of a manifest (a manifest.json or the directory holding it)."""
    try:
        from zoneslice.manifest import load_manifest
    except ImportError:  # pragma: no cover - until the manifest module lands
        p = Path(path)
        if p.is_dir():
            p = p / "manifest.json"
        try:
            data = json.loads(p.read_text())
            return SlicePlan.from_bounds_text(data["origin"], data["lookup"]["bounds"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ManifestError(f"{p}: {e}") from None
    return load_manifest(path).plan


class Partitioner:
    """Maps a lower-cased wire qname to the index of the slice that owns it (None: outside)."""

    def __init__(self, plan: SlicePlan) -> None:
        self.plan = plan
        self._origin = plan.origin.canonicalize().to_wire()
        self._depth = len(plan.origin.labels) - 1
        self._bisect = plan.slice_for_label

    def slice_of(self, qname: bytes) -> int | None:
        labels = []
        p = 0
        while qname[p]:
            ln = qname[p]
            labels.append(p)
            p += ln + 1
        depth = self._depth
        n = len(labels)
        if n < depth:
            return None
        if depth:
            if qname[labels[n - depth] :] != self._origin:
                return None
        if n == depth:
            return 0
        s = labels[n - depth - 1]
        return self._bisect(qname[s + 1 : s + 1 + qname[s]])


class TraceQuery(NamedTuple):
    """A query of the trace, routed to its slice."""

    seq: int
    ts_ns: int
    wire: bytes
    qname: bytes
    qtype: int
    slice: int
    transport: str
    qend: int


def records(trace: TraceSource, capture: Counter[str] | None = None) -> Iterator[DnsRecord]:
    """The DNS messages of a capture path/file (reader counters go to ``capture``), or the records themselves."""
    if isinstance(trace, str | os.PathLike) or hasattr(trace, "read"):
        reader = CaptureReader(trace)  # type: ignore[arg-type]
        try:
            yield from reader
        finally:
            if capture is not None:
                capture.update(reader.stats)
    else:
        yield from trace  # type: ignore[misc]


def routed_queries(
    trace: TraceSource, plan: SlicePlan, skipped: Counter[str], capture: Counter[str] | None = None
) -> Iterator[TraceQuery]:
    """The trace's standard queries with the slice that owns each; the rest counted in ``skipped``."""
    part = Partitioner(plan)
    slice_of = part.slice_of
    stats = skipped
    seq = 0
    for r in records(trace, capture):
        wire = r.wire
        if wire[2] & 0x80:
            stats["responses"] += 1
            continue
        q = question(wire)
        if q is None:
            stats["malformed"] += 1
            continue
        if q.flags & 0x7800:
            stats["not_query_opcode"] += 1
            continue
        s = slice_of(q.qname)
        if s is None:
            stats["outside_zone"] += 1
            continue
        yield TraceQuery(seq, r.ts_ns, wire, q.qname, q.qtype, s, r.transport, q.end)
        seq += 1


@dataclass
class PartitionResult:
    """What ``partition`` wrote."""

    files: dict[int, str]
    counts: dict[int, int]
    skipped: dict[str, int] = field(default_factory=dict)
    capture: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def partition(
    trace: TraceSource,
    plan: SlicePlan,
    outdir: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> PartitionResult:
    """Write ``slice-<i>.queries`` (dnsperf "name TYPE" lines) per slice into ``outdir``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    stats: Counter[str] = Counter()
    capture: Counter[str] = Counter()
    files: dict[int, IO[str]] = {}
    paths: dict[int, str] = {}
    counts: Counter[int] = Counter()
    text_cache: dict[bytes, str] = {}
    try:
        for i in range(plan.parts):
            paths[i] = str(out / f"slice-{i}.queries")
            files[i] = open(paths[i], "w")  # noqa: SIM115
        for n, q in enumerate(routed_queries(trace, plan, stats, capture), 1):
            text = text_cache.get(q.qname)
            if text is None:
                if len(text_cache) > 200_000:
                    text_cache.clear()
                text = text_cache[q.qname] = name_text(q.qname)
            files[q.slice].write(f"{text} {dns.rdatatype.to_text(q.qtype)}\n")
            counts[q.slice] += 1
            if progress is not None and not n % 10000:
                progress(n)
    finally:
        for f in files.values():
            f.close()
    return PartitionResult(
        paths, {i: counts[i] for i in range(plan.parts)}, dict(stats), dict(capture)
    )
