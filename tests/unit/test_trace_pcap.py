"""The capture reader against tshark on the real captures and on conversions of them."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
from collections import Counter
from pathlib import Path

import dns.message
import dns.rrset
import pytest
import zstandard

from zoneslice.errors import CaptureFormatError
from zoneslice.trace.pcap import (
    CaptureReader,
    PcapWriter,
    TcpReassembler,
    ip_frame,
)

PCAPS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "pcaps"
REAL = [
    "dns.pcap",
    "dns.pcap.gz",
    "dns6.pcap",
    "dnso1tcp.pcap",
    "dnsotcp-many1pkt.pcap",
    "dnspad.pcap",
    "edns.pcap",
    "ether_padd.pcap",
    "frags.pcap",
    "icmp.pcap",
    "ipv6-with-ethernet-padding.pcap",
    "sll2.pcap",
    "vlan11.pcap",
]

Msg = tuple[int, int, int, str]


def _ours(path: Path | bytes, **kw) -> tuple[list[Msg], Counter[str]]:
    reader = CaptureReader(path, **kw)
    out = []
    for r in reader:
        out.append(
            (r.ts_ns // 1000, struct.unpack("!H", r.wire[:2])[0], r.wire[2] >> 7, r.transport)
        )
    return sorted(out), reader.stats


def _tshark_start(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "dns",
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "frame.time_epoch",
            "-e",
            "dns.id",
            "-e",
            "dns.flags.response",
            "-e",
            "tcp.srcport",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _tshark_result(proc: subprocess.Popen[str]) -> list[Msg]:
    """tshark prints one line per frame; a TCP frame may carry several messages."""
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    msgs = []
    for line in out.splitlines():
        t, ids, qrs, tcp = line.split(";")
        sec, _, frac = t.partition(".")
        us = int(sec) * 1_000_000 + int((frac + "000000")[:6]) if t else 0
        for i, qr in zip(ids.split(","), qrs.split(","), strict=True):
            msgs.append((us, int(i, 16), int(qr), "tcp" if tcp else "udp"))
    return sorted(msgs)


def _tshark(path: Path) -> list[Msg]:
    return _tshark_result(_tshark_start(path))


# ---------------------------------------------------------------- converters


def _pcap_frames(path: Path) -> tuple[int, list[tuple[int, int, bytes]]]:
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    lt = struct.unpack_from("<I", data, 20)[0]
    frames, pos = [], 24
    while pos + 16 <= len(data):
        sec, us, incl, _ = struct.unpack_from("<IIII", data, pos)
        frames.append((sec, us, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return lt, frames


def _write_pcap(path: Path, lt: int, frames, *, big: bool = False, nano: bool = False) -> Path:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, lt))
        for sec, us, fr in frames:
            f.write(struct.pack(e + "IIII", sec, us * 1000 if nano else us, len(fr), len(fr)) + fr)
    return path


def _relink(frame: bytes, lt: int) -> bytes:
    """An Ethernet frame re-encapsulated for link type ``lt``."""
    et = frame[12:14]
    ip = frame[14:]
    if lt == 113:
        return struct.pack("!HHH8s", 0, 1, 6, b"\x02" * 6 + b"\0\0") + et + ip
    if lt == 276:
        return et + b"\0\0" + struct.pack("!IHBB8s", 2, 1, 0, 6, b"\x02" * 6 + b"\0\0") + ip
    if lt == 101:
        return ip
    if lt == 0:
        return struct.pack("<I", 2 if et == b"\x08\x00" else 24) + ip
    raise AssertionError(lt)


def _option(code: int, value: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes, e: str) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _write_pcapng(path: Path, sections, simple=()) -> Path:
    """``sections``: [(endian, [(linktype, tsresol), ...], [(iface, sec, us, frame)])]; ``simple``
    frames go into simple packet blocks (no timestamp) at the end of the last section."""
    with open(path, "wb") as f:
        for e, ifaces, packets in sections:
            f.write(_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e))
            for lt, res in ifaces:
                opts = _option(9, bytes([res]), e) + _option(0, b"", e)
                f.write(_block(1, struct.pack(e + "HHI", lt, 0, 65535) + opts, e))
            for iface, sec, us, fr in packets:
                res = ifaces[iface][1]
                if res & 0x80:
                    ticks = ((sec * 1_000_000 + us) << (res & 0x7F)) // 1_000_000
                else:
                    ticks = (sec * 1_000_000 + us) * 10**res // 1_000_000
                hdr = struct.pack(
                    e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(fr), len(fr)
                )
                f.write(_block(6, hdr + fr, e))
                f.write(_block(0x0BAD, b"custom", e))
        for fr in simple:
            f.write(_block(3, struct.pack(e + "I", len(fr)) + fr, e))
    return path


def _oddities(eth4, eth6) -> list[tuple[int, int, bytes]]:
    """IPv4 with options, QinQ tags, IPv6 with hop-by-hop and destination-options headers."""
    out = []
    for s, u, fr in eth4[:10]:
        if fr[12:14] != b"\x08\x00":
            continue
        ip = fr[14:]
        ihl = (ip[0] & 15) * 4
        opts = b"\x94\x04\x00\x00"
        tl = struct.unpack("!H", ip[2:4])[0] + 4
        hdr = (
            bytes([0x46]) + ip[1:2] + struct.pack("!H", tl) + ip[4:10] + b"\0\0" + ip[12:ihl] + opts
        )
        out.append((s, u, fr[:12] + b"\x08\x00" + hdr + ip[ihl:]))
        tags = b"\x88\xa8\x00\x05\x81\x00\x00\x0b"
        out.append((s, u + 1, fr[:12] + tags + fr[12:]))
    for s, u, fr in eth6:
        ip = fr[14:]
        nh, plen = ip[6], struct.unpack("!H", ip[4:6])[0]
        hbh = bytes([60, 0]) + b"\x01\x04\0\0\0\0"
        dst = bytes([nh, 0]) + b"\x01\x04\0\0\0\0"
        hdr = ip[:4] + struct.pack("!H", plen + 16) + bytes([0]) + ip[7:40]
        out.append((s, u, fr[:14] + hdr + hbh + dst + ip[40:]))
    return out


# ---------------------------------------------------------------- tshark agreement


@pytest.fixture(scope="module")
def derived(tmp_path_factory) -> dict[str, Path]:
    """Conversions of the real captures to the formats and link types they lack."""
    tmp = tmp_path_factory.mktemp("caps")
    _, eth4 = _pcap_frames(PCAPS / "dns.pcap")
    _, eth6 = _pcap_frames(PCAPS / "dns6.pcap")
    _, ethtcp = _pcap_frames(PCAPS / "dnsotcp-many1pkt.pcap")
    ip_frames = [f for f in eth4 + eth6 + ethtcp if f[2][12:14] in (b"\x08\x00", b"\x86\xdd")]
    out = {}
    for lt in (113, 276, 101, 0):
        frames = [(s, u, _relink(fr, lt)) for s, u, fr in ip_frames]
        out[f"linktype{lt}"] = _write_pcap(tmp / f"lt{lt}.pcap", lt, frames)
    out["big-endian-ns"] = _write_pcap(tmp / "be.pcap", 1, eth4, big=True, nano=True)
    _, frag = _pcap_frames(PCAPS / "frags.pcap")
    out["v6frag"] = _write_pcap(tmp / "v6frag.pcap", 1, _ipv6_fragmented())
    out["oddities"] = _write_pcap(tmp / "odd.pcap", 1, _oddities(eth4, eth6))
    packets = [(0, s, u, fr) for s, u, fr in eth4[:40]] + [(1, s, u, fr) for s, u, fr in frag[:60]]
    packets.sort(key=lambda p: (p[1], p[2]))
    out["pcapng"] = _write_pcapng(
        tmp / "multi.pcapng",
        [
            ("<", [(1, 9), (228, 6)], packets),
            (">", [(276, 0x80 | 20)], [(0, s, u, _relink(fr, 276)) for s, u, fr in eth4[40:70]]),
        ],
    )
    out["pcapng-spb"] = _write_pcapng(
        tmp / "spb.pcapng", [("<", [(1, 6)], [])], simple=[fr for _, _, fr in eth4[:20]]
    )
    return out


def _ipv6_fragmented() -> list[tuple[int, int, bytes]]:
    """A large IPv6 UDP response cut into fragments, sent out of order, plus its query."""
    q = dns.message.make_query("big.example.", "TXT")
    q.id = 0x4242
    r = dns.message.make_response(q)
    r.answer.append(
        dns.rrset.from_text(
            "big.example.", 60, "IN", "TXT", *[f'"{c * 200}"' for c in "abcdefghij"]
        )
    )
    src, dst = (
        bytes.fromhex("20010db8000000000000000000000001"),
        bytes.fromhex("20010db8000000000000000000000002"),
    )
    qwire, rwire = q.to_wire(), r.to_wire()
    qframe = ip_frame(src, dst, 17, struct.pack("!HHHH", 40000, 53, 8 + len(qwire), 0) + qwire, 6)
    full = ip_frame(dst, src, 17, struct.pack("!HHHH", 53, 40000, 8 + len(rwire), 0) + rwire, 6)
    udp = full[14 + 40 :]
    frames = [(1000, 0, qframe)]
    pieces = []
    for off in range(0, len(udp), 800):
        more = 1 if off + 800 < len(udp) else 0
        fh = struct.pack("!BBHI", 17, 0, off | more, 0xABCD)
        chunk = udp[off : off + 800]
        hdr = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(chunk), 44, 64, dst, src)
        pieces.append(full[:14] + hdr + fh + chunk)
    pieces[0], pieces[1] = pieces[1], pieces[0]
    frames += [(1000, 10 + i, p) for i, p in enumerate(pieces)]
    return frames


def test_real_captures_match_tshark(derived) -> None:
    paths = [PCAPS / n for n in REAL] + list(derived.values())
    procs = [(p, _tshark_start(p)) for p in paths]
    total = Counter()
    for path, proc in procs:
        theirs = _tshark_result(proc)
        ours, stats = _ours(path)
        assert ours == theirs, path.name
        assert stats["packets"] > 0
        for m in ours:
            total[m[3]] += 1
    assert total["udp"] > 300 and total["tcp"] >= 86


def test_counts_by_kind() -> None:
    _, stats = _ours(PCAPS / "dnso1tcp.pcap")
    assert stats["dns_tcp"] == 82 and stats["dns_udp"] == 0
    _, stats = _ours(PCAPS / "frags.pcap")
    assert stats["ip_reassembled"] == 82 and stats["ip_fragments"] == 495
    ours, stats = _ours(PCAPS / "dnsotcp-many1pkt.pcap")
    assert Counter(m[2] for m in ours) == {0: 3, 1: 1}
    _, stats = _ours(PCAPS / "icmp.pcap")
    assert stats["not_dns"] == 2 and stats["packets"] == 2


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "bz2"])
def test_compression_found_by_magic(tmp_path, kind) -> None:
    raw = (PCAPS / "dns.pcap").read_bytes()
    packed = {
        "gzip": gzip.compress,
        "xz": lzma.compress,
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b[:9000])
        + zstandard.ZstdCompressor().compress(b[9000:]),
        "bz2": bz2.compress,
    }[kind](raw)
    path = tmp_path / "capture.pcap"
    path.write_bytes(packed)
    assert _ours(path)[0] == _ours(PCAPS / "dns.pcap")[0]
    with open(path, "rb") as f:
        assert len(list(CaptureReader(f))) == 82


def test_truncated_and_garbage(tmp_path) -> None:
    raw = (PCAPS / "dns.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[:-30])
    ours, stats = _ours(cut)
    full, _ = _ours(PCAPS / "dns.pcap")
    assert ours == full[: len(ours)] and len(ours) >= 80 and stats["truncated_file"] == 1
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    with pytest.raises(CaptureFormatError):
        list(CaptureReader(junk))
    gzcut = tmp_path / "cut.pcap.gz"
    gzcut.write_bytes(gzip.compress(raw)[:-100])
    ours, stats = _ours(gzcut)
    assert 0 < len(ours) < 82 and stats["truncated_file"] >= 1


def test_bad_packets_are_counted_not_fatal(tmp_path) -> None:
    lt, frames = _pcap_frames(PCAPS / "dns.pcap")
    good = [f for f in frames if f[2][12:14] == b"\x08\x00" and f[2][23] == 17]
    s, u, fr = good[0]
    bad = [
        (s, u, fr[:20]),
        (s, u, fr[:14] + b"\x46" + fr[15:]),
        (s, u, fr[:14] + b"\x95" + fr[15:]),
        (s, u, fr[:-5]),
        (s, u, fr[:38] + b"\x00\x04" + fr[40:]),
        (s, u, fr[:12] + b"\x88\xcc" + fr[14:]),
    ]
    path = _write_pcap(tmp_path / "bad.pcap", lt, bad + good[:3])
    ours, stats = _ours(path)
    assert len(ours) == 3
    assert (
        stats["truncated"] >= 2
        and stats["bad_ip"] == 1
        and stats["not_ip"] == 1
        and stats["bad_udp"] == 1
    )


def test_fragment_buffers_are_bounded(tmp_path) -> None:
    frames = _ipv6_fragmented()
    first = frames[1]
    lonely = [
        (1000 + i, 0, first[2][:58] + struct.pack("!I", i) + first[2][62:]) for i in range(50)
    ]
    path = _write_pcap(tmp_path / "lonely.pcap", 1, lonely + [(2000, 0, frames[0][2])])
    reader = CaptureReader(path, max_fragments=10, fragment_timeout=5)
    assert len(list(reader)) == 1
    s = reader.stats
    assert s["frag_evicted"] + s["frag_timeout"] + s["frag_incomplete"] == 50
    assert s["frag_timeout"] > 0 and s["frag_incomplete"] <= 10


def test_writer_roundtrip_ns_and_tcp(tmp_path) -> None:
    path = tmp_path / "w.pcap"
    q = dns.message.make_query("a.example.", "A")
    with open(path, "wb") as f:
        w = PcapWriter(f, nanosecond=True)
        w.write_dns(
            1_700_000_000_123_456_789, b"\x0a\x35\0\1", b"\x0a\x35\0\2", 5353, 53, q.to_wire()
        )
        w.write_dns(
            1_700_000_001_000_000_001,
            b"\x20\x01" + bytes(14),
            b"\x20\x01" + bytes(13) + b"\1",
            999,
            53,
            q.to_wire(),
            tcp=True,
            seq=77,
        )
    recs = list(CaptureReader(path))
    assert [r.ts_ns for r in recs] == [1_700_000_000_123_456_789, 1_700_000_001_000_000_001]
    assert recs[0].src_text == "10.53.0.1" and recs[1].dst_text == "2001::1"
    assert [r.transport for r in recs] == ["udp", "tcp"]
    assert all(r.wire == q.to_wire() for r in recs)
    assert _tshark(path) == sorted((r.ts_ns // 1000, q.id, 0, r.transport) for r in recs)


# ---------------------------------------------------------------- TCP reassembly


def _framed(*msgs: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)


def _msgs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        q = dns.message.make_query(f"n{i}.example.", "A")
        q.id = i
        out.append(q.to_wire())
    return out


def test_tcp_split_and_batched() -> None:
    stats = Counter()
    tcp = TcpReassembler(stats)
    m = _msgs(4)
    stream = _framed(*m)
    key = ("c", "s", 1, 53)
    assert tcp.segment(key, 0, 99, 0x02, b"") == []
    got = []
    seq = 100
    for cut in (1, 2, 30, len(stream) - 33):
        got += tcp.segment(key, 1, seq, 0x18, stream[seq - 100 : seq - 100 + cut])
        seq += cut
    assert got == m and not stats


def test_tcp_out_of_order_duplicate_and_gap() -> None:
    stats = Counter()
    tcp = TcpReassembler(stats, max_pending=2)
    m = _msgs(8)
    segs = [_framed(x) for x in m]
    seqs = [1000]
    for s in segs:
        seqs.append(seqs[-1] + len(s))
    key = ("c", "s", 1, 53)
    out = tcp.segment(key, 0, 999, 0x02, b"")
    out += tcp.segment(key, 0, seqs[1], 0x18, segs[1])
    out += tcp.segment(key, 0, seqs[0], 0x18, segs[0])
    out += tcp.segment(key, 0, seqs[0], 0x18, segs[0])
    assert out == m[:2] and stats["tcp_duplicate"] == 1
    # segment 2 is lost for good: after max_pending later ones the flow resyncs
    half = len(segs[2]) // 2
    out = tcp.segment(key, 0, seqs[2] + half, 0x18, segs[2][half:])
    for i in (3, 4):
        out += tcp.segment(key, 0, seqs[i], 0x18, segs[i])
    assert stats["tcp_gap"] == 1 and stats["tcp_resync_skipped"] == 1
    assert out == m[3:5]
    out = tcp.segment(key, 0, seqs[5], 0x19, segs[5] + segs[6][:5])
    assert out == [m[5]] and stats["tcp_partial_dropped"] == 1 and not tcp.flows


def test_tcp_midstream_and_bounded_flows() -> None:
    stats = Counter()
    tcp = TcpReassembler(stats, max_flows=4, idle_ns=1000)
    m = _msgs(1)[0]
    for i in range(10):
        assert tcp.segment(("c", i), i, 5 + i, 0x18, _framed(m)[:4]) == []
    assert len(tcp.flows) <= 4 and stats["tcp_midstream"] == 10
    assert stats["tcp_partial_dropped"] >= 6
    tcp.segment(("c", 99), 10**6, 7, 0x18, b"\x00\x05junk")
    assert stats["tcp_resync_skipped"] == 1
