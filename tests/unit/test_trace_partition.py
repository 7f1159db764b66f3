"""The wire-name partitioner agrees with SlicePlan.slice_for, which the engine and split use."""

from __future__ import annotations

import random
from collections import Counter

import dns.name
import pytest

from zoneslice.slicing import SlicePlan
from zoneslice.trace.partition import Partitioner, partition
from zoneslice.trace.pcap import DnsRecord
from zoneslice.trace.wire import name_wire


def _names(rng: random.Random, origin: str, n: int) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    out = [origin, "com.", "org.", "example.net.", "."]
    for _ in range(n):
        labels = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
            for _ in range(rng.randint(1, 3))
        ]
        if rng.random() < 0.1:
            labels[-1] = rng.choice(["f", "n", "F", "N", "fa", "m\\255", "a\\000b"])
        out.append(".".join(labels) + "." + (origin if origin != "." else ""))
    return out


@pytest.mark.parametrize(
    ("origin", "bounds"),
    [("com.", ["", "f", "n"]), (".", ["", "m"]), ("example.co.uk.", ["", "b", "ba", "c"])],
)
def test_partitioner_matches_plan(origin, bounds) -> None:
    plan = SlicePlan.from_bounds_text(origin, bounds)
    part = Partitioner(plan)
    rng = random.Random(1)
    for text in _names(rng, origin, 3000):
        name = dns.name.from_text(text)
        assert part.slice_of(name_wire(text)) == plan.slice_for(name), text


def test_partition_files(tmp_path) -> None:
    plan = SlicePlan.from_bounds_text("com.", ["", "m"])
    q = [
        ("alpha.com.", 1),
        ("zeta.com.", 28),
        ("com.", 6),
        ("www.Mike.com.", 15),
        ("x.org.", 1),
    ]
    import struct

    recs = []
    for i, (name, qtype) in enumerate(q):
        wire = (
            struct.pack("!HHHHHH", i, 0, 1, 0, 0, 0)
            + dns.name.from_text(name).to_wire()
            + struct.pack("!HH", qtype, 1)
        )
        recs.append(DnsRecord(i, b"\1\2\3\4", b"\1\2\3\5", 999, 53, "udp", wire))
    recs.append(
        DnsRecord(
            9, b"\1\2\3\5", b"\1\2\3\4", 53, 999, "udp", b"\x00\x01\x80\x00" + recs[0].wire[4:]
        )
    )
    r = partition(recs, plan, tmp_path)
    assert r.counts == {0: 2, 1: 2}
    assert (tmp_path / "slice-0.queries").read_text() == "alpha.com. A\ncom. SOA\n"
    assert (tmp_path / "slice-1.queries").read_text() == "zeta.com. AAAA\nwww.mike.com. MX\n"
    assert r.skipped == Counter({"outside_zone": 1, "responses": 1})
