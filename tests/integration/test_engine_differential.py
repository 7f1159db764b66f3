"""Differential test: each slice answers exactly as NSD answers the whole zone.

For every zone kind (generated .com-like zones, plain, NSEC-signed and NSEC3
opt-out signed, plus the hand-written tests/data/corners.zone in the same three
kinds) the zone is split in 3 slices, a real NSD serves the whole zone on
loopback and the same generated queries go to NSD (pipelined over UDP, some
over TCP) and to ``Responder.respond`` of the slice that owns the name. Both
answers must have the same rcode, opcode, flags (CD aside: we copy it, NSD
clears it), question bytes, OPT (version, DO, payload, extended rcode,
options) and, per section, the same set of RRs (owner, type, class, TTL,
canonical rdata). The owners equal to the question name must keep the
client's letter case. Mismatches are printed as readable diffs.

The slices are exactly what ``split_zone`` writes: the test relies on split's
copies (apex, sibling glue and its context, redirect targets, apex wildcard,
boundary NSEC, NSEC3 chain) for equivalence.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from datasets.gen_zone import generate_zone
from datasets.sign import sign_zone
from zoneslice.engine import Responder
from zoneslice.manifest import Manifest
from zoneslice.split import split_zone
from zoneslice.store.keys import key_labels
from zoneslice.zonefile import ZoneReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nsd import NsdServer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CORNERS = DATA / "corners.zone"
PARTS = 3
CLIENT = ("127.0.0.1", 40053)

TYPE_WEIGHTS = {
    "A": 20, "AAAA": 10, "NS": 9, "DS": 8, "SOA": 3, "MX": 6, "TXT": 6, "ANY": 6, "DNSKEY": 3,
    "CNAME": 3, "DNAME": 2, "SRV": 2, "PTR": 1, "NSEC": 2, "NSEC3": 1, "RRSIG": 2,
    "NSEC3PARAM": 1, "CAA": 1, "HINFO": 1, "TLSA": 1, "SSHFP": 1, "NAPTR": 1, "TYPE65": 1,
}  # fmt: skip
PAYLOADS = (512, 1232, 1232, 1232, 4096, 1400, 600, 100)
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-"


# ---------------------------------------------------------------- zones


def write_extras(path: Path, origin: str, taken: set[str], count: int, seed: int) -> None:
    """Append wildcards, CNAME/DNAME chains, empty non-terminals and hosts to a generated zone.

    First labels start with different letters so that the corner cases land in
    every slice and CNAME/DNAME targets often sit in another slice.
    """
    rng = random.Random(seed)
    lines = ["; zoneslice differential extras"]
    letters = "abcdefghijklmnopqrstuvwxyz"

    def label(kind: str, i: int) -> str:
        while True:
            lb = f"{rng.choice(letters)}{rng.choice(letters)}x-{kind}-{i}"
            if lb not in taken:
                taken.add(lb)
                return lb

    hosts = [label("host", i) for i in range(count)]
    for i, h in enumerate(hosts):
        lines += [
            f"{h}.{origin} 3600 IN A 192.0.2.{i % 250 + 1}",
            f'{h}.{origin} 3600 IN TXT "host {i}"',
            f"{h}.{origin} 3600 IN MX 10 mail.{h}.{origin}",
            f"{h}.{origin} 3600 IN AAAA 2001:db8::{i + 1:x}",
            f"mail.{h}.{origin} 3600 IN A 198.51.100.{i % 250 + 1}",
            f"www.deep.{h}.{origin} 3600 IN A 203.0.113.{i % 250 + 1}",
            f"_sip._tcp.{h}.{origin} 3600 IN SRV 0 5 5060 mail.{h}.{origin}",
        ]
    for i in range(count):
        w = label("wild", i)
        lines += [
            f"*.{w}.{origin} 3600 IN A 192.0.2.200",
            f'*.{w}.{origin} 3600 IN TXT "wildcard {i}"',
            f"*.{w}.{origin} 3600 IN MX 10 mail.{rng.choice(hosts)}.{origin}",
            f"exists.{w}.{origin} 3600 IN A 192.0.2.201",
            f'a.ent.{w}.{origin} 3600 IN TXT "blocks the wildcard at ent"',
        ]
    for i in range(count):
        c = label("cname", i)
        c2 = label("chain", i)
        d = label("dangle", i)
        lines += [
            f"{c}.{origin} 3600 IN CNAME {rng.choice(hosts)}.{origin}",
            f"{c2}.{origin} 3600 IN CNAME {c}.{origin}",
            f"{d}.{origin} 3600 IN CNAME nothere-{i}.{hosts[i]}.{origin}",
        ]
    for i in range(max(1, count // 2)):
        dn = label("dname", i)
        lines.append(f"{dn}.{origin} 3600 IN DNAME {rng.choice(hosts)}.{origin}")
    with open(path, "a") as fh:
        fh.write("\n".join(lines) + "\n")


@dataclass
class ZoneInfo:
    origin: dns.name.Name
    owners: dict[tuple, set[int]] = field(default_factory=dict)
    delegations: list[tuple] = field(default_factory=list)
    ents: list[tuple] = field(default_factory=list)
    wildcards: list[tuple] = field(default_factory=list)
    below_cut: list[tuple] = field(default_factory=list)
    redirects: list[tuple] = field(default_factory=list)
    nsec3_owners: list[tuple] = field(default_factory=list)
    authoritative: list[tuple] = field(default_factory=list)


def zone_info(zonefile: Path, origin: str) -> ZoneInfo:
    info = ZoneInfo(dns.name.from_text(origin))
    for rkey, rdtype, covers, *_ in ZoneReader(zonefile, origin):
        rel = tuple(key_labels(rkey))
        if rdtype == 50 or (rdtype == 46 and covers == 50):
            info.nsec3_owners.append(rel)
            continue
        info.owners.setdefault(rel, set()).add(rdtype)
    cuts = {rel for rel, types in info.owners.items() if 2 in types and rel}
    info.delegations = sorted(cuts)
    ents = set()
    for rel in info.owners:
        for i in range(1, len(rel)):
            if rel[:i] not in info.owners:
                ents.add(rel[:i])
    info.ents = sorted(ents)
    for rel, types in info.owners.items():
        if any(rel[:i] in cuts for i in range(1, len(rel))):
            info.below_cut.append(rel)
        elif rel not in cuts:
            info.authoritative.append(rel)
        if rel and rel[-1] == b"*":
            info.wildcards.append(rel)
        if types & {5, 39}:
            info.redirects.append(rel)
    info.below_cut.sort()
    info.authoritative.sort()
    info.wildcards.sort()
    info.redirects.sort()
    return info


# ---------------------------------------------------------------- pending split copies


# ---------------------------------------------------------------- queries


@dataclass
class Case:
    wire: bytes
    slice: int
    tcp: bool
    what: str


def _rand_label(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET[:-1]) for _ in range(rng.randint(1, 12)))


def _mix_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in text)


def _name(rel: Iterable[bytes], origin: dns.name.Name) -> dns.name.Name:
    return dns.name.Name(tuple(rel)[::-1] + origin.labels)


def generate_cases(info: ZoneInfo, manifest: Manifest, n: int, seed: int) -> list[Case]:
    """``n`` queries: a pool of questions (so some repeat and hit the answer cache) sent with
    random case, RD/CD, EDNS/DO and buffer sizes."""
    rng = random.Random(seed)
    origin = info.origin
    plan = manifest.plan
    owners = sorted(info.owners)
    bounds = [b for b in plan.bounds if b]
    types = list(TYPE_WEIGHTS)
    weights = [TYPE_WEIGHTS[t] for t in types]

    def pick(seq: list, default: tuple = ()) -> tuple:
        return rng.choice(seq) if seq else default

    makers = [
        (30, "owner", lambda: pick(owners)),
        (5, "ent", lambda: pick(info.ents)),
        (6, "below-cut", lambda: pick(info.delegations) + (_rand_label(rng).encode(),)),
        (5, "glue", lambda: pick(info.below_cut)),
        (7, "wildcard", lambda: pick(info.wildcards)[:-1] + (_rand_label(rng).encode(),)),
        (2, "wildcard-deep", lambda: pick(info.wildcards)[:-1] + (b"x", _rand_label(rng).encode())),
        (14, "nx", lambda: (_rand_label(rng).encode(),)),
        (6, "nx-child", lambda: pick(info.authoritative) + (_rand_label(rng).encode(),)),
        (3, "apex", lambda: ()),
        (7, "redirect", lambda: pick(info.redirects)),
        (3, "below-redirect", lambda: pick(info.redirects) + (_rand_label(rng).encode(),)),
        (1, "nsec3-owner", lambda: pick(info.nsec3_owners)),
        (
            3,
            "boundary",
            lambda: (rng.choice(bounds) + rng.choice([b"", b"a", b"-", b"0"]),) if bounds else (),
        ),
        (1, "outside", lambda: None),
    ]
    total = sum(w for w, _, _ in makers)
    pool: list[tuple[str, dns.name.Name, str]] = []
    for _ in range(max(1, n // 3)):
        r = rng.random() * total
        what, make = makers[-1][1], makers[-1][2]
        for w, kind, maker in makers:
            r -= w
            if r < 0:
                what, make = kind, maker
                break
        rel = make()
        name = (
            dns.name.from_text(f"{_rand_label(rng)}.example.net.")
            if rel is None
            else _name(rel, origin)
        )
        pool.append((what, name, rng.choices(types, weights)[0]))
    codes = {t: dns.rdatatype.from_text(t) for t in types}
    cases = []
    for i in range(n):
        what, name, qtype = pool[i] if i < len(pool) else rng.choice(pool)
        labels = [_mix_case(lb.decode("latin-1"), rng).encode("latin-1") for lb in name.labels]
        qname = b"".join(bytes((len(lb),)) + lb for lb in labels)
        edns = rng.random() < 0.75
        do = edns and rng.random() < 0.6
        flags = 0x0100 if rng.random() < 0.5 else 0
        if rng.random() < 0.2:
            flags |= 0x0010
        msg = struct.pack("!HHHHHH", i & 0xFFFF, flags, 1, 0, 0, 1 if edns else 0)
        msg += qname + struct.pack("!HH", codes[qtype], 1)
        if edns:
            msg += b"\x00" + struct.pack("!HHIH", 41, rng.choice(PAYLOADS), 0x8000 if do else 0, 0)
        idx = plan.slice_for(name)
        text = b".".join(labels).decode("latin-1")
        cases.append(
            Case(
                msg,
                0 if idx is None else idx,
                rng.random() < 0.03,
                f"{what} {text} {qtype} rd={flags >> 8 & 1} cd={flags >> 4 & 1}"
                f" edns={int(edns)} do={int(do)}",
            )
        )
    return cases


# ---------------------------------------------------------------- NSD client


def ask_udp(wires: list[bytes], addr: str, port: int, window: int = 200) -> list[bytes | None]:
    """Send every query (IDs rewritten to the index mod 65536), several outstanding at once."""
    out: list[bytes | None] = [None] * len(wires)
    for base in range(0, len(wires), 60000):
        chunk = wires[base : base + 60000]
        got = _ask_chunk(chunk, addr, port, window)
        out[base : base + len(chunk)] = got
    return out


def _ask_chunk(wires: list[bytes], addr: str, port: int, window: int) -> list[bytes | None]:
    n = len(wires)
    out: list[bytes | None] = [None] * n
    sent_at: dict[int, float] = {}
    tries: Counter = Counter()
    queue = list(range(n))
    queue.reverse()
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((addr, port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        while queue or sent_at:
            while queue and len(sent_at) < window:
                i = queue.pop()
                sock.send(struct.pack("!H", i) + wires[i][2:])
                sent_at[i] = time.monotonic()
                tries[i] += 1
            for _ in sel.select(0.02):
                while True:
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        break
                    i = struct.unpack_from("!H", data)[0]
                    if i in sent_at and data[12:20] == wires[i][12:20]:
                        out[i] = data
                        del sent_at[i]
            now = time.monotonic()
            for i, t in list(sent_at.items()):
                if now - t > 1.0:
                    del sent_at[i]
                    if tries[i] < 4:
                        queue.append(i)
    finally:
        sel.close()
        sock.close()
    return out


def ask_tcp(wire: bytes, addr: str, port: int) -> bytes | None:
    with socket.create_connection((addr, port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = b""
        while len(head) < 2:
            part = s.recv(2 - len(head))
            if not part:
                return None
            head += part
        size = struct.unpack("!H", head)[0]
        data = b""
        while len(data) < size:
            part = s.recv(size - len(data))
            if not part:
                return None
            data += part
        return data


# ---------------------------------------------------------------- comparison

_ONE_NAME = {2, 3, 4, 5, 7, 8, 9, 12, 39}
_PREF_NAME = {15: 2, 18: 2, 21: 2, 36: 2, 33: 6}


class WireError(Exception):
    """The message cannot be parsed."""


def _read_name(msg: bytes, pos: int) -> tuple[bytes, int]:
    """(lower-cased dotted name, offset after it) with compression pointers followed."""
    labels = []
    end = None
    jumps = 0
    while True:
        if pos >= len(msg):
            raise WireError("name runs past the end")
        ln = msg[pos]
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= len(msg) or jumps > 64:
                raise WireError("bad pointer")
            if end is None:
                end = pos + 2
            pos = ((ln & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            continue
        if ln & 0xC0:
            raise WireError("bad label type")
        if ln == 0:
            return b".".join(labels).lower() + b".", end if end is not None else pos + 1
        labels.append(msg[pos + 1 : pos + 1 + ln])
        pos += ln + 1


def _rdata(msg: bytes, rdtype: int, start: int, end: int) -> bytes:
    """Rdata with embedded names decompressed and lower-cased, for comparison."""
    if rdtype in _ONE_NAME:
        return _read_name(msg, start)[0]
    if rdtype in _PREF_NAME:
        k = _PREF_NAME[rdtype]
        return msg[start : start + k] + b" " + _read_name(msg, start + k)[0]
    if rdtype in (6, 14, 17):
        a, p = _read_name(msg, start)
        b, p = _read_name(msg, p)
        return a + b" " + b + b" " + msg[p:end]
    if rdtype == 46:
        signer, p = _read_name(msg, start + 18)
        return msg[start : start + 18] + signer + msg[p:end]
    if rdtype == 47:
        nxt, p = _read_name(msg, start)
        return nxt + b" " + msg[p:end]
    return msg[start:end]


@dataclass
class Parsed:
    ident: int
    flags: int
    question: bytes
    qname: bytes
    sections: list[Counter]
    owners: list[bytes]
    opt: tuple | None


def parse_wire(msg: bytes) -> Parsed:
    if len(msg) < 12:
        raise WireError("short")
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    pos = 12
    qname = b""
    for _ in range(qd):
        qname, p = _read_name(msg, pos)
        pos = p + 4
    question = msg[12:pos]
    sections: list[Counter] = [Counter(), Counter(), Counter()]
    owners: list[bytes] = []
    opt = None
    for sec, count in enumerate((an, ns, ar)):
        for _ in range(count):
            owner, p = _read_name(msg, pos)
            if p + 10 > len(msg):
                raise WireError("truncated RR")
            rdtype, rdclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, p)
            start = p + 10
            end = start + rdlen
            if end > len(msg):
                raise WireError("truncated rdata")
            if rdtype == 41:
                opt = (rdclass, ttl, msg[start:end])
            else:
                sections[sec][(owner, rdtype, rdclass, ttl, _rdata(msg, rdtype, start, end))] += 1
                if sec == 0:
                    owners.append(msg[pos:p] if msg[pos] & 0xC0 == 0 else b"")
            pos = end
    return Parsed(ident, flags, question, qname, sections, owners, opt)


def _show(key: tuple) -> str:
    owner, rdtype, rdclass, ttl, rdata = key
    text = rdata.decode("latin-1") if rdtype in _ONE_NAME else rdata.hex()
    return f"{owner.decode('latin-1')} {ttl} {dns.rdatatype.to_text(rdtype)} {text[:100]}"


def _answer_owner_cases(msg: bytes, qname_wire: bytes) -> list[bytes]:
    """Raw (case-kept) owner names of the answer RRs equal to the question name."""
    out = []
    try:
        _, _, qd, an, _, _ = struct.unpack_from("!HHHHHH", msg)
        pos = 12
        for _ in range(qd):
            pos = _read_name(msg, pos)[1] + 4
        for _ in range(an):
            full = _raw_name(msg, pos)
            after = _read_name(msg, pos)[1]
            if full.lower() == qname_wire.lower():
                out.append(full)
            pos = after + 10 + struct.unpack_from("!H", msg, after + 8)[0]
    except (IndexError, struct.error, WireError):
        pass
    return out


def _raw_name(msg: bytes, pos: int) -> bytes:
    out = b""
    for _ in range(128):
        ln = msg[pos]
        if ln & 0xC0 == 0xC0:
            pos = ((ln & 0x3F) << 8) | msg[pos + 1]
            continue
        out += msg[pos : pos + 1 + ln]
        if ln == 0:
            return out
        pos += ln + 1
    return out


def compare(case: Case, theirs: bytes | None, ours: bytes | None) -> list[str]:
    """Readable differences between NSD's and our answer to one query (empty when equal)."""
    if theirs is None or ours is None:
        return (
            []
            if theirs is ours
            else [f"response: nsd={theirs is not None} ours={ours is not None}"]
        )
    try:
        a = parse_wire(theirs)
        b = parse_wire(ours)
    except WireError as exc:
        return [f"unparsable answer: {exc} nsd={theirs.hex()} ours={ours.hex()}"]
    diffs = []
    qflags = struct.unpack_from("!H", case.wire, 2)[0]
    if (a.flags & 0x000F) != (b.flags & 0x000F) or (a.flags & 0x7800) != (b.flags & 0x7800):
        diffs.append(
            f"rcode/opcode: nsd={dns.rcode.to_text(a.flags & 0xF)} ours={dns.rcode.to_text(b.flags & 0xF)}"
        )
    cd = 0x0010
    if (a.flags & ~cd & 0xFFF0) != (b.flags & ~cd & 0xFFF0):
        diffs.append(f"flags: nsd={dns.flags.to_text(a.flags)} ours={dns.flags.to_text(b.flags)}")
    if (b.flags & cd) != (qflags & cd):
        diffs.append("CD not copied from the query")
    if a.question != b.question:
        diffs.append(f"question: nsd={a.question!r} ours={b.question!r}")
    if b.question and b.question != case.wire[12 : 12 + len(b.question)]:
        diffs.append("question not echoed byte for byte")
    if a.opt != b.opt:
        diffs.append(f"opt (payload, ttl, rdata): nsd={a.opt} ours={b.opt}")
    for title, ca, cb in zip(
        ("answer", "authority", "additional"), a.sections, b.sections, strict=True
    ):
        if ca != cb:
            diffs.append(f"{title}:")
            diffs += [f"  - nsd only: {_show(k)}" for k in sorted((ca - cb).elements())]
            diffs += [f"  + ours only: {_show(k)}" for k in sorted((cb - ca).elements())]
    qname_wire = _raw_name(case.wire, 12)
    for raw in _answer_owner_cases(ours, qname_wire):
        if raw != qname_wire:
            diffs.append(f"owner case not echoed: {raw!r} for {qname_wire!r}")
            break
    return diffs


