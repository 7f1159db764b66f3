"""The XDP program attached for real: client and server namespaces joined by a veth.

The engine serves slice 0 in the server namespace; the program is attached to
the server's veth end (generic mode, and native mode with an XDP_PASS program
on the client end so XDP_TX frames reach it). Queries from the client namespace
(raw wire, dig, kdig) must get the engine's answers, the counters must show
that the hot ones were answered by XDP and the cold ones passed up, and leaving
the block must leave no program behind -- also when the test body fails.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from xdp_common import build_slice, engine_respond, require_bpf, same_answer

from tests.netns import netns, require_netns, veth
from zoneslice.engine.server import Background
from zoneslice.errors import XdpError
from zoneslice.hot import entries as E
from zoneslice.xdp import maps
from zoneslice.xdp.loader import HotPath, Options, in_netns

pytestmark = pytest.mark.root

SRV, CLI = "10.53.41.1", "10.53.41.2"

# Sends each hex-encoded query over UDP and prints the hex answers, one per line.
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for line in sys.stdin:
    q = bytes.fromhex(line.strip())
    s.sendto(q, (sys.argv[1], 53))
    while True:
        try:
            d, _ = s.recvfrom(65535)
        except TimeoutError:
            print("timeout", flush=True)
            break
        if d[:2] == q[:2]:
            print(d.hex(), flush=True)
            break
"""

PASS_PROG = """
#include <uapi/linux/bpf.h>
int pass_all(struct xdp_md *ctx) { return XDP_PASS; }
"""


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    return build_slice(tmp_path_factory.mktemp("xdp-live"), delegations=1000, sign=None)


@pytest.fixture(scope="module")
def prog():
    """One compiled program for the module; each test attaches and detaches it."""
    require_bpf()
    with HotPath() as hp:
        yield hp


def _xdp_attached(ns, ifname: str) -> bool:
    out = ns.run(["ip", "-j", "link", "show", "dev", ifname]).stdout
    return "xdp" in json.loads(out)[0]


def _ask(cli, queries: list[bytes]) -> list[bytes | None]:
    res = cli.run(
        [sys.executable, "-c", ASK, SRV],
        input="".join(q.hex() + "\n" for q in queries),
        timeout=120,
    )
    return [None if x == "timeout" else bytes.fromhex(x) for x in res.stdout.split()]


def _peer_pass_program(cli, ifname: str):
    """An XDP_PASS program on the client end (native veth XDP_TX needs one); bcc object returned."""
    from bcc import BPF

    b = BPF(text=PASS_PROG.encode())
    fn = b.load_func(b"pass_all", BPF.XDP)
    with in_netns(cli.name):
        BPF.attach_xdp(ifname.encode(), fn, 1 << 2)
    return b


@pytest.mark.parametrize("mode", ["generic", "native"])
def test_live_answers_from_xdp(zone, prog, mode):
    require_netns()
    respond = engine_respond(zone.slice_db)
    builder = E.EntryBuilder(respond)
    hot_cuts = zone.cuts[:40]
    ents = [e for c in hot_cuts for e in builder.delegation(c)]
    ents += builder.exact(zone.origin, 6) + builder.exact(zone.origin, 2)
    assert len(ents) >= 100
    rnd = random.Random(7)
    hot_q = []
    for i in range(60):
        c = hot_cuts[i % len(hot_cuts)]
        qn = E.mixed_case((b"\x03www" if i % 2 else b"") + c.to_wire(), rnd)
        hot_q.append(
            E.make_query(qn, rnd.choice([1, 28, 2]), maps.VARIANTS[i % 3], qid=i + 1, flags=0x0100)
        )
    cold_q = [
        E.make_query(c.to_wire(), 1, maps.V_EDNS, qid=1000 + i)
        for i, c in enumerate(zone.cuts[200:220])
    ]

    with (
        netns("xsrv") as srv,
        netns("xcli") as cli,
        veth(srv, cli, f"{SRV}/24", f"{CLI}/24", ethtool_off=("tx",)) as link,
    ):
        with in_netns(srv.name):
            server = Background(zone.slice_db, [(SRV, 53)], workers=1)
        peer = _peer_pass_program(cli, link.b_if) if mode == "native" else None
        try:
            hp = prog
            hp.invalidate()
            hp.opts = Options(cookie_flags=E.cookie_flags(respond, zone.origin.to_wire(), 6))
            with server:
                try:
                    hp.attach(link.a_if, mode=mode, netns=srv.name)
                    _live_checks(hp, srv, cli, link, mode, respond, ents, hot_cuts, hot_q, cold_q)
                finally:
                    hp.detach()
            assert not _xdp_attached(srv, link.a_if), "program left attached"
            assert server.exitcode == 0
        finally:
            if peer is not None:
                with in_netns(cli.name):
                    peer.remove_xdp(link.b_if.encode(), 1 << 2)
                peer.cleanup()


