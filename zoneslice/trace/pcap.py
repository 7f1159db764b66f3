"""Streaming capture reader: pcap/pcapng (plain or compressed) -> DNS messages.

Root-server captures run to many GB, so the reader works on large chunks with
``struct.unpack_from`` and never holds more than one chunk, a bounded set of
IP fragments and a bounded set of TCP flows. Anything it cannot use (other
protocols, truncated or malformed packets, lost TCP segments) is counted in
``CaptureReader.stats`` under a reason and skipped: one bad packet in a 48-hour
capture must not stop a run.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple

from zoneslice.errors import CaptureFormatError, TraceError

CHUNK = 1 << 20
MAX_FRAME = 1 << 18
MAX_BLOCK = 1 << 24


class DnsRecord(NamedTuple):
    """One DNS message seen in a capture; addresses are raw (4 or 16 bytes)."""

    ts_ns: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    transport: str
    wire: bytes

    @property
    def ts(self) -> float:
        return self.ts_ns / 1e9

    @property
    def src_text(self) -> str:
        return addr_text(self.src)

    @property
    def dst_text(self) -> str:
        return addr_text(self.dst)


_new = tuple.__new__


def addr_text(addr: bytes) -> str:
    """Presentation form of a raw IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


# ---------------------------------------------------------------- opening

_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BZ2 = b"BZh"


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def _rewind(f: IO[bytes], head: bytes) -> IO[bytes]:
    if f.seekable():
        f.seek(f.tell() - len(head))
        return f
    return io.BufferedReader(_Prefixed(head, f))


def open_capture(source: str | os.PathLike[str] | IO[bytes]) -> IO[bytes]:
    """Open a capture, undoing gzip/xz/zstd/bzip2 compression found by magic bytes."""
    if isinstance(source, str | os.PathLike):
        try:
            f: IO[bytes] = open(source, "rb")  # noqa: SIM115
        except OSError as e:
            raise TraceError(f"{source}: {e.strerror}") from e
    else:
        f = source
    head = f.read(6)
    f = _rewind(f, head)
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if head.startswith(_XZ):
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    if head.startswith(_ZSTD):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=True)
    if head.startswith(_BZ2):
        return bz2.BZ2File(f)  # type: ignore[return-value]
    return f


