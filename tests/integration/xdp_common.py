"""Shared pieces of the XDP tests: a signed slice, its engine, hot entries, query frames.

Everything is real: a generated .com-like zone signed by dnssec-signzone, split
into SQLite slices, the engine's Responder on slice 0 (or NSD on the whole
zone as a second reference), the XDP program compiled by bcc and run with
BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype
import pytest

from datasets.gen_zone import generate_zone
from datasets.sign import sign_zone
from zoneslice.hot import entries as E
from zoneslice.manifest import load_manifest
from zoneslice.split import split_zone
from zoneslice.store.db import connect_readonly, read_meta
from zoneslice.store.keys import key_name
from zoneslice.xdp import frames, maps, testrun

Respond = Callable[[bytes], "bytes | None"]
CLIENT4, SERVER4 = "10.53.7.2", "10.53.7.1"
CLIENT6, SERVER6 = "fd00:53::2", "fd00:53::1"


def require_bpf() -> None:
    """Skip without root or bcc; fail instead when CI is set."""
    why = None
    if os.geteuid() != 0:
        why = "needs root (BPF)"
    else:
        try:
            import bcc  # noqa: F401
        except ImportError:
            why = "needs bcc (python3-bpfcc)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@dataclass
class Slice:
    zonefile: Path
    slice_db: Path
    origin: dns.name.Name
    cuts: list[dns.name.Name]
    glue: list[dns.name.Name]
    others: list[dns.name.Name]
    lo: str


def build_slice(d: Path, delegations: int = 2000, sign: str | None = "nsec") -> Slice:
    """Zone -> (signed) -> 2 slices; names of slice 0 sorted by kind."""
    plain = d / "plain.zone"
    generate_zone(plain, delegations=delegations, seed=11)
    zf = plain
    if sign:
        zf = d / "signed.zone"
        sign_zone(plain, zf, "com.", sign, seed=11, verify=False)
    split_zone(zf, 2, d / "slices")
    db = load_manifest(d / "slices").slice_path(0)
    conn = connect_readonly(db)
    meta = read_meta(conn)
    origin = dns.name.from_text(meta["origin"])
    cut_keys = {
        k
        for (k,) in conn.execute(
            "SELECT DISTINCT rkey FROM rr WHERE rdtype = 2 AND origin = 1 AND rkey != x''"
        )
    }
    addr_keys = {
        k
        for (k,) in conn.execute(
            "SELECT DISTINCT rkey FROM rr WHERE rdtype IN (1, 28) AND origin = 1"
        )
    }
    conn.close()
    cuts = sorted(key_name(k, origin) for k in cut_keys)
    glue = sorted(key_name(k, origin) for k in addr_keys - cut_keys)
    return Slice(zf, db, origin, cuts, glue, [origin], meta["lo"])


def engine_respond(slice_db: Path, client: tuple[str, int] = (CLIENT4, 5300)) -> Respond:
    """The engine's Responder on ``slice_db`` as a ``respond(wire)`` function."""
    from zoneslice.engine.query import Responder

    r = Responder(slice_db)

    def respond(wire: bytes, client: tuple[str, int] = client) -> bytes | None:
        return r.respond(wire, tcp=False, client=client)

    return respond


