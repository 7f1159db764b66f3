"""Benchmark: DNS packets parsed per second by zoneslice.trace.pcap on one core.

Usage: python bench/bench_pcap.py [CAPTURE] [--packets N] [--format pcap|pcapng|gz|zst]
Without CAPTURE it writes a synthetic capture (UDP/IPv4 and IPv6 queries and
responses, some VLAN-tagged, some DNS over TCP) to a temporary file first.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rcode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoneslice.trace.pcap import CaptureReader, PcapWriter, ip_frame  # noqa: E402


def _templates(rng: random.Random, count: int) -> list[bytes]:
    """Distinct frames (queries and responses) that the capture repeats."""
    out = []
    tmp = io.BytesIO()
    w = PcapWriter(tmp)
    for i in range(count):
        q = dns.message.make_query(
            f"name{i}.example{i % 7}.com.", rng.choice(["A", "AAAA", "MX", "NS"])
        )
        q.id = rng.randrange(65536)
        wire = q.to_wire()
        v6 = i % 5 == 0
        src = rng.randbytes(16 if v6 else 4)
        dst = rng.randbytes(16 if v6 else 4)
        sport = rng.randrange(1024, 65535)
        udp = struct.pack("!HHHH", sport, 53, 8 + len(wire), 0) + wire
        frame = ip_frame(src, dst, 17, udp, 6)
        if i % 10 == 3:
            frame = frame[:12] + b"\x81\x00\x00\x0b" + frame[12:]
        out.append(frame)
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.NXDOMAIN if i % 3 == 0 else dns.rcode.NOERROR)
        rwire = r.to_wire()
        if i % 20 == 7:
            seg = struct.pack("!H", len(rwire)) + rwire
            tcp = struct.pack("!HHIIBBHHH", 53, sport, 1000 + i, 1, 0x50, 0x18, 65535, 0, 0) + seg
            out.append(ip_frame(dst, src, 6, tcp, 16))
        else:
            udp = struct.pack("!HHHH", 53, sport, 8 + len(rwire), 0) + rwire
            out.append(ip_frame(dst, src, 17, udp, 6))
    del w
    return out


def write_capture(path: Path, packets: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    frames = _templates(rng, 500)
    rec = struct.Struct("<IIII").pack
    with open(path, "wb") as f:
        PcapWriter(f)
        t = 1_700_000_000 * 1_000_000
        parts = []
        for i in range(packets):
            fr = frames[i % len(frames)]
            t += rng.randrange(1, 20)
            parts.append(rec(t // 1_000_000, t % 1_000_000, len(fr), len(fr)))
            parts.append(fr)
            if len(parts) > 20000:
                f.write(b"".join(parts))
                parts.clear()
        f.write(b"".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", help="capture to read (default: write a synthetic one)")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--format", choices=["pcap", "pcapng", "gz", "zst"], default="pcap")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.capture:
            path = Path(args.capture)
        else:
            path = Path(tmp) / "bench.pcap"
            t0 = time.perf_counter()
            write_capture(path, args.packets)
            if args.format == "pcapng":
                subprocess.run(
                    ["editcap", "-F", "pcapng", path, path.with_suffix(".pcapng")], check=True
                )
                path = path.with_suffix(".pcapng")
            elif args.format == "gz":
                subprocess.run(["gzip", "-1", "-k", path], check=True)
                path = path.with_suffix(".pcap.gz")
            elif args.format == "zst":
                subprocess.run(["zstd", "-q", "-1", path], check=True)
                path = path.with_suffix(".pcap.zst")
            print(
                f"wrote {path.name}: {os.path.getsize(path) / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s"
            )
        best = 0.0
        for _ in range(args.repeat):
            reader = CaptureReader(path)
            t0 = time.perf_counter()
            messages = sum(1 for _ in reader)
            dt = time.perf_counter() - t0
            pps = reader.stats["packets"] / dt
            best = max(best, pps)
            print(
                f"{reader.stats['packets']} packets, {messages} DNS messages in {dt:.2f} s: {pps:,.0f} packets/s"
            )
        print(f"best: {best:,.0f} packets/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
