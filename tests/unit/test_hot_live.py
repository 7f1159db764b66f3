"""Live query counts (zoneslice.hot.live): sampling in the worker, publishing, reading back."""

from __future__ import annotations

import os
import pickle
import time

import dns.message
import pytest

from tests.example import EXAMPLE_ZONE
from zoneslice.engine.query import Responder
from zoneslice.hot.live import PREFIX, CountingResponder, question_key, read_live_counts
from zoneslice.split import split_zone

ZONE = EXAMPLE_ZONE + """sub   NS   ns.sub
ns.sub A   192.0.2.53
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tmp_path_factory.mktemp("live")
    (d / "z.zone").write_text(ZONE)
    return split_zone(d / "z.zone", 1, d / "s").manifest.slice_path(0)


def q(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def test_question_key() -> None:
    assert question_key(q("WwW.Example.")) == (b"\x03www\x07example\x00", 1)
    assert question_key(q("example.", "SOA")) == (b"\x07example\x00", 6)
    wire = bytearray(q("www.example."))
    wire[2] |= 0x80  # a response
    assert question_key(bytes(wire)) is None
    wire[2] = 5 << 3  # UPDATE
    assert question_key(bytes(wire)) is None
    assert question_key(q("www.example.")[:-3]) is None  # type cut off
    assert question_key(b"\0" * 11) is None


def test_counting_responder_answers_as_the_engine_and_publishes(db, tmp_path) -> None:
    plain = Responder(db)
    counting = CountingResponder(Responder(db), tmp_path, sample=4, every=3600, half_life=3600)
    queries = [q("www.example.")] * 40 + [q("a.sub.example.", "AAAA")] * 20 + [q("example.", "NS")]
    for wire in queries:
        assert counting.respond(wire, tcp=False, client=("10.53.0.2", 53)) == plain.respond(
            wire, tcp=False, client=("10.53.0.2", 53)
        )
    assert counting.counters["queries"] == len(queries)  # the inner Responder's, passed through
    assert sum(counting.counts.values()) == len(queries) // 4
    counting.publish()
    f = tmp_path / f"{PREFIX}{os.getpid()}.pickle"
    assert f.exists()
    got = read_live_counts(tmp_path)
    assert got[(b"\x03www\x07example\x00", 1)] == 40
    assert got[(b"\x01a\x03sub\x07example\x00", 28)] == 20
    counting.close()
    assert not f.exists()


def test_counts_halve_each_half_life_and_stale_files_are_ignored(db, tmp_path) -> None:
    c = CountingResponder(Responder(db), tmp_path, sample=1, every=0.0, half_life=0.0)
    for _ in range(9):
        c.respond(q("www.example."), tcp=False)
    # every sampled query publishes (every=0) and halves: 1, then (0+1)... never above 2
    assert c.counts[(b"\x03www\x07example\x00", 1)] <= 2
    data = pickle.loads((tmp_path / f"{PREFIX}{os.getpid()}.pickle").read_bytes())
    data["time"] = time.time() - 60
    (tmp_path / f"{PREFIX}{os.getpid()}.pickle").write_bytes(pickle.dumps(data))
    assert read_live_counts(tmp_path, max_age=10) == {}
    with pytest.raises(ValueError):
        CountingResponder(Responder(db), tmp_path, sample=3)