def _live_checks(hp, srv, cli, link, mode, respond, ents, hot_cuts, hot_q, cold_q) -> None:
    """Answers, counters, dig/kdig and invalidation while the program is attached."""
    assert hp.attached_mode == mode
    assert hp.attached_id() == hp.prog_id
    assert _xdp_attached(srv, link.a_if)
    hp.load(E.packed(ents))
    before = hp.counters()
    got = _ask(cli, hot_q + cold_q)
    after = hp.counters()
    for q, a in zip(hot_q + cold_q, got, strict=True):
        assert a is not None, "no answer"
        assert same_answer(a, respond(q, (CLI, 0))), q.hex()
    answered = sum(after[k] - before[k] for k in ("answered_exact", "answered_deleg"))
    assert answered == len(hot_q), (before, after)
    assert after["pass_miss"] - before["pass_miss"] == len(cold_q)

    cut = hot_cuts[0].to_text()
    dig = cli.run(
        ["dig", f"@{SRV}", f"www.{cut}", "A", "+norecurse", "+nocookie"], timeout=30
    ).stdout
    kdig = cli.run(["kdig", f"@{SRV}", cut, "NS", "+dnssec"], timeout=30).stdout
    assert "status: NOERROR" in dig and f"{cut}" in dig.split("AUTHORITY SECTION")[1]
    assert "NOERROR" in kdig and "AUTHORITY SECTION" in kdig
    final = hp.counters()
    assert final["answered_deleg"] - after["answered_deleg"] == 2

    # coherence: once invalidate() returns, the next query goes to the engine
    e = ents[0]
    assert hp.invalidate([(e.kind, e.key)]) == 1
    q = E.make_query(b"\x01x" + e.name.to_wire(), 1, e.variant, qid=4242)
    got = _ask(cli, [q])[0]
    assert got is not None and same_answer(got, respond(q, (CLI, 0)))
    assert hp.counters()["pass_miss"] == final["pass_miss"] + 1


def test_never_replaces_or_removes_a_foreign_program(prog):
    require_netns()
    with pytest.raises(XdpError, match="no interface"):
        prog.attach("zs-no-such-if0", mode="generic")
    with (
        netns("xfor") as a,
        netns("xforb") as b,
        veth(a, b, "10.53.42.1/24", "10.53.42.2/24") as link,
    ):
        foreign = _peer_pass_program(a, link.a_if)
        try:
            for mode in ("native", "generic", "auto"):
                with pytest.raises(XdpError, match="could not attach"):
                    prog.attach(link.a_if, mode=mode, netns=a.name)
                assert prog.attached_mode is None
                prog.detach()
                assert _xdp_attached(a, link.a_if), "someone else's program was removed"
        finally:
            with in_netns(a.name):
                foreign.remove_xdp(link.a_if.encode(), 1 << 2)
            foreign.cleanup()


def test_bpf_dir_and_ebpf_text_need_no_root():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from zoneslice.xdp.loader import program_text; print(program_text())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SEC(" not in out and "zs_hot_answer" in out
