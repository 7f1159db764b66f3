"""Replay a capture against sliced servers, each query to the slice that owns its name.

Two modes, as in the ISC study and beyond it:

* ``closed-loop``: each slice keeps at most ``outstanding`` queries in flight
  (the ISC method, 20); the next query of a slice leaves when one of its
  answers arrives or times out. It measures capacity.
* ``timed``: every query leaves at its capture time, scaled by ``speed``; the
  send-time error (actual minus scheduled) is measured and reported, since a
  replay that cannot keep the schedule measures the replayer, not the server.

One non-blocking UDP socket per distinct server address, a selector loop and
no threads: at 10 000 queries/s the loop spins in the last millisecond before
a send instead of sleeping, because ``epoll`` timeouts have millisecond
granularity. The query ID is rewritten per socket so answers can be matched;
the rest of the captured query (flags, EDNS, case) is sent unchanged.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from zoneslice.errors import ToolMissing, TraceError
from zoneslice.slicing import SlicePlan
from zoneslice.trace.characterize import percentile
from zoneslice.trace.partition import TraceQuery, TraceSource, partition, routed_queries
from zoneslice.trace.wire import name_text

MODES = ("closed-loop", "timed")
Server = tuple[str, int]
ProgressFn = Callable[["Progress"], None]


@dataclass
class Progress:
    """Passed to the progress callback a few times per second."""

    sent: int
    answered: int
    lost: int
    elapsed_s: float


@dataclass
class SliceReport:
    """Outcome of the queries routed to one slice."""

    slice: int
    server: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    unanswered: int = 0
    truncated: int = 0
    mismatched: int = 0
    qps: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    rcodes: dict[str, int] = field(default_factory=dict)


@dataclass
class ReplayReport:
    """Outcome of one replay; ``to_dict`` is JSON-able (series only on request)."""

    label: str
    engine: str
    mode: str
    speed: float
    outstanding: int
    timeout_s: float
    started: str
    elapsed_s: float
    sent: int
    answered: int
    lost: int
    unanswered: int
    qps: float
    send_rate: float
    latency_ms: dict[str, float | None]
    rcodes: dict[str, int]
    slices: list[SliceReport]
    skipped: dict[str, int]
    capture: dict[str, int]
    timing_error_us: dict[str, float] | None
    interrupted: bool
    answered_per_second: list[int] = field(default_factory=list)
    latencies_us: list[int] = field(default_factory=list, repr=False)
    answers: dict[int, bytes] = field(default_factory=dict, repr=False)
    questions: dict[int, tuple[bytes, int]] = field(default_factory=dict, repr=False)

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        d = asdict(self)
        for k in ("latencies_us", "answers", "questions"):
            d.pop(k)
        if not series:
            d.pop("answered_per_second")
        return d


def latency_summary(us: list[int] | array) -> dict[str, float | None]:
    """p50/p90/p99/p99.9, mean and max in milliseconds (None when nothing was answered)."""
    if not us:
        return {"p50": None, "p90": None, "p99": None, "p99.9": None, "mean": None, "max": None}
    s = sorted(us)
    out: dict[str, float | None] = {
        k: round(percentile(s, q) / 1000, 3)
        for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    }
    out["mean"] = round(sum(s) / len(s) / 1000, 3)
    out["max"] = round(s[-1] / 1000, 3)
    return out


# ---------------------------------------------------------------- the loop


class _Sock:
    """One UDP socket to one server, with the queries waiting for its answers."""

    __slots__ = ("sock", "addr", "pending", "next_id", "text")

    def __init__(self, addr: Server) -> None:
        infos = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
        if not infos:
            raise TraceError(f"cannot resolve server {addr[0]}")
        family, _, _, _, sockaddr = infos[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        self.sock.connect(sockaddr)
        self.addr = sockaddr
        self.text = f"{addr[0]}:{addr[1]}"
        self.pending: dict[int, tuple[int, int, int, bytes]] = {}
        self.next_id = 0


class _SliceState:
    __slots__ = ("report", "lat", "rcodes", "sock", "queue", "inflight")

    def __init__(self, index: int, sock: _Sock) -> None:
        self.report = SliceReport(index, sock.text)
        self.lat = array("q")
        self.rcodes: Counter[int] = Counter()
        self.sock = sock
        self.queue: deque[TraceQuery] = deque()
        self.inflight = 0


class _Replayer:
    def __init__(
        self,
        servers: Mapping[int, Server],
        *,
        mode: str,
        outstanding: int,
        speed: float,
        timeout: float,
        keep_answers: int,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
        max_buffer: int,
        lead: float,
    ) -> None:
        if mode not in MODES:
            raise TraceError(f"unknown replay mode {mode!r} (use one of {', '.join(MODES)})")
        if speed <= 0 or outstanding < 1 or timeout <= 0:
            raise TraceError("speed and timeout must be > 0 and outstanding >= 1")
        self.mode = mode
        self.outstanding = outstanding
        self.speed = speed
        self.timeout_ns = int(timeout * 1e9)
        self.keep_answers = keep_answers
        self.progress = progress
        self.cancel = cancel
        self.max_buffer = max_buffer
        self.lead_ns = int(lead * 1e9)
        self.sel = selectors.DefaultSelector()
        socks: dict[Server, _Sock] = {}
        self.slices: dict[int, _SliceState] = {}
        self.socks: list[_Sock] = []
        try:
            for index, addr in sorted(servers.items()):
                addr = (addr[0], int(addr[1]))
                if addr not in socks:
                    socks[addr] = _Sock(addr)
                    self.socks.append(socks[addr])
                    self.sel.register(socks[addr].sock, selectors.EVENT_READ, socks[addr])
                self.slices[index] = _SliceState(index, socks[addr])
        except (OSError, TraceError) as e:
            self.close()
            raise TraceError(f"cannot open a socket to {addr[0]}:{addr[1]}: {e}") from e
        self.skipped: Counter[str] = Counter()
        self.timing = array("q")
        self.per_sec: Counter[int] = Counter()
        self.answers: dict[int, bytes] = {}
        self.questions: dict[int, tuple[bytes, int]] = {}
        self.sent = self.answered = self.lost = 0
        self.start_ns = 0
        self.interrupted = False

    # -- sending and receiving

    def send(self, st: _SliceState, q: TraceQuery, now: int) -> bool:
        s = st.sock
        pending = s.pending
        if len(pending) >= 65000:
            self.skipped["id_space_full"] += 1
            return False
        ident = s.next_id
        while ident in pending:
            ident = (ident + 1) & 0xFFFF
        s.next_id = (ident + 1) & 0xFFFF
        try:
            s.sock.send(ident.to_bytes(2, "big") + q.wire[2:])
        except BlockingIOError:
            self.skipped["send_buffer_full"] += 1
            return False
        except OSError as e:
            self.skipped[f"send_error_{e.errno}"] += 1
            return False
        pending[ident] = (now, q.seq, st.report.slice, q.wire[12 : q.qend])
        st.report.sent += 1
        st.inflight += 1
        self.sent += 1
        if q.seq < self.keep_answers:
            self.questions[q.seq] = (q.qname, q.qtype)
        return True

    def receive(self, s: _Sock) -> None:
        pending = s.pending
        recv = s.sock.recv
        for _ in range(256):
            try:
                data = recv(65535)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.skipped["icmp_unreachable"] += 1
                continue
            now = time.monotonic_ns()
            if len(data) < 12:
                self.skipped["short_answer"] += 1
                continue
            entry = pending.pop(data[0] << 8 | data[1], None)
            if entry is None:
                self.skipped["late_or_unknown_answer"] += 1
                continue
            sent_ns, seq, index, qsec = entry
            st = self.slices[index]
            if data[5] and data[12 : 12 + len(qsec)] != qsec:
                pending[data[0] << 8 | data[1]] = entry
                st.report.mismatched += 1
                continue
            st.inflight -= 1
            st.report.answered += 1
            self.answered += 1
            st.lat.append((now - sent_ns) // 1000)
            st.rcodes[data[3] & 15] += 1
            if data[2] & 0x02:
                st.report.truncated += 1
            self.per_sec[(now - self.start_ns) // 1_000_000_000] += 1
            if seq < self.keep_answers:
                self.answers[seq] = data
            if self.mode == "closed-loop" and st.queue:
                self.send(st, st.queue.popleft(), time.monotonic_ns())

    def expire(self, now: int) -> int:
        """Drop queries older than the timeout; the earliest deadline still pending."""
        limit = now - self.timeout_ns
        nxt = now + self.timeout_ns
        for s in self.socks:
            pending = s.pending
            while pending:
                ident = next(iter(pending))
                sent_ns, _seq, index, _q = pending[ident]
                if sent_ns > limit:
                    nxt = min(nxt, sent_ns + self.timeout_ns)
                    break
                del pending[ident]
                st = self.slices[index]
                st.inflight -= 1
                st.report.lost += 1
                self.lost += 1
                if self.mode == "closed-loop" and st.queue:
                    self.send(st, st.queue.popleft(), time.monotonic_ns())
        return nxt

    def poll(self, wait_ns: int) -> None:
        for key, _ in self.sel.select(max(0.0, wait_ns / 1e9) if wait_ns > 0 else 0):
            self.receive(key.data)

    def _tick(self, last: list[int]) -> None:
        now = time.monotonic_ns()
        if self.cancel is not None and self.cancel.is_set():
            raise _Cancelled
        if self.progress is not None and now - last[0] > 250_000_000:
            last[0] = now
            self.progress(
                Progress(self.sent, self.answered, self.lost, (now - self.start_ns) / 1e9)
            )

    # -- the two modes

    def run(self, queries: Iterator[TraceQuery]) -> None:
        """Run to the end of the trace, Ctrl-C or cancel; the cyclic GC is paused meanwhile
        (nothing here makes cycles, and a full collection would stall the schedule)."""
        self.start_ns = time.monotonic_ns()
        gc_was = gc.isenabled()
        gc.disable()
        try:
            if self.mode == "timed":
                self._timed(queries)
            else:
                self._closed(queries)
        except (KeyboardInterrupt, _Cancelled):
            self.interrupted = True
        finally:
            if gc_was:
                gc.enable()
        self.end_ns = time.monotonic_ns()

    def _route(self, q: TraceQuery) -> _SliceState | None:
        st = self.slices.get(q.slice)
        if st is None:
            self.skipped["no_server_for_slice"] += 1
        return st

    def _timed(self, queries: Iterator[TraceQuery]) -> None:
        ahead: deque[TraceQuery] = deque()
        exhausted = False

        def fill(n: int) -> None:
            nonlocal exhausted
            while len(ahead) < n and not exhausted:
                q = next(queries, None)
                if q is None:
                    exhausted = True
                else:
                    ahead.append(q)

        fill(1000)
        if not ahead:
            return
        trace0 = ahead[0].ts_ns
        t0 = time.monotonic_ns() + self.lead_ns
        inv = 1.0 / self.speed
        last = [0]
        timing = self.timing
        mono = time.monotonic_ns
        n = 0
        while True:
            now = mono()
            while ahead:
                q = ahead[0]
                due = t0 + int((q.ts_ns - trace0) * inv)
                if due > now:
                    break
                ahead.popleft()
                st = self._route(q)
                if st is not None:
                    sent_at = mono()
                    if self.send(st, q, sent_at):
                        timing.append(sent_at - due)
                now = mono()
                n += 1
                if not n & 255:
                    self._tick(last)
            if len(ahead) < 1000:
                fill(len(ahead) + 8)
            if not ahead and not any(s.pending for s in self.socks):
                return
            nxt = self.expire(now)
            if ahead:
                due = t0 + int((ahead[0].ts_ns - trace0) * inv)
                gap = due - mono()
                wait = gap - 1_500_000 if gap > 2_000_000 else 0
            else:
                wait = min(nxt - now, 50_000_000)
            self.poll(min(wait, 50_000_000))
            self._tick(last)

    def _closed(self, queries: Iterator[TraceQuery]) -> None:
        exhausted = False
        buffered = 0
        last = [0]
        slices = self.slices
        mono = time.monotonic_ns
        while True:
            starving = [
                st for st in slices.values() if not st.queue and st.inflight < self.outstanding
            ]
            while starving and not exhausted and buffered < self.max_buffer:
                q = next(queries, None)
                if q is None:
                    exhausted = True
                    break
                st = self._route(q)
                if st is None:
                    continue
                st.queue.append(q)
                buffered += 1
                if st in starving:
                    starving.remove(st)
            for st in slices.values():
                while st.queue and st.inflight < self.outstanding:
                    q = st.queue.popleft()
                    if not self.send(st, q, mono()):
                        break
            buffered = sum(len(st.queue) for st in slices.values())
            if exhausted and not buffered and not any(s.pending for s in self.socks):
                return
            now = mono()
            nxt = self.expire(now)
            self.poll(min(nxt - now, 20_000_000))
            self._tick(last)

    # -- the report

    def report(
        self, label: str, skipped: Counter[str], capture: Counter[str], keep_series: bool
    ) -> ReplayReport:
        elapsed = max(1e-9, (self.end_ns - self.start_ns) / 1e9)
        rows = []
        all_lat: list[int] = []
        rcodes: Counter[int] = Counter()
        unanswered = 0
        for st in self.slices.values():
            r = st.report
            r.unanswered = r.sent - r.answered - r.lost
            unanswered += r.unanswered
            r.qps = round(r.answered / elapsed, 1)
            r.latency_ms = latency_summary(st.lat)
            r.rcodes = {dns.rcode.to_text(c): n for c, n in st.rcodes.most_common()}
            rcodes.update(st.rcodes)
            all_lat.extend(st.lat)
            rows.append(r)
        timing = None
        if self.mode == "timed":
            t = sorted(self.timing)
            timing = {
                "p50": round(percentile(t, 50) / 1000, 1),
                "p90": round(percentile(t, 90) / 1000, 1),
                "p99": round(percentile(t, 99) / 1000, 1),
                "max": round(t[-1] / 1000, 1) if t else 0.0,
                "over_1ms_pct": round(100 * sum(1 for x in t if x > 1_000_000) / len(t), 3)
                if t
                else 0.0,
            }
        secs = max(self.per_sec) + 1 if self.per_sec else 0
        skipped = skipped + self.skipped
        return ReplayReport(
            label=label,
            engine="python",
            mode=self.mode,
            speed=self.speed,
            outstanding=self.outstanding,
            timeout_s=self.timeout_ns / 1e9,
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            elapsed_s=round(elapsed, 3),
            sent=self.sent,
            answered=self.answered,
            lost=self.lost,
            unanswered=unanswered,
            qps=round(self.answered / elapsed, 1),
            send_rate=round(self.sent / elapsed, 1),
            latency_ms=latency_summary(all_lat),
            rcodes={dns.rcode.to_text(c): n for c, n in rcodes.most_common()},
            slices=rows,
            skipped=dict(skipped),
            capture=dict(capture),
            timing_error_us=timing,
            interrupted=self.interrupted,
            answered_per_second=[self.per_sec.get(i, 0) for i in range(secs)],
            latencies_us=all_lat if keep_series else [],
            answers=self.answers,
            questions=self.questions,
        )

    def close(self) -> None:
        self.sel.close()
        for s in self.socks:
            s.sock.close()


class _Cancelled(Exception):
    pass


def replay(
    trace: TraceSource,
    plan: SlicePlan,
    servers: Mapping[int, Server],
    *,
    mode: str = "closed-loop",
    outstanding: int = 20,
    speed: float = 1.0,
    timeout: float = 2.0,
    limit: int | None = None,
    keep_answers: int = 0,
    keep_latencies: bool = True,
    max_buffer: int = 200_000,
    lead: float = 0.05,
    label: str = "slices",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ReplayReport:
    """Replay the trace's queries, each to the server of the slice owning its name.

    ``servers`` maps slice index -> (address, port); several slices may share a
    server. ``keep_answers`` keeps the raw answers of the first N queries (for
    :func:`compare`). Ctrl-C or ``cancel.set()`` stops the run and the partial
    report is returned with ``interrupted`` set.
    """
    skipped: Counter[str] = Counter()
    capture: Counter[str] = Counter()
    queries: Iterator[TraceQuery] = routed_queries(trace, plan, skipped, capture)
    if limit is not None:
        queries = _take(queries, limit)
    r = _Replayer(
        servers,
        mode=mode,
        outstanding=outstanding,
        speed=speed,
        timeout=timeout,
        keep_answers=keep_answers,
        progress=progress,
        cancel=cancel,
        max_buffer=max_buffer,
        lead=lead,
    )
    try:
        r.run(queries)
    finally:
        r.close()
    return r.report(label, skipped, capture, keep_latencies)


def _take(it: Iterator[TraceQuery], n: int) -> Iterator[TraceQuery]:
    for i, q in enumerate(it):
        if i >= n:
            return
        yield q


# ---------------------------------------------------------------- comparison


@dataclass
class AnswerDiff:
    """One query answered differently by the two runs."""

    seq: int
    qname: str
    qtype: str
    a: str
    b: str
    differs_in: list[str]


@dataclass
class Comparison:
    """Two replays of the same trace side by side."""

    a: ReplayReport
    b: ReplayReport
    compared: int
    identical: int
    different: int
    only_a: int
    only_b: int
    examples: list[AnswerDiff]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "compared": self.compared,
            "identical": self.identical,
            "different": self.different,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "examples": [asdict(e) for e in self.examples],
        }


def _normal(wire: bytes) -> dict[str, Any]:
    """An answer reduced to what slice equivalence promises: rcode, flags, RRsets per section."""
    try:
        m = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException as e:
        return {"unparsable": type(e).__name__}

    def section(rrsets: list[Any]) -> list[tuple[Any, ...]]:
        out = []
        for rrset in rrsets:
            rd = sorted(r.to_digestable() for r in rrset)
            out.append(
                (
                    rrset.name.canonicalize().to_text(),
                    rrset.rdclass,
                    rrset.rdtype,
                    rrset.covers,
                    rrset.ttl,
                    rd,
                )
            )
        return sorted(out)

    return {
        "rcode": m.rcode(),
        "flags": m.flags & 0xFFF0 & ~0x7800,
        "opt": (m.edns, m.ednsflags, m.payload) if m.edns >= 0 else None,
        "answer": section(m.answer),
        "authority": section(m.authority),
        "additional": section(m.additional),
    }


def _describe(wire: bytes, norm: dict[str, Any], sections: list[str], width: int = 160) -> str:
    """Header summary plus the text of the sections that differ, shortened to ``width``."""
    if "unparsable" in norm:
        return f"unparsable ({norm['unparsable']})"
    text = (
        f"{dns.rcode.to_text(norm['rcode'])} flags={norm['flags']:#06x} "
        f"an={len(norm['answer'])} ns={len(norm['authority'])} ar={len(norm['additional'])}"
    )
    m = dns.message.from_wire(wire, ignore_trailing=True)
    for name in sections:
        rrsets = getattr(m, name, None)
        if isinstance(rrsets, list):
            rrs = "; ".join(sorted(line for r in rrsets for line in r.to_text().splitlines()))
            text += f" | {name}: {rrs or '(empty)'}"
    return text if len(text) <= width else text[: width - 1] + "…"


def compare(a: ReplayReport, b: ReplayReport, *, max_examples: int = 20) -> Comparison:
    """Answer-by-answer comparison of two runs made with ``keep_answers``."""
    both = sorted(set(a.answers) & set(b.answers))
    diffs: list[AnswerDiff] = []
    different = 0
    for seq in both:
        wa, wb = a.answers[seq], b.answers[seq]
        if wa[2:] == wb[2:]:
            continue
        na, nb = _normal(wa), _normal(wb)
        if na == nb:
            continue
        different += 1
        if len(diffs) < max_examples:
            qname, qtype = a.questions.get(seq) or b.questions.get(seq) or (b"\x00", 0)
            differs = sorted(k for k in na.keys() | nb.keys() if na.get(k) != nb.get(k))
            diffs.append(
                AnswerDiff(
                    seq,
                    name_text(qname),
                    dns.rdatatype.to_text(qtype),
                    _describe(wa, na, differs),
                    _describe(wb, nb, differs),
                    differs,
                )
            )
    return Comparison(
        a=a,
        b=b,
        compared=len(both),
        identical=len(both) - different,
        different=different,
        only_a=len(set(a.answers) - set(b.answers)),
        only_b=len(set(b.answers) - set(a.answers)),
        examples=diffs,
    )


def replay_compare(
    trace: TraceSource,
    plan: SlicePlan,
    servers: Mapping[int, Server],
    reference: Server,
    *,
    keep_answers: int = 100_000,
    progress: ProgressFn | None = None,
    **kw: Any,
) -> Comparison:
    """The same replay against the slices, then against one reference server for every slice."""
    if isinstance(trace, Iterator):
        raise TraceError("compare needs a trace it can read twice (a path or a list)")
    a = replay(
        trace, plan, servers, keep_answers=keep_answers, label="slices", progress=progress, **kw
    )
    if a.interrupted:
        return compare(a, a)
    ref = {i: reference for i in range(plan.parts)}
    b = replay(
        trace, plan, ref, keep_answers=keep_answers, label="reference", progress=progress, **kw
    )
    return compare(a, b)


# ---------------------------------------------------------------- dnsperf


_DNSPERF_FIELDS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "answered": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "runtime": re.compile(r"Run time \(s\):\s+([\d.]+)"),
    "avg": re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)"),
    "rcodes": re.compile(r"Response codes:\s+(.*)"),
}


def parse_dnsperf(text: str) -> dict[str, Any]:
    """The statistics block printed by dnsperf 2.x."""
    out: dict[str, Any] = {}
    for k, rx in _DNSPERF_FIELDS.items():
        m = rx.search(text)
        if m is None:
            continue
        if k == "avg":
            out["latency_ms"] = {
                "mean": float(m.group(1)) * 1000,
                "min": float(m.group(2)) * 1000,
                "max": float(m.group(3)) * 1000,
            }
        elif k == "rcodes":
            out["rcodes"] = {c: int(n) for c, n in re.findall(r"([A-Z0-9]+) (\d+) \(", m.group(1))}
        elif k in ("qps", "runtime"):
            out[k] = float(m.group(1))
        else:
            out[k] = int(m.group(1))
    return out


def replay_dnsperf(
    trace: TraceSource,
    plan: SlicePlan,
    servers: Mapping[int, Server],
    workdir: str | os.PathLike[str],
    *,
    outstanding: int = 20,
    timeout: float = 2.0,
    max_qps: int | None = None,
    time_limit: float | None = None,
    dnsperf: str = "dnsperf",
    label: str = "slices",
    cancel: threading.Event | None = None,
) -> ReplayReport:
    """Drive Debian's dnsperf, one process per slice, on per-slice query files."""
    exe = shutil.which(dnsperf)
    if exe is None:
        raise ToolMissing(f"{dnsperf} is not installed")
    parts = partition(trace, plan, workdir)
    procs: dict[int, subprocess.Popen[str]] = {}
    started = time.monotonic()
    interrupted = False
    try:
        for index, (addr, port) in sorted(servers.items()):
            if not parts.counts.get(index):
                continue
            cmd = [
                exe,
                "-s",
                addr,
                "-p",
                str(port),
                "-d",
                parts.files[index],
                "-q",
                str(outstanding),
                "-t",
                str(timeout),
                "-n",
                "1",
            ]
            if max_qps:
                cmd += ["-Q", str(max_qps)]
            if time_limit:
                cmd += ["-l", str(time_limit)]
            procs[index] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        while any(p.poll() is None for p in procs.values()):
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            time.sleep(0.05)
    except KeyboardInterrupt:
        interrupted = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(2)
    elapsed = time.monotonic() - started
    rows = []
    rcodes: Counter[str] = Counter()
    for index, p in sorted(procs.items()):
        out, _ = p.communicate(timeout=30)
        stats = parse_dnsperf(out)
        if p.returncode != 0 and not stats:
            raise TraceError(f"dnsperf for slice {index} failed: {out.strip()[-400:]}")
        addr, port = servers[index]
        rows.append(
            SliceReport(
                slice=index,
                server=f"{addr}:{port}",
                sent=stats.get("sent", 0),
                answered=stats.get("answered", 0),
                lost=stats.get("lost", 0),
                qps=stats.get("qps", 0.0),
                latency_ms=stats.get("latency_ms", {}),
                rcodes=stats.get("rcodes", {}),
            )
        )
        rcodes.update(stats.get("rcodes", {}))
    sent = sum(r.sent for r in rows)
    answered = sum(r.answered for r in rows)
    skipped = dict(parts.skipped)
    skipped.update(
        {f"no_server_for_slice_{i}": n for i, n in parts.counts.items() if n and i not in servers}
    )
    return ReplayReport(
        label=label,
        engine="dnsperf",
        mode="closed-loop",
        speed=1.0,
        outstanding=outstanding,
        timeout_s=timeout,
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        elapsed_s=round(elapsed, 3),
        sent=sent,
        answered=answered,
        lost=sum(r.lost for r in rows),
        unanswered=0,
        qps=round(sum(r.qps for r in rows), 1),
        send_rate=round(sent / elapsed, 1) if elapsed else 0.0,
        latency_ms={
            "mean": _weighted_mean(rows),
            "max": max((r.latency_ms.get("max") or 0 for r in rows), default=None),
        },
        rcodes=dict(rcodes.most_common()),
        slices=rows,
        skipped=skipped,
        capture=parts.capture,
        timing_error_us=None,
        interrupted=interrupted,
    )


def _weighted_mean(rows: list[SliceReport]) -> float | None:
    n = sum(r.answered for r in rows if r.latency_ms.get("mean") is not None)
    if not n:
        return None
    return round(sum((r.latency_ms["mean"] or 0) * r.answered for r in rows) / n, 3)


def write_plots(report: ReplayReport | Comparison, prefix: str | os.PathLike[str]) -> list[str]:
    """Latency CDF and answered-rate PNGs (``<prefix>-latency.png``, ``<prefix>-rate.png``)."""
    from zoneslice.trace.plot import latency_cdf, rate_plot

    runs = [report.a, report.b] if isinstance(report, Comparison) else [report]
    prefix = Path(prefix)
    out = [
        latency_cdf(
            {r.label: [u / 1000 for u in r.latencies_us] for r in runs}, f"{prefix}-latency.png"
        )
    ]
    for r in runs:
        out.append(
            rate_plot(
                r.answered_per_second,
                f"{prefix}-{r.label}-rate.png",
                title=f"Answered rate ({r.label})",
                ylabel="answers/s",
            )
        )
    return out
