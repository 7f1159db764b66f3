"""Deterministic generator of F-root-like query captures for a given zone.

Real root/TLD captures cannot be committed, so replay and characterisation are
exercised on pcaps shaped like the trace of the ISC study instead: a diurnal
arrival rate with short bursts, the F-root query-type mix, about 38 % of
queries for names that do not exist, Zipf-like name and client popularity,
RD set on most queries, some TCP and some EDNS (with DO). Every random choice
comes from one seeded generator, so a seed names a trace.

Command line::

    python -m datasets.gen_trace --zone com.zone --origin com. --queries 1000000 \\
        --duration 3600 --seed 7 out.pcap
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import lzma
import math
import os
import sqlite3
import string
import struct
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import dns.name
import numpy as np

from zoneslice.trace.pcap import PcapWriter, ip_frame

# F-root query-type mix of the ISC characterisation (shares of all queries).
TYPE_MIX: dict[str, float] = {
    "A": 0.55,
    "AAAA": 0.13,
    "PTR": 0.08,
    "MX": 0.08,
    "NS": 0.04,
    "SOA": 0.03,
    "TXT": 0.03,
    "A6": 0.02,
    "ANY": 0.02,
    "SRV": 0.01,
    "DS": 0.005,
    "DNSKEY": 0.005,
}
TYPE_CODES = {
    "A": 1,
    "NS": 2,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "A6": 38,
    "DS": 43,
    "DNSKEY": 48,
    "ANY": 255,
}
SERVER_V4 = bytes([192, 0, 2, 53])
SERVER_V6 = bytes.fromhex("20010db8000000000000000000000053")
CHAOS_NAMES = (b"\x07version\x04bind\x00", b"\x08hostname\x04bind\x00", b"\x02id\x06server\x00")
_LABEL_CHARS = string.ascii_lowercase + string.digits


@dataclass
class TraceParams:
    """Everything that shapes a generated trace (with the seed, it names the trace)."""

    queries: int = 100_000
    duration: float = 600.0
    start: float = 1_700_000_000.0
    seed: int = 1
    zipf: float = 1.0
    nxdomain: float = 0.38
    rd: float = 0.8
    tcp: float = 0.02
    edns: float = 0.6
    do: float = 0.6
    v6: float = 0.15
    chaos: float = 0.001
    child: float = 0.5
    clients: int = 20_000
    client_zipf: float = 1.1
    diurnal: float = 0.35
    bursts_per_hour: float = 6.0
    burst_factor: float = 4.0
    responses: bool = False
    nanosecond: bool = False
    type_mix: dict[str, float] = field(default_factory=lambda: dict(TYPE_MIX))


@dataclass
class TraceSummary:
    """What was written (for checks and for the trace's README)."""

    path: str
    queries: int
    responses: int
    nonexistent: int
    chaos: int
    rd: int
    tcp: int
    edns: int
    do: int
    v6: int
    qtypes: dict[str, int]
    first_ts: float
    last_ts: float
    peak_second: int
    names: int
    params: dict[str, object]


# ---------------------------------------------------------------- names


def _wire(name: dns.name.Name) -> bytes:
    return name.canonicalize().to_wire()


def names_from_list(lines: Iterable[str], origin: dns.name.Name) -> list[bytes]:
    """Wire names of a name list (relative names are taken below ``origin``)."""
    out = []
    for line in lines:
        line = line.split(";", 1)[0].strip()
        if line:
            out.append(_wire(dns.name.from_text(line.split()[0], origin)))
    return out


def _open_text(path: Path) -> IO[str]:
    head = path.open("rb").read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", errors="replace")
    if head.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rt", errors="replace")
    return path.open("rt", errors="replace")


def names_from_zone(path: Path, origin: dns.name.Name) -> list[bytes]:
    """Owner names of a master file (apex excluded); a light reader: owners and $ORIGIN only."""
    seen: dict[bytes, None] = {}
    cur = origin
    depth = 0
    with _open_text(path) as f:
        for line in f:
            if not line or line[0] in " \t\n;(" or depth:
                depth += line.count("(") - line.count(")") if '"' not in line else 0
                continue
            tok = line.split(None, 1)[0]
            if tok == "$ORIGIN":
                cur = dns.name.from_text(line.split()[1], origin)
                continue
            if tok.startswith("$"):
                continue
            depth += line.split(";", 1)[0].count("(") - line.split(";", 1)[0].count(")")
            name = cur if tok == "@" else dns.name.from_text(tok, cur)
            if name != origin and name.is_subdomain(origin):
                seen[_wire(name)] = None
    return list(seen)


def names_from_manifest(path: Path) -> tuple[dns.name.Name, list[bytes]]:
    """Origin and owned names of a split zone, read from its slice databases."""
    from zoneslice.store.keys import key_labels
    from zoneslice.store.models import OWNED

    mpath = path / "manifest.json" if path.is_dir() else path
    data = json.loads(mpath.read_text())
    origin = dns.name.from_text(data["origin"])
    out: dict[bytes, None] = {}
    for s in data["slices"]:
        db = sqlite3.connect(f"file:{mpath.parent / s['file']}?mode=ro", uri=True)
        try:
            for (rkey,) in db.execute(
                "SELECT DISTINCT rkey FROM rr WHERE origin = ? AND rkey != x''", (OWNED,)
            ):
                labels = key_labels(rkey)[::-1]
                out[_wire(dns.name.Name([*labels, *origin.labels]))] = None
        finally:
            db.close()
    return origin, list(out)


# ---------------------------------------------------------------- arrivals


def arrival_times(p: TraceParams, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (ns since the epoch): diurnal rate times random bursts."""
    secs = max(1, math.ceil(p.duration))
    t = np.arange(secs, dtype=np.float64)
    day = ((p.start + t) % 86400) / 86400
    lam = 1.0 + p.diurnal * np.sin(2 * np.pi * (day - 0.375))
    n_bursts = rng.poisson(p.bursts_per_hour * secs / 3600) if p.bursts_per_hour > 0 else 0
    for _ in range(n_bursts):
        at = int(rng.integers(0, secs))
        length = int(rng.integers(1, 6))
        lam[at : at + length] *= rng.uniform(1.5, max(1.6, p.burst_factor))
    width = np.full(secs, 1e9)
    width[-1] = (p.duration - (secs - 1)) * 1e9
    lam *= width / 1e9
    counts = rng.multinomial(p.queries, lam / lam.sum())
    base = np.repeat(np.arange(secs, dtype=np.int64), counts) * 1_000_000_000
    offs = (rng.random(p.queries) * np.repeat(width, counts)).astype(np.int64)
    ts = np.sort(base + offs)
    return ts + int(p.start * 1e9)


def _zipf_choice(rng: np.random.Generator, n_items: int, size: int, s: float) -> np.ndarray:
    """``size`` draws of item indices where item k (in a seeded random order) has weight 1/(k+1)^s."""
    if n_items == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    w = 1.0 / np.power(np.arange(1, n_items + 1, dtype=np.float64), s)
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    order = rng.permutation(n_items)
    return order[np.minimum(ranks, n_items - 1)]


def _junk_names(
    rng: np.random.Generator, origin_wire: bytes, existing: set[bytes], count: int
) -> list[bytes]:
    """Names right below the origin that the zone does not hold."""
    out: list[bytes] = []
    first = {n[1 : 1 + n[0]] for n in existing}
    chars = np.frombuffer(_LABEL_CHARS.encode(), dtype=np.uint8)
    while len(out) < count:
        ln = int(rng.integers(4, 16))
        label = chars[rng.integers(0, len(chars), ln)].tobytes()
        if label in first:
            continue
        first.add(label)
        out.append(bytes([ln]) + label + origin_wire)
    return out


# ---------------------------------------------------------------- writing


@contextmanager
def _out(path: Path) -> Iterator[IO[bytes]]:
    name = path.name
    if name.endswith(".gz"):
        f: IO[bytes] = gzip.open(path, "wb", compresslevel=3)  # type: ignore[assignment]
    elif name.endswith(".xz"):
        f = lzma.open(path, "wb")  # type: ignore[assignment]
    elif name.endswith(".zst"):
        import zstandard

        raw = path.open("wb")
        f = zstandard.ZstdCompressor(level=3).stream_writer(raw)  # type: ignore[assignment]
    else:
        f = path.open("wb", buffering=1 << 20)
    try:
        yield f
    finally:
        f.close()


_HDR = struct.Struct("!HHHHHH").pack
_QT = struct.Struct("!HH").pack
_UDP = struct.Struct("!HHHH").pack
_TCP = struct.Struct("!HHIIBBHHHH").pack
_TCPH = struct.Struct("!HHIIBBHHH").pack


def _opt(do: bool) -> bytes:
    return b"\x00\x00\x29\x04\xd0\x00\x00" + (b"\x80\x00" if do else b"\x00\x00") + b"\x00\x00"


def generate(
    out: str | os.PathLike[str],
    names: list[bytes],
    origin: str | dns.name.Name,
    params: TraceParams | None = None,
) -> TraceSummary:
    """Write a capture of ``params.queries`` queries for ``names`` (wire form) under ``origin``."""
    p = params or TraceParams()
    if isinstance(origin, str):
        origin = dns.name.from_text(origin)
    origin_wire = _wire(origin)
    rng = np.random.default_rng(p.seed)
    n = p.queries
    ts = arrival_times(p, rng)
    mix = {k: v for k, v in p.type_mix.items() if v > 0}
    tnames = list(mix)
    probs = np.array([mix[k] for k in tnames])
    qtype_idx = rng.choice(len(tnames), size=n, p=probs / probs.sum())
    u = rng.random(n)
    chaos = u < p.chaos
    nx = (~chaos) & (u < p.chaos + p.nxdomain)
    if not names:
        nx = ~chaos
    existing = sorted(set(names))
    n_nx = int(nx.sum())
    junk = _junk_names(rng, origin_wire, set(existing), max(1, min(n_nx, max(1000, n_nx // 10))))
    name_idx = _zipf_choice(rng, len(existing), n, p.zipf)
    junk_idx = _zipf_choice(rng, len(junk), n, p.zipf)
    child = rng.random(n) < p.child
    rd = rng.random(n) < p.rd
    tcp = rng.random(n) < p.tcp
    edns = rng.random(n) < p.edns
    do = edns & (rng.random(n) < p.do)
    ids = rng.integers(0, 65536, n)
    ports = rng.integers(1024, 65536, n)
    seqs = rng.integers(0, 1 << 32, n, dtype=np.int64)
    client_idx = _zipf_choice(rng, p.clients, n, p.client_zipf)
    client_v6 = rng.random(p.clients) < p.v6
    client_addr = rng.integers(0, 1 << 32, (p.clients, 4), dtype=np.uint64)
    rlat = rng.integers(100_000, 3_000_000, n)
    chaos_idx = rng.integers(0, len(CHAOS_NAMES), n)
    clients: list[bytes] = []
    for i in range(p.clients):
        if client_v6[i]:
            clients.append(
                b"\x20\x01\x0d\xb8" + struct.pack("!III", *(int(x) for x in client_addr[i, :3]))
            )
        else:
            a = int(client_addr[i, 0])
            clients.append(struct.pack("!I", (198 << 24 | 18 << 16) + a % (1 << 17)))
    prefixes = (b"\x03www", b"\x04mail", b"\x02ns", b"\x03ftp")
    pref_idx = rng.integers(0, len(prefixes), n)
    type_codes = [TYPE_CODES.get(t) or _code(t) for t in tnames]
    counts = {t: 0 for t in tnames}
    summary = dict(rd=0, tcp=0, edns=0, do=0, v6=0, chaos=0, nx=0, responses=0)
    pending: list[tuple[int, int, list[bytes]]] = []
    path = Path(out)
    with _out(path) as f:
        w = PcapWriter(f, nanosecond=p.nanosecond)
        for i in range(n):
            t = int(ts[i])
            while pending and pending[0][0] <= t:
                rt, _, frames = heapq.heappop(pending)
                for fr in frames:
                    w.write_frame(rt, fr)
            if chaos[i]:
                qname = CHAOS_NAMES[int(chaos_idx[i])]
                qclass, qtype = 3, 16
                summary["chaos"] += 1
            else:
                qclass = 1
                ti = int(qtype_idx[i])
                qtype = type_codes[ti]
                counts[tnames[ti]] += 1
                if nx[i]:
                    qname = junk[int(junk_idx[i])]
                    summary["nx"] += 1
                else:
                    qname = existing[int(name_idx[i])]
                    if child[i] and qtype not in (2, 6, 43, 48):
                        qname = prefixes[int(pref_idx[i])] + qname
            flags = 0x0100 if rd[i] else 0
            use_edns = bool(edns[i])
            opt = _opt(bool(do[i])) if use_edns else b""
            ident = int(ids[i])
            wire = (
                _HDR(ident, flags, 1, 0, 0, 1 if use_edns else 0) + qname + _QT(qtype, qclass) + opt
            )
            caddr = clients[int(client_idx[i])]
            server = SERVER_V6 if len(caddr) == 16 else SERVER_V4
            sport = int(ports[i])
            over_tcp = bool(tcp[i])
            seq = int(seqs[i])
            if over_tcp:
                frames = _tcp_query(
                    caddr, server, sport, seq, seq ^ 0x5A5A5A5A, wire, ident, p.responses
                )
            else:
                frames = _udp(caddr, server, sport, 53, wire, ident)
            for fr in frames:
                w.write_frame(t, fr)
            summary["rd"] += flags != 0
            summary["tcp"] += over_tcp
            summary["edns"] += use_edns
            summary["do"] += bool(do[i])
            summary["v6"] += len(caddr) == 16
            if p.responses:
                rcode = 5 if qclass == 3 else 3 if nx[i] else 0
                rflags = 0x8000 | 0x0400 * (rcode != 5) | flags | rcode
                rwire = (
                    _HDR(ident, rflags, 1, 0, 0, 1 if use_edns else 0)
                    + qname
                    + _QT(qtype, qclass)
                    + opt
                )
                rt = t + int(rlat[i])
                if over_tcp:
                    frames = _tcp_response(
                        caddr, server, sport, seq, seq ^ 0x5A5A5A5A, len(wire), rwire, ident
                    )
                else:
                    frames = _udp(server, caddr, 53, sport, rwire, ident)
                heapq.heappush(pending, (rt, i, frames))
                summary["responses"] += 1
        while pending:
            rt, _, frames = heapq.heappop(pending)
            for fr in frames:
                w.write_frame(rt, fr)
    per_sec = (
        np.bincount(((ts - ts[0]) // 1_000_000_000).astype(np.int64))
        if n
        else np.zeros(1, np.int64)
    )
    return TraceSummary(
        path=str(path),
        queries=n,
        responses=summary["responses"],
        nonexistent=summary["nx"],
        chaos=summary["chaos"],
        rd=summary["rd"],
        tcp=summary["tcp"],
        edns=summary["edns"],
        do=summary["do"],
        v6=summary["v6"],
        qtypes=counts,
        first_ts=float(ts[0]) / 1e9 if n else p.start,
        last_ts=float(ts[-1]) / 1e9 if n else p.start,
        peak_second=int(per_sec.max()),
        names=len(existing),
        params=asdict(p),
    )


def _code(text: str) -> int:
    import dns.rdatatype

    return int(dns.rdatatype.from_text(text))


def _udp(src: bytes, dst: bytes, sport: int, dport: int, wire: bytes, ident: int) -> list[bytes]:
    return [ip_frame(src, dst, 17, _UDP(sport, dport, 8 + len(wire), 0) + wire, 6, ident)]


def _seg(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    data: bytes,
    ident: int,
) -> bytes:
    hdr = _TCPH(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    return ip_frame(src, dst, 6, hdr + data, 16, ident)


def _tcp_query(
    c: bytes, s: bytes, port: int, cisn: int, sisn: int, wire: bytes, ident: int, answered: bool
) -> list[bytes]:
    """Handshake and the framed query; closed right away when no response follows."""
    data = struct.pack("!H", len(wire)) + wire
    out = [_seg(c, s, port, 53, cisn, 0, 0x02, b"", ident)]
    if answered:
        out.append(_seg(s, c, 53, port, sisn, cisn + 1, 0x12, b"", ident))
    out.append(_seg(c, s, port, 53, cisn + 1, sisn + 1, 0x18, data, ident))
    if not answered:
        out.append(_seg(c, s, port, 53, cisn + 1 + len(data), sisn + 1, 0x11, b"", ident))
    return out


def _tcp_response(
    c: bytes, s: bytes, port: int, cisn: int, sisn: int, qlen: int, wire: bytes, ident: int
) -> list[bytes]:
    data = struct.pack("!H", len(wire)) + wire
    cnext = cisn + 1 + 2 + qlen
    snext = sisn + 1 + len(data)
    return [
        _seg(s, c, 53, port, sisn + 1, cnext, 0x18, data, ident),
        _seg(c, s, port, 53, cnext, snext, 0x11, b"", ident),
        _seg(s, c, 53, port, snext, cnext + 1, 0x11, b"", ident),
    ]


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write an F-root-like DNS query capture for a zone.")
    ap.add_argument("out", help="output pcap (.gz/.xz/.zst suffix compresses)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--names", type=Path, help="file with one name per line")
    src.add_argument("--zone", type=Path, help="master file whose owner names are queried")
    src.add_argument(
        "--manifest", type=Path, help="manifest of a split zone (names read from its slices)"
    )
    ap.add_argument("--origin", help="zone origin (default: from the manifest, else required)")
    d = TraceParams()
    for f in ("queries", "clients"):
        ap.add_argument(f"--{f}", type=int, default=getattr(d, f))
    for f in (
        "duration",
        "start",
        "zipf",
        "nxdomain",
        "rd",
        "tcp",
        "edns",
        "do",
        "v6",
        "chaos",
        "child",
        "client_zipf",
        "diurnal",
        "bursts_per_hour",
        "burst_factor",
    ):
        ap.add_argument(f"--{f.replace('_', '-')}", dest=f, type=float, default=getattr(d, f))
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--responses", action="store_true", help="also write a synthetic response to each query"
    )
    ap.add_argument("--nanosecond", action="store_true", help="nanosecond pcap timestamps")
    args = ap.parse_args(argv)
    if args.manifest:
        origin, names = names_from_manifest(args.manifest)
        if args.origin:
            origin = dns.name.from_text(args.origin)
    else:
        if not args.origin:
            ap.error("--origin is required with --names/--zone")
        origin = dns.name.from_text(args.origin)
        if args.names:
            with args.names.open() as fh:
                names = names_from_list(fh, origin)
        else:
            names = names_from_zone(args.zone, origin)
    fields = {k: getattr(args, k) for k in TraceParams.__dataclass_fields__ if k != "type_mix"}
    summary = generate(args.out, names, origin, TraceParams(**fields))
    json.dump(asdict(summary), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