# ---------------------------------------------------------------- the run


@dataclass
class RunResult:
    kind: str
    queries: int
    mismatches: list[str]
    tcp: int
    cache_hits: int
    rcodes: Counter
    copies: dict[str, int]


def run_differential(
    zonefile: Path,
    origin: str,
    workdir: Path,
    kind: str,
    n_queries: int,
    seed: int,
    addr: str = "127.0.0.1",
) -> RunResult:
    result = split_zone(zonefile, PARTS, workdir / "slices")
    manifest = result.manifest
    copies = {
        f"slice{s.index}": sum(s.records_copied.values()) for s in manifest.slices
    }
    info = zone_info(zonefile, origin)
    cases = generate_cases(info, manifest, n_queries, seed)
    responders = [Responder(manifest.slice_path(i)) for i in range(PARTS)]
    mismatches: list[str] = []
    rcodes: Counter = Counter()
    try:
        with NsdServer(zonefile, origin, addr=addr) as (addr, port):
            udp = [c for c in cases if not c.tcp]
            theirs_udp = ask_udp([c.wire for c in udp], addr, port)
            theirs = {id(c): t for c, t in zip(udp, theirs_udp, strict=True)}
            for c in cases:
                if c.tcp:
                    theirs[id(c)] = ask_tcp(c.wire, addr, port)
        for i, c in enumerate(cases):
            t = theirs[id(c)]
            if t is not None and not c.tcp:
                t = c.wire[:2] + t[2:]
            ours = responders[c.slice].respond(c.wire, tcp=c.tcp, client=(addr, CLIENT[1]))
            if ours is not None:
                rcodes[ours[3] & 0xF] += 1
            diffs = compare(c, t, ours)
            if diffs:
                mismatches.append(
                    f"#{i} [{kind} slice {c.slice}{' tcp' if c.tcp else ''}] {c.what}\n    "
                    + "\n    ".join(diffs)
                )
        hits = sum(r.counters["cache_hits"] for r in responders)
    finally:
        for r in responders:
            r.close()
    return RunResult(kind, len(cases), mismatches, sum(c.tcp for c in cases), hits, rcodes, copies)


