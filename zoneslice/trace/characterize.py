"""The ISC trace characterisation (figure 5-1 of "BIND 9 performance while serving
large zones under update"): what a capture asks for, how fast and how bursty.

One streaming pass; memory is bounded by the per-second rate series and a
window of queries still waiting for their response (matched on client
address, client port, ID and question name).
"""

from __future__ import annotations

import datetime
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from zoneslice.slicing import SlicePlan
from zoneslice.trace.partition import Partitioner, TraceSource, records
from zoneslice.trace.wire import FLAG_RD, edns_of_query, question

MATCH_WINDOW_S = 10.0
MAX_PENDING = 1_000_000


@dataclass
class TypeRow:
    """One query type and class: how often asked, how often it failed."""

    qtype: str
    qclass: str
    count: int
    share: float
    answered: int
    failed: int
    failure_rate: float | None


@dataclass
class Characterization:
    """The report; ``to_dict`` is JSON-able. Rates are per second of capture time."""

    source: str
    start: str | None
    end: str | None
    duration_s: float
    messages: int
    queries: int
    responses: int
    answered: int
    failed: int
    failed_pct: float | None
    unmatched_responses: int
    avg_rate: float
    burst_p95: int
    burst_max: int
    rd: int
    rd_pct: float
    tcp: int
    tcp_pct: float
    edns: int
    edns_pct: float
    do: int
    do_pct: float
    malformed: int
    qtypes: list[TypeRow]
    qclasses: dict[str, int]
    rcodes: dict[str, int]
    opcodes: dict[str, int]
    slices: dict[int, int] | None
    outside_zone: int | None
    capture: dict[str, int]
    rate_start: float | None = None
    rate: list[int] = field(default_factory=list)

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not series:
            d.pop("rate")
        return d


def _pct(a: int, b: int) -> float:
    return round(100.0 * a / b, 3) if b else 0.0


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted list; 0 when empty."""
    if not sorted_values:
        return 0
    k = max(0, math.ceil(round(q * len(sorted_values) / 100.0, 9)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def _iso(ts_ns: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ns / 1e9, datetime.UTC).isoformat(
        timespec="microseconds"
    )


def characterize(
    trace: TraceSource,
    *,
    plan: SlicePlan | None = None,
    match_window: float = MATCH_WINDOW_S,
    progress: Callable[[int], None] | None = None,
) -> Characterization:
    """Characterise a capture (path, file object or iterable of ``DnsRecord``)."""
    pstats: Counter[str] = Counter()
    per_sec: Counter[int] = Counter()
    types: Counter[tuple[int, int]] = Counter()
    type_answered: Counter[tuple[int, int]] = Counter()
    type_failed: Counter[tuple[int, int]] = Counter()
    classes: Counter[int] = Counter()
    rcodes: Counter[int] = Counter()
    opcodes: Counter[int] = Counter()
    slices: Counter[int] = Counter()
    slice_of = Partitioner(plan).slice_of if plan is not None else None
    pending: dict[tuple[bytes, int, int, bytes], tuple[int, int, int]] = {}
    window = int(match_window * 1e9)
    first = last = None
    messages = queries = responses = answered = failed = unmatched = 0
    rd = tcp = edns = do = malformed = outside = 0
    for r in records(trace, pstats):
        messages += 1
        ts = r.ts_ns
        if first is None or ts < first:
            first = ts
        if last is None or ts > last:
            last = ts
        if progress is not None and not messages & 0xFFFF:
            progress(messages)
        q = question(r.wire)
        if q is None:
            malformed += 1
            if not r.wire[2] & 0x80:
                queries += 1
                per_sec[ts // 1_000_000_000] += 1
            continue
        flags = q.flags
        if flags & 0x8000:
            responses += 1
            rcodes[flags & 15] += 1
            m = pending.pop((r.dst, r.dport, q.id, q.qname), None)
            if m is None or ts - m[2] > window:
                unmatched += 1
                continue
            answered += 1
            key = (m[0], m[1])
            type_answered[key] += 1
            if flags & 15:
                failed += 1
                type_failed[key] += 1
            continue
        queries += 1
        per_sec[ts // 1_000_000_000] += 1
        opcodes[(flags >> 11) & 15] += 1
        key = (q.qtype, q.qclass)
        types[key] += 1
        classes[q.qclass] += 1
        if flags & FLAG_RD:
            rd += 1
        if r.transport == "tcp":
            tcp += 1
        opt = edns_of_query(r.wire, q)
        if opt is not None:
            edns += 1
            if opt[1] & 0x8000:
                do += 1
        if slice_of is not None:
            s = slice_of(q.qname)
            if s is None:
                outside += 1
            else:
                slices[s] += 1
        pending[(r.src, r.sport, q.id, q.qname)] = (q.qtype, q.qclass, ts)
        if len(pending) > MAX_PENDING or not queries & 0x3FF:
            _expire(pending, ts - window)
    if first is None or last is None:
        duration = 0.0
        series: list[int] = []
        rate_start = None
    else:
        duration = (last - first) / 1e9
        s0 = first // 1_000_000_000
        s1 = last // 1_000_000_000
        series = [per_sec.get(s, 0) for s in range(s0, s1 + 1)] if per_sec else []
        rate_start = float(s0)
    ordered = sorted(series)
    rows = []
    for (t, c), n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0])):
        a = type_answered[(t, c)]
        f = type_failed[(t, c)]
        rows.append(
            TypeRow(
                dns.rdatatype.to_text(t),
                dns.rdataclass.to_text(c),
                n,
                _pct(n, queries),
                a,
                f,
                _pct(f, a) if a else None,
            )
        )
    return Characterization(
        source=str(trace) if isinstance(trace, str | os.PathLike) else type(trace).__name__,
        start=_iso(first) if first is not None else None,
        end=_iso(last) if last is not None else None,
        duration_s=round(duration, 6),
        messages=messages,
        queries=queries,
        responses=responses,
        answered=answered,
        failed=failed,
        failed_pct=_pct(failed, answered) if answered else None,
        unmatched_responses=unmatched,
        avg_rate=round(queries / duration, 3) if duration > 0 else float(queries),
        burst_p95=int(percentile(ordered, 95)),
        burst_max=max(series) if series else 0,
        rd=rd,
        rd_pct=_pct(rd, queries),
        tcp=tcp,
        tcp_pct=_pct(tcp, queries),
        edns=edns,
        edns_pct=_pct(edns, queries),
        do=do,
        do_pct=_pct(do, queries),
        malformed=malformed,
        qtypes=rows,
        qclasses={dns.rdataclass.to_text(c): n for c, n in classes.most_common()},
        rcodes={dns.rcode.to_text(c): n for c, n in rcodes.most_common()},
        opcodes={dns.opcode.to_text(c): n for c, n in opcodes.most_common()},
        slices=dict(sorted(slices.items())) if plan is not None else None,
        outside_zone=outside if plan is not None else None,
        capture=dict(pstats),
        rate_start=rate_start,
        rate=series,
    )


def _expire(pending: dict[Any, tuple[int, int, int]], limit: int) -> None:
    while pending:
        k = next(iter(pending))
        if pending[k][2] >= limit and len(pending) <= MAX_PENDING:
            break
        del pending[k]