class _Chunks:
    """Refillable window over a stream: ``buf[pos:]`` are the unread bytes."""

    __slots__ = ("read", "buf", "pos", "eof")

    def __init__(self, f: IO[bytes], head: bytes = b"") -> None:
        self.read = getattr(f, "read1", f.read)
        self.buf = head
        self.pos = 0
        self.eof = False

    def fill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``pos``; False at end of stream."""
        have = len(self.buf) - self.pos
        if have >= need:
            return True
        parts = [self.buf[self.pos :]]
        while have < need and not self.eof:
            data = self.read(max(CHUNK, need - have))
            if not data:
                self.eof = True
                break
            parts.append(data)
            have += len(data)
        self.buf = b"".join(parts)
        self.pos = 0
        return have >= need


# ---------------------------------------------------------------- link layers

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_TYPES = frozenset({LINKTYPE_RAW, 12, 14})
_VLAN = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_AF_INET6 = frozenset({24, 28, 30})
_IPV6_EXT = frozenset({0, 43, 60, 135, 139, 140, 253, 254})

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_ip4 = struct.Struct("!2xHHHxB").unpack_from
_ip6 = struct.Struct("!4xHB").unpack_from
_udp = struct.Struct("!HHH").unpack_from
_tcp = struct.Struct("!HHI4xH").unpack_from
_frag6 = struct.Struct("!BxHI").unpack_from

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04


# ---------------------------------------------------------------- IP fragments


class _Datagram:
    __slots__ = ("first", "parts", "total", "size")

    def __init__(self, first: int) -> None:
        self.first = first
        self.parts: list[tuple[int, bytes]] = []
        self.total: int | None = None
        self.size = 0


class FragmentReassembler:
    """Rebuilds IPv4/IPv6 datagrams from fragments, with bounded memory.

    At most ``max_datagrams`` are pending (the oldest is dropped first); a
    datagram still incomplete ``timeout_ns`` after its first fragment is
    dropped. Drops are counted in ``stats``.
    """

    def __init__(
        self, stats: Counter[str], max_datagrams: int = 4096, timeout_ns: int = 30_000_000_000
    ) -> None:
        self.stats = stats
        self.max_datagrams = max_datagrams
        self.timeout_ns = timeout_ns
        self.pending: dict[tuple[Any, ...], _Datagram] = {}

    def add(
        self, key: tuple[Any, ...], ts: int, offset: int, more: bool, data: bytes
    ) -> bytes | None:
        """Take one fragment; the whole datagram's payload once it is complete."""
        stats = self.stats
        stats["ip_fragments"] += 1
        pending = self.pending
        d = pending.get(key)
        if d is None:
            self._expire(ts)
            if len(pending) >= self.max_datagrams:
                del pending[next(iter(pending))]
                stats["frag_evicted"] += 1
            d = pending[key] = _Datagram(ts)
        end = offset + len(data)
        if end > 65535 or (d.total is not None and end > d.total) or (not more and d.size > end):
            del pending[key]
            stats["frag_bad"] += 1
            return None
        d.parts.append((offset, data))
        d.size = max(d.size, end)
        if not more:
            d.total = end
        if d.total is None:
            return None
        d.parts.sort(key=lambda p: p[0])
        covered = 0
        for o, chunk in d.parts:
            if o > covered:
                return None
            covered = max(covered, o + len(chunk))
        if covered < d.total:
            return None
        del pending[key]
        out = bytearray(d.total)
        for o, chunk in d.parts:
            out[o : o + len(chunk)] = chunk
        stats["ip_reassembled"] += 1
        return bytes(out)

    def _expire(self, ts: int) -> None:
        pending = self.pending
        limit = ts - self.timeout_ns
        while pending:
            key = next(iter(pending))
            if pending[key].first >= limit:
                break
            del pending[key]
            self.stats["frag_timeout"] += 1

    def finish(self) -> None:
        if self.pending:
            self.stats["frag_incomplete"] += len(self.pending)
            self.pending.clear()


# ---------------------------------------------------------------- TCP streams


class _Flow:
    __slots__ = ("next", "buf", "pending", "last", "resync")

    def __init__(self, nxt: int, ts: int, resync: bool) -> None:
        self.next = nxt
        self.buf = bytearray()
        self.pending: dict[int, bytes] = {}
        self.last = ts
        self.resync = resync


def _plausible(data: bytes | bytearray) -> bool:
    """Does ``data`` look like the start of a length-framed DNS message?"""
    if len(data) < 2:
        return False
    length = data[0] << 8 | data[1]
    if length < 12:
        return False
    return len(data) < 8 or (data[6] << 8 | data[7]) <= 1


