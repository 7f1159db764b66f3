"""Socket-level fuzzing of the engine: malformed packets never kill it.

Thousands of random and mutated messages (truncated headers, label loops, bad
pointers, qdcount 0/2, oversized names, garbage, bit flips of valid queries)
go over UDP and TCP. Every reply must be a response to the packet it answers
(same ID, QR set); no worker may die or raise; afterwards valid queries still
get the Responder's exact answer. ``ZS_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest
from test_engine_server import (
    SLICE,
    build_slices,
    fresh_stats,
    query_set,
    responder_class,
    same,
    start,
    tcp_connect,
    udp_ask,
)

from zoneslice.manifest import load_manifest

SEED = int(os.environ.get("ZS_FUZZ_SEED", "20240917"))
UDP_PACKETS = 3000
TCP_PACKETS = 1000
BURST = 40
PROBE_ID = 0xBEEF


def _hdr(ident: int, flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def _q(name: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


NAME = b"\x07example\x03com\x00"


def _label_loop(rng: random.Random, i: int) -> bytes:
    return (
        _hdr(i)
        + rng.choice([b"\xc0\x0c", b"\x01a\xc0\x0c", b"\x01a\xc0\x0e\x01b\xc0\x0c"])
        + b"\x00\x01\x00\x01"
    )


def _bad_pointer(rng: random.Random, i: int) -> bytes:
    ptr = rng.choice([0xC000 | rng.randrange(0x3FFF), 0xC0FF, 0xFFFF, 0xC000])
    return _hdr(i) + b"\x03www" + struct.pack("!H", ptr) + b"\x00\x01\x00\x01"


def _qdcount(rng: random.Random, i: int) -> bytes:
    qd = rng.choice([0, 2, 3, 65535])
    body = _q(NAME) * (qd if qd in (2, 3) else rng.choice([0, 1]))
    return _hdr(i, 0x0100, qd) + body


def _oversized(rng: random.Random, i: int) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:  # > 255 octets
        name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x03com\x00"
    elif kind == 1:  # label length 64..191 (reserved label types)
        name = bytes([rng.randrange(64, 192)]) + b"x" * 70 + b"\x00"
    else:  # 128 one-octet labels, 257 octets
        name = b"\x01a" * 128 + b"\x00"
    return _hdr(i) + _q(name)


def _garbage(rng: random.Random, i: int) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 5, 11, 12, 13, 40, 300, 1500]))


def _short_header(rng: random.Random, i: int) -> bytes:
    return _hdr(i)[: rng.randrange(12)]


def _weird_sections(rng: random.Random, i: int) -> bytes:
    opt_bad = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x10\x00\x01"  # rdlen past the end
    opt_v1 = b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"  # EDNS version 1
    opt_ok = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
    tsig_junk = NAME + b"\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x05hello"
    choice = rng.randrange(6)
    if choice == 0:
        return _hdr(i, ar=1) + _q(NAME) + opt_bad
    if choice == 1:
        return _hdr(i, ar=2) + _q(NAME) + opt_ok + opt_ok
    if choice == 2:
        return _hdr(i, ar=1) + _q(NAME) + opt_v1
    if choice == 3:
        return _hdr(i, an=1) + _q(NAME) + opt_ok
    if choice == 4:
        return _hdr(i, ar=1) + _q(NAME, 250) + tsig_junk
    return _hdr(i, ar=1) + _q(NAME) + opt_ok + rng.randbytes(rng.randrange(1, 20))


def _opcodes(rng: random.Random, i: int) -> bytes:
    op = rng.choice([1, 2, 3, 4, 5, 6, 15])
    flags = (op << 11) | rng.choice([0, 0x8000, 0x0100])
    return _hdr(i, flags) + _q(NAME, rng.choice([1, 6, 252, 251, 255, 0, 65535]))


def _bitflip(valid: list[bytes]) -> Callable[[random.Random, int], bytes]:
    def mutate(rng: random.Random, i: int) -> bytes:
        w = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(w))
            w[pos] ^= 1 << rng.randrange(8)
        return bytes(w)

    return mutate


def _truncated(valid: list[bytes]) -> Callable[[random.Random, int], bytes]:
    def mutate(rng: random.Random, i: int) -> bytes:
        w = rng.choice(valid)
        return w[: rng.randrange(len(w))]

    return mutate


def _spliced(valid: list[bytes]) -> Callable[[random.Random, int], bytes]:
    def mutate(rng: random.Random, i: int) -> bytes:
        a, b = rng.choice(valid), rng.choice(valid)
        return a[: rng.randrange(len(a))] + b[rng.randrange(len(b)) :]

    return mutate


def fuzz_packets(valid: list[bytes], n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` (kind, packet) pairs, deterministic for a seed."""
    rng = random.Random(seed)
    kinds: dict[str, Callable[[random.Random, int], bytes]] = {
        "label_loop": _label_loop,
        "bad_pointer": _bad_pointer,
        "qdcount": _qdcount,
        "oversized": _oversized,
        "garbage": _garbage,
        "short_header": _short_header,
        "sections": _weird_sections,
        "opcode": _opcodes,
        "bitflip": _bitflip(valid),
        "truncated": _truncated(valid),
        "spliced": _spliced(valid),
    }
    weights = {"bitflip": 4, "truncated": 2, "garbage": 2}
    names = list(kinds)
    w = [weights.get(k, 1) for k in names]
    out = []
    for _ in range(n):
        k = rng.choices(names, w)[0]
        pkt = kinds[k](rng, rng.randrange(65536))
        if pkt[:2] == struct.pack("!H", PROBE_ID):
            pkt = b"\x00\x00" + pkt[2:]
        out.append((k, pkt))
    return out