def udp_respond(addr: str, port: int) -> Respond:
    """A server reached over UDP (NSD on loopback) as ``respond(wire)``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)

    def respond(wire: bytes, client: object = None) -> bytes | None:
        sock.sendto(wire, (addr, port))
        while True:
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                return None
            if data[:2] == wire[:2]:
                return data

    return respond


def hot_entries(
    respond: Respond, sl: Slice, n_cuts: int = 150
) -> tuple[list[E.Entry], E.EntryBuilder]:
    """Delegation entries for the first ``n_cuts`` cuts, exact entries for apex data and misses."""
    b = E.EntryBuilder(respond)
    out: list[E.Entry] = []
    for c in sl.cuts[:n_cuts]:
        out += b.delegation(c)
    for t in ("SOA", "NS", "DNSKEY", "MX", "A"):
        out += b.exact(sl.origin, dns.rdatatype.from_text(t))
    for g in sl.glue[:40]:
        out += b.exact(g, dns.rdatatype.A)
        out += b.exact(g, dns.rdatatype.AAAA)
    for i in range(20):
        out += b.exact(dns.name.from_text(f"{sl.lo}nx{i}", sl.origin), dns.rdatatype.A)
    for c in sl.cuts[:20]:
        out += b.exact(c, dns.rdatatype.DS)
    return out, b


QTYPES = [1, 2, 28, 43, 6, 15, 16, 46, 47, 48, 255, 257, 999, 0, 41, 250, 251, 252]


def random_query(rnd: random.Random, sl: Slice) -> bytes:
    """A query mixing hot and cold names, case, types, flags, EDNS variants and sizes."""
    k = rnd.random()
    if k < 0.45:
        name = rnd.choice(sl.cuts[:170])
        for _ in range(rnd.choice([0, 0, 1, 1, 2, 3])):
            name = dns.name.Name(
                (rnd.choice([b"www", b"mail", b"a-b", b"x" * rnd.randrange(1, 64)]),) + name.labels
            )
    elif k < 0.6:
        name = rnd.choice(sl.glue[:60] or [sl.origin])
    elif k < 0.7:
        name = sl.origin
    elif k < 0.8:
        name = dns.name.from_text(f"{sl.lo}nx{rnd.randrange(25)}", sl.origin)
    elif k < 0.9:
        name = rnd.choice(sl.cuts)
    else:
        name = dns.name.from_text(f"n{rnd.randrange(99)}.example.net.")
    try:
        qn = E.mixed_case(name.to_wire(), rnd)
    except dns.name.NameTooLong:
        qn = E.mixed_case(sl.origin.to_wire(), rnd)
    qt = rnd.choice(QTYPES[:10]) if rnd.random() < 0.85 else rnd.choice(QTYPES)
    variant = rnd.choice(maps.VARIANTS)
    flags = rnd.choice([0, 0x0100, 0x0120, 0x0130, 0x0010])
    payload = rnd.choice([512, 1232, 4096, 100, 1400, 1220, 1221, 600])
    opts = b""
    if variant != maps.V_PLAIN and rnd.random() < 0.2:
        c = os.urandom(rnd.choice([8, 24]))
        opts = struct.pack("!HH", 10, len(c)) + c
    return E.make_query(
        qn, qt, variant, qid=rnd.randrange(65536), flags=flags, payload=payload, options=opts
    )


def frame_for(rnd: random.Random, wire: bytes, port: int = 53) -> bytes:
    v6 = rnd.random() < 0.5
    return frames.udp_frame(
        CLIENT6 if v6 else CLIENT4,
        SERVER6 if v6 else SERVER4,
        rnd.randrange(1024, 65536),
        port,
        wire,
        vlan=rnd.choice([None, None, None, 7]),
        udp_csum=rnd.random() < 0.8,
    )


def same_answer(got: bytes, want: bytes | None) -> bool:
    """Byte-identical, or the same header and the same decoded message (compression aside)."""
    if got == want:
        return True
    if want is None or got[:12] != want[:12]:
        return False
    try:
        a, b = dns.message.from_wire(got), dns.message.from_wire(want)
    except Exception:
        return False
    return a == b and a.edns == b.edns and a.payload == b.payload and a.ednsflags == b.ednsflags


def check_result(frame: bytes, res: testrun.RunResult, respond: Respond) -> str | None:
    """None if the program's verdict on ``frame`` is acceptable, else what is wrong.

    XDP_PASS must leave the frame untouched; XDP_TX must be a well-formed reply
    (addresses, ports swapped; lengths, checksums right) whose DNS message is
    the engine's answer to the query; nothing else is allowed.
    """
    if res.action == testrun.XDP_PASS:
        return None if res.frame == frame else "XDP_PASS changed the frame"
    if res.action != testrun.XDP_TX:
        return f"verdict {res.name}"
    q = frames.parse_udp(frame)
    if q is None or q.problems:
        return f"XDP_TX of a frame that is not a clean UDP query: {q and q.problems}"
    r = frames.parse_udp(res.frame)
    if r is None:
        return "XDP_TX of something that is not UDP"
    probs = frames.reply_problems(q, r)
    if probs:
        return "; ".join(probs)
    want = respond(q.payload, (q.src, q.sport))
    if not same_answer(r.payload, want):
        return "DNS answer differs from the engine's"
    return None


def run_many(prog_fd: int, items: Iterator[bytes]) -> Iterator[tuple[bytes, testrun.RunResult]]:
    for fr in items:
        yield fr, testrun.run(prog_fd, fr)