class TcpReassembler:
    """Per-direction DNS-over-TCP stream reassembly (RFC 1035 §4.2.2 framing).

    Out-of-order segments wait in a small per-flow queue; when more than
    ``max_pending`` are waiting, the missing segment is declared lost: the
    flow's partial message is dropped (``tcp_gap``) and the stream resyncs on
    the next segment that starts like a length-framed DNS message. Flows seen
    without their SYN start in that resync state too.
    """

    def __init__(
        self,
        stats: Counter[str],
        max_flows: int = 65536,
        idle_ns: int = 120_000_000_000,
        max_pending: int = 16,
    ) -> None:
        self.stats = stats
        self.max_flows = max_flows
        self.idle_ns = idle_ns
        self.max_pending = max_pending
        self.flows: dict[tuple[Any, ...], _Flow] = {}

    def segment(
        self, key: tuple[Any, ...], ts: int, seq: int, flags: int, data: bytes
    ) -> list[bytes]:
        """Take one segment; the DNS messages it completes."""
        flows = self.flows
        stats = self.stats
        flow = flows.pop(key, None)
        if flags & TCP_RST:
            if flow is not None and (flow.buf or flow.pending):
                stats["tcp_partial_dropped"] += 1
            return []
        if flags & TCP_SYN:
            if flow is not None and (flow.buf or flow.pending):
                stats["tcp_partial_dropped"] += 1
            seq = (seq + 1) & 0xFFFFFFFF
            flow = _Flow(seq, ts, False)
        elif flow is None:
            if not data:
                return []
            stats["tcp_midstream"] += 1
            flow = _Flow(seq, ts, True)
        out: list[bytes] = []
        if data:
            self._take(flow, seq, data, out)
        if flags & TCP_FIN:
            if flow.buf or flow.pending:
                stats["tcp_partial_dropped"] += 1
            return out
        flow.last = ts
        if len(flows) >= self.max_flows:
            old = flows.pop(next(iter(flows)))
            stats["tcp_flows_evicted"] += 1
            if old.buf or old.pending:
                stats["tcp_partial_dropped"] += 1
        flows[key] = flow
        self._expire(ts)
        return out

    def _take(self, flow: _Flow, seq: int, data: bytes, out: list[bytes]) -> None:
        rel = (seq - flow.next) & 0xFFFFFFFF
        if rel >= 0x80000000:
            rel -= 0x100000000
        if rel > 0:
            flow.pending[seq] = data
            if len(flow.pending) <= self.max_pending:
                return
            self.stats["tcp_gap"] += 1
            flow.buf.clear()
            flow.resync = True
            flow.next = min(flow.pending, key=lambda s: (s - flow.next) & 0xFFFFFFFF)
            data = flow.pending.pop(flow.next)
        elif rel < 0:
            if rel + len(data) <= 0:
                self.stats["tcp_duplicate"] += 1
                return
            data = data[-rel:]
        self._append(flow, data, out)
        while flow.pending:
            nxt = flow.pending.pop(flow.next, None)
            if nxt is None:
                self._trim_pending(flow)
                if flow.next not in flow.pending:
                    break
                continue
            self._append(flow, nxt, out)

    def _trim_pending(self, flow: _Flow) -> None:
        """Use queued segments that overlap the expected sequence number."""
        for s in list(flow.pending):
            rel = (s - flow.next) & 0xFFFFFFFF
            if rel >= 0x80000000:
                d = flow.pending.pop(s)
                over = 0x100000000 - rel
                if over < len(d):
                    flow.pending[flow.next] = d[over:]
                else:
                    self.stats["tcp_duplicate"] += 1

    def _append(self, flow: _Flow, data: bytes, out: list[bytes]) -> None:
        flow.next = (flow.next + len(data)) & 0xFFFFFFFF
        buf = flow.buf
        if flow.resync:
            if not _plausible(data):
                self.stats["tcp_resync_skipped"] += 1
                return
            flow.resync = False
        if not buf:
            n = len(data)
            if n >= 2 and (data[0] << 8 | data[1]) == n - 2:
                out.append(data[2:])
                return
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            length = buf[pos] << 8 | buf[pos + 1]
            if n - pos - 2 < length:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]

    def _expire(self, ts: int) -> None:
        flows = self.flows
        limit = ts - self.idle_ns
        while flows:
            key = next(iter(flows))
            flow = flows[key]
            if flow.last >= limit:
                break
            del flows[key]
            if flow.buf or flow.pending:
                self.stats["tcp_partial_dropped"] += 1

    def finish(self) -> None:
        for flow in self.flows.values():
            if flow.buf or flow.pending:
                self.stats["tcp_partial_dropped"] += 1
        self.flows.clear()


# ---------------------------------------------------------------- the decoder

Decoded = DnsRecord | list[DnsRecord] | None