def _check_reply(reply: bytes, sent_ids: set[bytes], problems: list[str], what: str) -> None:
    if len(reply) < 12:
        problems.append(f"{what}: reply shorter than a header: {reply.hex()}")
    elif reply[:2] not in sent_ids:
        problems.append(f"{what}: reply with an ID nobody asked: {reply[:12].hex()}")
    elif not reply[2] & 0x80:
        problems.append(f"{what}: reply without QR: {reply[:12].hex()}")


@pytest.fixture(scope="module")
def slice_db(tmp_path_factory):
    return load_manifest(build_slices(tmp_path_factory.mktemp("fuzz-zone"))).slice_path(SLICE)


@pytest.fixture(scope="module")
def fuzz_server(slice_db, tmp_path_factory):
    with start(
        slice_db,
        [("127.0.0.1", 0)],
        workers=2,
        stats_path=tmp_path_factory.mktemp("fuzzstats"),
        axfr_allow=["127.0.0.1"],
        tcp_idle=2.0,
    ) as srv:
        yield srv


def _probe(slice_db) -> bytes:
    q = dns.message.from_wire(query_set(slice_db, 1, seed=99)[0])
    q.id = PROBE_ID
    return q.to_wire()


def test_udp_fuzz(fuzz_server, slice_db) -> None:
    valid = query_set(slice_db, 200, seed=21)
    packets = fuzz_packets(valid, UDP_PACKETS, SEED)
    probe = _probe(slice_db)
    addr = fuzz_server.info.listen[0]
    problems: list[str] = []
    replies: Counter[str] = Counter()
    for start_at in range(0, len(packets), BURST):
        burst = packets[start_at : start_at + BURST]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _, pkt in burst:
                s.sendto(pkt, addr)
            s.sendto(probe, addr)
            ids = {pkt[:2] for _, pkt in burst if len(pkt) >= 2}
            while True:
                try:
                    reply = s.recv(65535)
                except TimeoutError:
                    problems.append(
                        f"seed {SEED}: no answer to the probe after burst at {start_at}"
                    )
                    break
                if reply[:2] == probe[:2]:
                    break
                _check_reply(reply, ids, problems, f"seed {SEED} burst {start_at}")
                if len(reply) >= 4:
                    replies[dns.rcode.to_text(reply[3] & 0xF)] += 1
    assert not problems, "\n".join(problems[:20])
    assert replies["FORMERR"] > 100, replies
    _still_healthy(fuzz_server, slice_db)


def test_tcp_fuzz(fuzz_server, slice_db) -> None:
    valid = query_set(slice_db, 200, seed=22)
    packets = fuzz_packets(valid, TCP_PACKETS, SEED + 1)
    probe = _probe(slice_db)
    addr = fuzz_server.info.listen[0]
    rng = random.Random(SEED + 2)
    problems: list[str] = []
    for start_at in range(0, len(packets), BURST):
        burst = packets[start_at : start_at + BURST]
        stream = b"".join(struct.pack("!H", len(p)) + p for _, p in burst)
        stream += struct.pack("!H", len(probe)) + probe
        ids = {pkt[:2] for _, pkt in burst if len(pkt) >= 2}
        with tcp_connect(addr) as s:
            s.sendall(stream)
            buf = b""
            got_probe = False
            while not got_probe:
                try:
                    chunk = s.recv(65535)
                except (ConnectionResetError, TimeoutError):
                    chunk = b""
                if not chunk:
                    break  # the server may close a connection that sent junk
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    n = int.from_bytes(buf[:2], "big")
                    reply, buf = buf[2 : 2 + n], buf[2 + n :]
                    if reply[:2] == probe[:2]:
                        got_probe = True
                        break
                    _check_reply(reply, ids, problems, f"seed {SEED} tcp burst {start_at}")
    # raw streams: random bytes, lengths that lie, a length with no body
    for _ in range(100):
        with tcp_connect(addr) as s:
            junk = rng.choice(
                [
                    rng.randbytes(rng.randrange(1, 200)),
                    b"\xff\xff" + rng.randbytes(100),
                    b"\x00\x00",
                    b"\x00",
                    b"\x00\x0c" + rng.randbytes(5),
                ]
            )
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(3)
                while s.recv(65535):
                    pass
            except (ConnectionResetError, TimeoutError, BrokenPipeError):
                pass
    assert not problems, "\n".join(problems[:20])
    _still_healthy(fuzz_server, slice_db)


def _still_healthy(srv, slice_db) -> None:
    local = responder_class()(slice_db, axfr_allowed=lambda a: True)
    addr = srv.info.listen[0]
    for wire in query_set(slice_db, 30, seed=23):
        assert same(udp_ask(addr, wire), local.respond(wire, tcp=False, client=addr))
    with tcp_connect(addr) as s:
        wire = query_set(slice_db, 1, seed=24)[0]
        s.sendall(struct.pack("!H", len(wire)) + wire)
        n = int.from_bytes(s.recv(2), "big")
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        assert same(body, local.respond(wire, tcp=True, client=addr))
    stats = fresh_stats(srv.info.stats_path, time.time())
    assert {w["pid"] for w in stats["workers"]} == set(srv.info.pids), "a worker was replaced"
    for pid in [srv.pid, *srv.info.pids]:
        os.kill(pid, 0)
    assert stats["total"]["server"]["errors"] == 0, "the Responder raised on some packet"
    assert stats["total"]["responder"].get("SERVFAIL", 0) == 0, (
        "some packet made the Responder fail"
    )