def report(res: RunResult) -> str:
    head = (
        f"{res.kind}: {res.queries} queries ({res.tcp} over TCP), {res.cache_hits} cache hits,"
        f" rcodes {dict(sorted(res.rcodes.items()))}, pending copies {res.copies},"
        f" {len(res.mismatches)} mismatches"
    )
    return "\n".join([head] + res.mismatches[:40])


def _generated(tmp: Path, delegations: int, mode: str | None, seed: int) -> Path:
    plain = tmp / "gen.zone"
    generate_zone(plain, delegations, seed=seed, origin="com.")
    taken = {key_labels(k)[0].decode("latin-1") for k, *_ in ZoneReader(plain, "com.") if k}
    write_extras(plain, "com.", taken, max(4, delegations // 150), seed)
    if mode is None:
        return plain
    signed = tmp / f"gen-{mode}.zone"
    sign_zone(plain, signed, "com.", mode, seed=seed)
    return signed


def _corners(tmp: Path, mode: str | None) -> Path:
    if mode is None:
        return CORNERS
    signed = tmp / f"corners-{mode}.zone"
    sign_zone(CORNERS, signed, "example.", mode, seed=3)
    return signed


KINDS = [None, "nsec", "nsec3"]


@pytest.mark.parametrize("mode", KINDS, ids=["plain", "nsec", "nsec3"])
def test_generated_zone_matches_nsd(mode: str | None, tmp_path: Path) -> None:
    zone = _generated(tmp_path, 3000, mode, seed=11)
    res = run_differential(zone, "com.", tmp_path, f"generated-{mode or 'plain'}", 15000, seed=101)
    print(report(res))
    assert res.queries >= 15000 and res.cache_hits > 0
    assert not res.mismatches, report(res)


@pytest.mark.parametrize("mode", KINDS, ids=["plain", "nsec", "nsec3"])
def test_corners_zone_matches_nsd(mode: str | None, tmp_path: Path) -> None:
    zone = _corners(tmp_path, mode)
    res = run_differential(zone, "example.", tmp_path, f"corners-{mode or 'plain'}", 3000, seed=202)
    print(report(res))
    assert res.queries >= 3000
    assert not res.mismatches, report(res)


@pytest.mark.parametrize("mode", ["nsec", "nsec3"])
def test_corners_zone_matches_nsd_over_ipv6(mode: str, tmp_path: Path) -> None:
    """IPv6 clients: AAAA glue first for NS targets, a 1220-octet additional-section cut."""
    zone = _corners(tmp_path, mode)
    res = run_differential(
        zone, "example.", tmp_path, f"corners-{mode}-v6", 2000, seed=404, addr="::1"
    )
    print(report(res))
    assert res.queries >= 2000
    assert not res.mismatches, report(res)


@pytest.mark.slow
@pytest.mark.parametrize("mode", KINDS, ids=["plain", "nsec", "nsec3"])
def test_big_generated_zone_matches_nsd(mode: str | None, tmp_path: Path) -> None:
    zone = _generated(tmp_path, 20000, mode, seed=12)
    res = run_differential(zone, "com.", tmp_path, f"big-{mode or 'plain'}", 100000, seed=303)
    print(report(res))
    assert not res.mismatches, report(res)