class _Decoder:
    """Frame bytes -> DNS records; counts what it skips in ``stats``."""

    def __init__(
        self,
        stats: Counter[str],
        ports: Iterable[int],
        frags: FragmentReassembler,
        tcp: TcpReassembler,
    ) -> None:
        self.stats = stats
        self.ports = frozenset(ports)
        self.frags = frags
        self.tcp = tcp

    def frame(self, lt: int, ts: int, buf: bytes, start: int, end: int) -> Decoded:
        if lt == LINKTYPE_ETHERNET:
            off = start + 14
            if off > end:
                self.stats["truncated"] += 1
                return None
            et = buf[start + 12] << 8 | buf[start + 13]
            if et == 0x0800:
                return self.ipv4(ts, buf, off, end)
            while et in _VLAN:
                off += 4
                if off > end:
                    self.stats["truncated"] += 1
                    return None
                et = buf[off - 2] << 8 | buf[off - 1]
        elif lt in _RAW_TYPES or lt == LINKTYPE_IPV4 or lt == LINKTYPE_IPV6:
            if start >= end:
                self.stats["truncated"] += 1
                return None
            off = start
            v = buf[start] >> 4
            et = 0x0800 if v == 4 else 0x86DD if v == 6 else -1
        elif lt == LINKTYPE_LINUX_SLL2:
            off = start + 20
            if off > end:
                self.stats["truncated"] += 1
                return None
            et = buf[start] << 8 | buf[start + 1]
        elif lt == LINKTYPE_LINUX_SLL:
            off = start + 16
            if off > end:
                self.stats["truncated"] += 1
                return None
            et = buf[start + 14] << 8 | buf[start + 15]
        elif lt == LINKTYPE_NULL or lt == LINKTYPE_LOOP:
            off = start + 4
            if off > end:
                self.stats["truncated"] += 1
                return None
            fam = buf[start] | buf[start + 3]
            et = 0x0800 if fam == 2 else 0x86DD if fam in _AF_INET6 else -1
        else:
            self.stats["unsupported_linktype"] += 1
            return None
        if et == 0x0800:
            return self.ipv4(ts, buf, off, end)
        if et == 0x86DD:
            return self.ipv6(ts, buf, off, end)
        self.stats["not_ip"] += 1
        return None

    def ipv4(self, ts: int, buf: bytes, off: int, end: int) -> Decoded:
        if off + 20 > end:
            self.stats["truncated"] += 1
            return None
        vihl = buf[off]
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < 20:
            self.stats["bad_ip"] += 1
            return None
        tl, ident, frag, proto = _ip4(buf, off)
        ip_end = off + tl
        if ip_end > end:
            self.stats["truncated"] += 1
            return None
        l4 = off + ihl
        if tl < ihl:
            self.stats["bad_ip"] += 1
            return None
        if frag & 0x3FFF:
            src = buf[off + 12 : off + 16]
            dst = buf[off + 16 : off + 20]
            whole = self.frags.add(
                (src, dst, ident, proto),
                ts,
                (frag & 0x1FFF) << 3,
                bool(frag & 0x2000),
                buf[l4:ip_end],
            )
            if whole is None:
                return None
            return self.l4(ts, proto, src, dst, whole, 0, len(whole))
        if proto == 17:
            if l4 + 8 > ip_end:
                self.stats["truncated"] += 1
                return None
            sport, dport, ulen = _udp(buf, l4)
            ports = self.ports
            if sport not in ports and dport not in ports:
                self.stats["not_dns"] += 1
                return None
            if ulen < 20 or l4 + ulen > ip_end:
                return self.bad_udp(ulen, l4, ip_end)
            return _new(
                DnsRecord,
                (
                    ts,
                    buf[off + 12 : off + 16],
                    buf[off + 16 : off + 20],
                    sport,
                    dport,
                    "udp",
                    buf[l4 + 8 : l4 + ulen],
                ),
            )
        return self.l4(
            ts, proto, buf[off + 12 : off + 16], buf[off + 16 : off + 20], buf, l4, ip_end
        )

    def bad_udp(self, ulen: int, l4: int, ip_end: int) -> None:
        if ulen < 8:
            self.stats["bad_udp"] += 1
        elif ulen < 20:
            self.stats["short_dns"] += 1
        else:
            self.stats["truncated"] += 1

    def ipv6(self, ts: int, buf: bytes, off: int, end: int) -> Decoded:
        if off + 40 > end:
            self.stats["truncated"] += 1
            return None
        if buf[off] >> 4 != 6:
            self.stats["bad_ip"] += 1
            return None
        plen, nh = _ip6(buf, off)
        p = off + 40
        ip_end = p + plen
        if plen == 0 or ip_end > end:
            self.stats["truncated" if plen else "ipv6_jumbo"] += 1
            return None
        src = buf[off + 8 : off + 24]
        dst = buf[off + 24 : off + 40]
        while nh in _IPV6_EXT or nh == 44 or nh == 51:
            if p + 8 > ip_end:
                self.stats["truncated"] += 1
                return None
            if nh == 44:
                fnh, offflag, ident = _frag6(buf, p)
                p += 8
                if offflag & 0xFFF9:
                    whole = self.frags.add(
                        (src, dst, ident), ts, offflag & 0xFFF8, bool(offflag & 1), buf[p:ip_end]
                    )
                    if whole is None:
                        return None
                    return self.l4(ts, fnh, src, dst, whole, 0, len(whole))
                nh = fnh
                continue
            step = (buf[p + 1] + 2) * 4 if nh == 51 else (buf[p + 1] + 1) * 8
            nh = buf[p]
            p += step
        if p > ip_end:
            self.stats["truncated"] += 1
            return None
        return self.l4(ts, nh, src, dst, buf, p, ip_end)

    def l4(
        self, ts: int, proto: int, src: bytes, dst: bytes, buf: bytes, p: int, end: int
    ) -> Decoded:
        if proto == 17:
            if p + 8 > end:
                self.stats["truncated"] += 1
                return None
            sport, dport, ulen = _udp(buf, p)
            if sport not in self.ports and dport not in self.ports:
                self.stats["not_dns"] += 1
                return None
            if ulen == 0 and end - p > 65535 - 8:
                ulen = end - p
            if ulen < 20 or p + ulen > end:
                return self.bad_udp(ulen, p, end)
            return _new(DnsRecord, (ts, src, dst, sport, dport, "udp", buf[p + 8 : p + ulen]))
        if proto == 6:
            if p + 20 > end:
                self.stats["truncated"] += 1
                return None
            sport, dport, seq, offflags = _tcp(buf, p)
            if sport not in self.ports and dport not in self.ports:
                self.stats["not_dns"] += 1
                return None
            doff = (offflags >> 12) << 2
            if doff < 20 or p + doff > end:
                self.stats["bad_tcp"] += 1
                return None
            msgs = self.tcp.segment(
                (src, dst, sport, dport), ts, seq, offflags & 0x3F, buf[p + doff : end]
            )
            if not msgs:
                return None
            out = []
            for m in msgs:
                if len(m) < 12:
                    self.stats["short_dns"] += 1
                else:
                    out.append(_new(DnsRecord, (ts, src, dst, sport, dport, "tcp", m)))
            return out
        self.stats["not_dns"] += 1
        return None


