"""Ethernet/IP/UDP frames as bytes: build queries, take replies apart and check them.

For BPF_PROG_TEST_RUN (tests, per-packet cost in the benchmark): the frame the
program sees and the frame it sends back, with every length and checksum
checked, so a test can say "this XDP_TX is a well-formed reply to that frame".
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from zoneslice.xdp.maps import ones_sum

ETH_IP = 0x0800
ETH_IP6 = 0x86DD
ETH_VLAN = 0x8100

CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")


def _csum(data: bytes) -> int:
    return (~ones_sum(data)) & 0xFFFF


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, 17, length)
    return src + dst + struct.pack("!IxxxB", length, 17)


def udp_frame(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    vlan: int | None = None,
    src_mac: bytes = CLIENT_MAC,
    dst_mac: bytes = SERVER_MAC,
    udp_csum: bool = True,
    ttl: int = 64,
) -> bytes:
    """An Ethernet frame carrying ``payload`` in UDP over IPv4 or IPv6 (by address family)."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    if udp_csum or len(s) == 16:
        c = _csum(_pseudo(s, d, ulen) + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    if len(s) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0x1234, 0x4000, ttl, 17, 0, s, d)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        et = ETH_IP
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, ulen, 17, ttl, s, d)
        et = ETH_IP6
    l2 = dst_mac + src_mac
    if vlan is not None:
        l2 += struct.pack("!HH", ETH_VLAN, vlan)
    return l2 + struct.pack("!H", et) + ip + udp


@dataclass
class Udp:
    """A parsed UDP frame; ``problems`` lists every length or checksum that is wrong."""

    dst_mac: bytes
    src_mac: bytes
    vlans: list[int]
    version: int
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    ttl: int
    problems: list[str]


def parse_udp(frame: bytes) -> Udp | None:
    """Take an Ethernet/IP/UDP frame apart (None: not one); padding after IP is ignored."""
    if len(frame) < 14:
        return None
    dmac, smac = frame[:6], frame[6:12]
    (et,) = struct.unpack_from("!H", frame, 12)
    off = 14
    vlans = []
    while et in (ETH_VLAN, 0x88A8) and len(frame) >= off + 4:
        tci, et = struct.unpack_from("!HH", frame, off)
        vlans.append(tci)
        off += 4
    problems: list[str] = []
    if et == ETH_IP and len(frame) >= off + 20:
        vihl, _, tot, _, frag, ttl, proto, _ = struct.unpack_from("!BBHHHBBH", frame, off)
        if vihl != 0x45 or proto != 17:
            return None
        if ones_sum(frame[off : off + 20]) != 0xFFFF:
            problems.append("bad IPv4 header checksum")
        if frag & 0x3FFF:
            problems.append("fragment")
        s, d = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
        ip_end = off + tot
        off += 20
        version = 4
    elif et == ETH_IP6 and len(frame) >= off + 40:
        _, plen, nh, ttl = struct.unpack_from("!IHBB", frame, off)
        if nh != 17:
            return None
        s, d = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
        ip_end = off + 40 + plen
        off += 40
        version = 6
    else:
        return None
    if ip_end > len(frame):
        problems.append("IP length beyond the frame")
        ip_end = len(frame)
    if off + 8 > ip_end:
        return None
    sport, dport, ulen, ucs = struct.unpack_from("!HHHH", frame, off)
    if off + ulen != ip_end:
        problems.append(f"UDP length {ulen} != IP payload {ip_end - off}")
    udp = frame[off:ip_end]
    if ucs == 0 and version == 6:
        problems.append("zero UDP checksum over IPv6")
    elif ucs != 0 and ones_sum(_pseudo(s, d, len(udp)) + udp) != 0xFFFF:
        problems.append("bad UDP checksum")
    return Udp(
        dmac,
        smac,
        vlans,
        version,
        str(ipaddress.ip_address(s)),
        str(ipaddress.ip_address(d)),
        sport,
        dport,
        udp[8:],
        ttl,
        problems,
    )


def reply_problems(query: Udp, reply: Udp) -> list[str]:
    """What is wrong with ``reply`` as the L2-L4 answer to ``query`` (empty: nothing)."""
    p = list(reply.problems)
    if (reply.dst_mac, reply.src_mac) != (query.src_mac, query.dst_mac):
        p.append("MAC addresses not swapped")
    if reply.vlans != query.vlans:
        p.append("VLAN tags changed")
    if reply.version != query.version:
        p.append("IP version changed")
    if (reply.src, reply.dst) != (query.dst, query.src):
        p.append("IP addresses not swapped")
    if (reply.sport, reply.dport) != (query.dport, query.sport):
        p.append("ports not swapped")
    return p