# ---------------------------------------------------------------- file formats

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

FrameSink = Callable[[int, int, bytes, int, int], Any]


def _pcap_frames(src: _Chunks, sink: FrameSink, stats: Counter[str]) -> Iterator[Any]:
    if not src.fill(24):
        raise CaptureFormatError("capture ends inside the pcap file header")
    endian, mult = _PCAP_MAGIC[src.buf[:4]]
    lt = struct.unpack_from(endian + "I", src.buf, 20)[0] & 0xFFFF
    src.pos = 24
    hdr = struct.Struct(endian + "IIII").unpack_from
    fill = src.fill
    packets = 0
    try:
        while True:
            buf = src.buf
            pos = src.pos
            n = len(buf)
            while pos + 16 <= n:
                sec, frac, incl, _orig = hdr(buf, pos)
                start = pos + 16
                end = start + incl
                if end > n:
                    break
                pos = end
                packets += 1
                r = sink(lt, sec * 1_000_000_000 + frac * mult, buf, start, end)
                if r is not None:
                    if r.__class__ is list:
                        yield from r
                    else:
                        yield r
            src.pos = pos
            if pos + 16 <= n:
                if incl > MAX_FRAME:
                    stats["corrupt_record"] += 1
                    return
                need = 16 + incl
            else:
                need = 16
            if not fill(need):
                if len(src.buf) > src.pos:
                    stats["truncated_file"] += 1
                return
    finally:
        stats["packets"] += packets


class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    mul: int
    div: int
    offset_ns: int


def _idb(body: bytes, e: str) -> _Interface:
    lt, snaplen = struct.unpack_from(e + "HxxI", body, 0)
    mul, div, offset = 1000, 1, 0
    p = 8
    while p + 4 <= len(body):
        code, olen = struct.unpack_from(e + "HH", body, p)
        value = body[p + 4 : p + 4 + olen]
        if code == 0:
            break
        if code == 9 and olen >= 1:
            r = value[0]
            if r & 0x80:
                mul, div = 1_000_000_000, 1 << (r & 0x7F)
            elif r <= 9:
                mul, div = 10 ** (9 - r), 1
            else:
                mul, div = 1, 10 ** (r - 9)
        elif code == 14 and olen >= 8:
            offset = struct.unpack_from(e + "q", value)[0] * 1_000_000_000
        p += 4 + ((olen + 3) & ~3)
    return _Interface(lt, snaplen, mul, div, offset)


def _pcapng_frames(src: _Chunks, sink: FrameSink, stats: Counter[str]) -> Iterator[Any]:
    e = "<"
    block = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    ifaces: list[_Interface] = []
    packets = 0
    fill = src.fill
    try:
        while True:
            buf, pos = src.buf, src.pos
            n = len(buf)
            while pos + 12 <= n:
                btype, blen = block(buf, pos)
                if btype == 6 and pos + blen <= n and blen >= 32:
                    iface, tsh, tsl, cap, _orig = epb(buf, pos + 8)
                    if iface >= len(ifaces) or cap > blen - 32:
                        stats["corrupt_record"] += 1
                        pos += blen
                        continue
                    i = ifaces[iface]
                    start = pos + 28
                    pos += blen
                    packets += 1
                    r = sink(
                        i.linktype,
                        ((tsh << 32 | tsl) * i.mul) // i.div + i.offset_ns,
                        buf,
                        start,
                        start + cap,
                    )
                    if r is not None:
                        if r.__class__ is list:
                            yield from r
                        else:
                            yield r
                    continue
                if buf[pos : pos + 4] == _PCAPNG_SHB:
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        e = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        e = ">"
                    else:
                        raise CaptureFormatError(
                            "pcapng section header with a bad byte-order magic"
                        )
                    block = struct.Struct(e + "II").unpack_from
                    epb = struct.Struct(e + "IIIII").unpack_from
                    ifaces = []
                    btype, blen = block(buf, pos)
                if blen < 12 or blen & 3 or blen > MAX_BLOCK:
                    stats["corrupt_record"] += 1
                    return
                if pos + blen > n:
                    break
                body = pos + 8
                pos += blen
                if btype == 1:
                    ifaces.append(_idb(buf[body : pos - 4], e))
                    continue
                if btype == 3:
                    if not ifaces:
                        stats["corrupt_record"] += 1
                        continue
                    i = ifaces[0]
                    orig = struct.unpack_from(e + "I", buf, body)[0]
                    cap = min(orig, blen - 16, i.snaplen or orig)
                    start = body + 4
                    ts = 0
                elif btype == 2:
                    iface, tsh, tsl, cap, _orig = struct.unpack_from(e + "HxxIIII", buf, body)
                    start = body + 20
                    if iface >= len(ifaces) or cap > blen - 32:
                        stats["corrupt_record"] += 1
                        continue
                    i = ifaces[iface]
                    ts = ((tsh << 32 | tsl) * i.mul) // i.div + i.offset_ns
                else:
                    continue
                packets += 1
                r = sink(i.linktype, ts, buf, start, start + cap)
                if r is not None:
                    if r.__class__ is list:
                        yield from r
                    else:
                        yield r
            src.pos = pos
            need = blen if pos + 12 <= n and 12 <= blen <= MAX_BLOCK else 12
            if not fill(need):
                if len(src.buf) > src.pos:
                    stats["truncated_file"] += 1
                return
    finally:
        stats["packets"] += packets


def _frames(f: IO[bytes], sink: FrameSink, stats: Counter[str]) -> Iterator[Any]:
    src = _Chunks(f)
    if not src.fill(4):
        raise CaptureFormatError("capture is empty")
    magic = src.buf[:4]
    if magic in _PCAP_MAGIC:
        return _pcap_frames(src, sink, stats)
    if magic == _PCAPNG_SHB:
        return _pcapng_frames(src, sink, stats)
    raise CaptureFormatError(f"not a pcap or pcapng capture (magic {magic.hex()})")


# ---------------------------------------------------------------- public API


class Frame(NamedTuple):
    ts_ns: int
    linktype: int
    data: bytes


class CaptureReader:
    """Iterate the DNS messages of one capture (a path or a binary file object).

    ``stats`` counts packets read, records produced and every reason a packet
    was skipped; it is complete once iteration has finished.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        ports: Iterable[int] = (53,),
        max_fragments: int = 4096,
        fragment_timeout: float = 30.0,
        max_flows: int = 65536,
        flow_idle: float = 120.0,
    ) -> None:
        self.source = source
        self.stats: Counter[str] = Counter()
        self.error: str | None = None
        self._ports = tuple(ports)
        self._frag_args = (max_fragments, int(fragment_timeout * 1e9))
        self._tcp_args = (max_flows, int(flow_idle * 1e9))

    def __iter__(self) -> Iterator[DnsRecord]:
        stats = self.stats
        frags = FragmentReassembler(stats, *self._frag_args)
        tcp = TcpReassembler(stats, *self._tcp_args)
        dec = _Decoder(stats, self._ports, frags, tcp)
        f = open_capture(self.source)
        try:
            n_udp = n_tcp = 0
            for r in _frames(f, dec.frame, stats):
                if r.transport == "udp":
                    n_udp += 1
                else:
                    n_tcp += 1
                yield r
        except (EOFError, OSError, lzma.LZMAError) as e:
            stats["truncated_file"] += 1
            stats["read_error"] += 1
            self.error = str(e)
        finally:
            stats["dns_udp"] += n_udp
            stats["dns_tcp"] += n_tcp
            frags.finish()
            tcp.finish()
            if f is not self.source:
                f.close()

    def frames(self) -> Iterator[Frame]:
        """The raw link-layer frames, for tools and tests."""
        f = open_capture(self.source)
        try:
            yield from _frames(f, lambda lt, ts, b, s, e: Frame(ts, lt, b[s:e]), self.stats)
        finally:
            if f is not self.source:
                f.close()


def read_dns(source: str | os.PathLike[str] | IO[bytes], **kw: Any) -> CaptureReader:
    """Shorthand for :class:`CaptureReader`."""
    return CaptureReader(source, **kw)


# ---------------------------------------------------------------- writing


def _csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    return ~s & 0xFFFF


class PcapWriter:
    """Writes DNS messages as Ethernet/IP/UDP|TCP frames to a classic pcap (µs or ns)."""

    def __init__(self, f: IO[bytes], *, nanosecond: bool = False, snaplen: int = 65535) -> None:
        self.f = f
        self.nano = nanosecond
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self._rec = struct.Struct("<IIII").pack
        self._ip_id = 0

    def write_frame(self, ts_ns: int, frame: bytes) -> None:
        sec, rest = divmod(ts_ns, 1_000_000_000)
        frac = rest if self.nano else rest // 1000
        self.f.write(self._rec(sec, frac, len(frame), len(frame)) + frame)

    def write_dns(
        self,
        ts_ns: int,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        wire: bytes,
        *,
        tcp: bool = False,
        seq: int = 1,
    ) -> None:
        """One DNS message; over TCP it is one length-framed PSH/ACK segment at ``seq``."""
        if tcp:
            payload = struct.pack("!H", len(wire)) + wire
            l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 0x50, 0x18, 65535, 0, 0) + payload
            proto = 6
            cs_at = 16
        else:
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(wire), 0) + wire
            proto = 17
            cs_at = 6
        self.write_frame(ts_ns, ip_frame(src, dst, proto, l4, cs_at, self._next_id()))

    def _next_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id


def ip_frame(src: bytes, dst: bytes, proto: int, l4: bytes, cs_at: int, ident: int = 0) -> bytes:
    """An Ethernet frame carrying ``l4`` over IPv4 or IPv6, with correct checksums."""
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
    cs = _csum(pseudo + l4)
    l4 = l4[:cs_at] + struct.pack("!H", cs) + l4[cs_at + 2 :]
    if len(src) == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0, src, dst
        )
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + hdr + l4
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd" + hdr + l4
