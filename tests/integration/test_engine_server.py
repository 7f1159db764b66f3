"""zoneslice.engine.server (and `zoneslice serve`) on real sockets (127.0.0.1 and ::1, free ports).

Answers from the server must be byte-identical to those of a Responder opened
in the test process on the same slice; the server only moves bytes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from datasets.gen_zone import generate_zone
from zoneslice.engine.server import Background, is_axfr, parse_listen, servfail
from zoneslice.engine.stats import read_stats
from zoneslice.errors import ServeError
from zoneslice.manifest import load_manifest
from zoneslice.split import split_zone
from zoneslice.store.db import connect_readonly, read_meta
from zoneslice.store.keys import key_name, name_key

try:
    from zoneslice.engine.query import Responder as RealResponder
except ImportError:
    RealResponder = None

SLICE = 1
ROOT = Path(__file__).resolve().parents[2]


class StandIn:
    """Minimal dnspython Responder used until zoneslice.engine.query exists.

    Exact (name, type) matches answer, other names under the origin get NXDOMAIN
    with the SOA; enough to check that the server moves the right bytes.
    """

    def __init__(self, slice_db: str | Path, *, axfr_allowed: Callable[[str], bool] | None = None):
        conn = connect_readonly(slice_db)
        self.origin = dns.name.from_text(read_meta(conn)["origin"])
        self.data: dict[tuple[bytes, int], list[tuple[int, bytes]]] = defaultdict(list)
        self.names: set[bytes] = set()
        for rkey, rdtype, rdata, ttl in conn.execute(
            "SELECT rkey, rdtype, rdata, ttl FROM rr ORDER BY rkey, rdtype, rdata"
        ):
            self.data[(rkey, rdtype)].append((ttl, rdata))
            self.names.add(rkey)
        conn.close()
        self.axfr_allowed = axfr_allowed or (lambda _a: False)
        self.counters: dict = {"queries": 0, "rcodes": Counter()}

    def _rrset(self, key: bytes, rdtype: int) -> dns.rrset.RRset:
        rows = self.data[(key, rdtype)]
        rrs = dns.rrset.RRset(key_name(key, self.origin), dns.rdataclass.IN, rdtype)
        for ttl, rdata in rows:
            rd = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, rdata, 0, len(rdata))
            rrs.add(rd, ttl)
        return rrs

    def _done(self, r: dns.message.Message, tcp: bool, payload: int) -> bytes:
        self.counters["rcodes"][dns.rcode.to_text(r.rcode())] += 1
        return r.to_wire(max_size=65535 if tcp else max(512, payload))

    def respond(self, wire: bytes, *, tcp: bool, client=None) -> bytes | None:
        self.counters["queries"] += 1
        try:
            q = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except Exception:
            if len(wire) < 12 or wire[2] & 0x80:
                return None
            self.counters["rcodes"]["FORMERR"] += 1
            return wire[:2] + bytes([0x80 | (wire[2] & 0x79), 1]) + b"\x00" * 8
        if q.flags & dns.flags.QR:
            return None
        r = dns.message.make_response(q)
        if q.opcode() != dns.opcode.QUERY:
            r.set_rcode(dns.rcode.NOTIMP)
            return self._done(r, tcp, q.payload)
        if len(q.question) != 1:
            r.set_rcode(dns.rcode.FORMERR)
            return self._done(r, tcp, q.payload)
        qname, rdtype = q.question[0].name, q.question[0].rdtype
        if qname.to_text().lower().startswith("crash."):
            raise RuntimeError("the stand-in fails on purpose")
        if not qname.is_subdomain(self.origin):
            r.set_rcode(dns.rcode.REFUSED)
            return self._done(r, tcp, q.payload)
        key = name_key(qname, self.origin)
        r.flags |= dns.flags.AA
        if (key, rdtype) in self.data:
            r.answer.append(self._rrset(key, rdtype))
        else:
            if key not in self.names:
                r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(self._rrset(b"", dns.rdatatype.SOA))
        return self._done(r, tcp, q.payload)

    def axfr(self, query_wire: bytes, client) -> Iterator[bytes] | bytes:
        q = dns.message.from_wire(query_wire)
        r = dns.message.make_response(q)
        if not self.axfr_allowed(client[0]):
            r.set_rcode(dns.rcode.REFUSED)
            return r.to_wire()
        return self._axfr(q)

    def _axfr(self, q: dns.message.Message) -> Iterator[bytes]:
        soa = self._rrset(b"", dns.rdatatype.SOA)
        rrsets = (
            [soa]
            + [self._rrset(k, t) for k, t in sorted(self.data) if t != dns.rdatatype.SOA]
            + [soa]
        )
        for i in range(0, len(rrsets), 50):
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            r.answer.extend(rrsets[i : i + 50])
            yield r.to_wire(max_size=65535)


def responder_class():
    """The real Responder once engine-core ships it, else the stand-in."""
    return RealResponder or StandIn


def factory():
    """What to pass to serve(): None means serve's own default (the real Responder)."""
    return None if RealResponder is not None else StandIn


# ------------------------------------------------------------------ fixtures and helpers


def build_slices(d: Path) -> Path:
    """A 2000-delegation .com-like zone split in 3; returns the slice directory."""
    generate_zone(d / "z.zone", delegations=2000, seed=1)
    split_zone(d / "z.zone", 3, d / "slices")
    return d / "slices"


@pytest.fixture(scope="session")
def zone_slices(tmp_path_factory) -> Path:
    return build_slices(tmp_path_factory.mktemp("engine-zone"))


@pytest.fixture(scope="session")
def slice_db(zone_slices) -> Path:
    return load_manifest(zone_slices).slice_path(SLICE)


def _slice_names(slice_db: Path) -> tuple[dns.name.Name, list[dns.name.Name]]:
    conn = connect_readonly(slice_db)
    origin = dns.name.from_text(read_meta(conn)["origin"])
    keys = [k for (k,) in conn.execute("SELECT DISTINCT rkey FROM rr WHERE origin = 1")]
    conn.close()
    return origin, [key_name(k, origin) for k in keys]


def _case(rng: random.Random, name: dns.name.Name) -> dns.name.Name:
    text = name.to_text()
    return dns.name.from_text("".join(c.upper() if rng.random() < 0.5 else c for c in text))


def query_set(slice_db: Path, n: int = 300, seed: int = 5) -> list[bytes]:
    """Wire queries: existing names, children, nonexistent, out of zone; mixed types/EDNS/case."""
    rng = random.Random(seed)
    origin, names = _slice_names(slice_db)
    lo = read_meta(connect_readonly(slice_db))["lo"]
    out = []
    types = ["A", "NS", "AAAA", "MX", "DS", "SOA", "ANY", "TXT", "PTR"]
    for i in range(n):
        k = i % 5
        if k == 0:
            name = origin
        elif k in (1, 2):
            name = rng.choice(names)
        elif k == 3:
            name = dns.name.from_text(f"{lo}nx{rng.randrange(10**6)}", origin)
        else:
            name = dns.name.from_text("www", rng.choice(names))
        if i % 37 == 0:
            name = dns.name.from_text(f"n{i}.example.net.")
        q = dns.message.make_query(
            _case(rng, name),
            rng.choice(types),
            use_edns=0 if i % 3 else None,
            payload=1232,
            want_dnssec=i % 6 == 0,
        )
        q.flags = dns.flags.RD if i % 2 else 0
        q.id = rng.randrange(65536)
        out.append(q.to_wire())
    return out


def same(got: bytes | None, want: bytes | None) -> bool:
    """Identical answers; RR order inside an RRset aside (it may follow hash order)."""
    if got == want:
        return True
    if got is None or want is None or got[:12] != want[:12]:
        return False
    a, b = dns.message.from_wire(got), dns.message.from_wire(want)
    return a == b and a.edns == b.edns and a.payload == b.payload


def udp_ask(addr: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes:
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, addr)
        while True:
            data, _ = s.recvfrom(65535)
            if data[:2] == wire[:2]:
                return data


def tcp_connect(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def tcp_read(s: socket.socket) -> bytes:
    (n,) = struct.unpack("!H", recv_exact(s, 2))
    return recv_exact(s, n)


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def fresh_stats(path, since: float, timeout: float = 5.0) -> dict:
    """Stats written by every worker after ``since`` (workers rewrite them every second)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = read_stats(path)
        if all(w["updated"] > since for w in stats["workers"]):
            return stats
        assert time.monotonic() < deadline, "stats not refreshed"
        time.sleep(0.1)


def start(slice_db: Path, listen, workers: int = 1, **kw) -> Background:
    kw.setdefault("responder_factory", factory())
    return Background(slice_db, listen, workers, **kw)


@pytest.fixture(scope="module")
def server(slice_db, tmp_path_factory) -> Iterator[Background]:
    stats = tmp_path_factory.mktemp("stats")
    with start(
        slice_db,
        [("127.0.0.1", 0), ("::1", 0)],
        workers=2,
        stats_path=stats,
        axfr_allow=["127.0.0.0/8"],
        tcp_idle=1.0,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def local(slice_db):
    return responder_class()(slice_db, axfr_allowed=lambda a: a.startswith("127."))


def v4(srv: Background) -> tuple[str, int]:
    return next(a for a in srv.info.listen if ":" not in a[0])


def v6(srv: Background) -> tuple[str, int]:
    return next(a for a in srv.info.listen if ":" in a[0])


# ------------------------------------------------------------------ tests


def test_udp_answers_match_responder(server, local, slice_db) -> None:
    rcodes = Counter()
    for wire in query_set(slice_db, 300):
        got = udp_ask(v4(server), wire)
        want = local.respond(wire, tcp=False, client=("127.0.0.1", 5353))
        assert same(got, want), dns.message.from_wire(wire).question
        rcodes[dns.message.from_wire(got).rcode()] += 1
    assert rcodes[dns.rcode.NOERROR] > 50 and rcodes[dns.rcode.NXDOMAIN] > 30
    assert rcodes[dns.rcode.REFUSED] > 0


def test_tcp_answers_match_responder(server, local, slice_db) -> None:
    queries = query_set(slice_db, 100, seed=6)
    for i, wire in enumerate(queries):
        if i % 25 == 0:
            s = tcp_connect(v4(server))
        s.sendall(frame(wire))
        assert same(tcp_read(s), local.respond(wire, tcp=True, client=("127.0.0.1", 5353)))
    s.close()


def test_pipelined_queries_on_one_connection(server, local, slice_db) -> None:
    """RFC 7766 §6.2.1.1: many queries in one write, answered in full on the same connection."""
    queries = query_set(slice_db, 200, seed=7)
    with tcp_connect(v4(server)) as s:
        s.sendall(b"".join(frame(w) for w in queries))
        answers = [tcp_read(s) for _ in queries]
        # a query split across two writes is reassembled
        w = queries[0]
        s.sendall(frame(w)[:5])
        time.sleep(0.05)
        s.sendall(frame(w)[5:])
        answers.append(tcp_read(s))
    queries.append(queries[0])
    got = {a[:2]: a for a in answers}
    for q, a in zip(queries, answers, strict=True):
        assert same(a, local.respond(q, tcp=True, client=("127.0.0.1", 5353)))
    assert len(got) >= len(set(q[:2] for q in queries)) - 1


def test_ipv6_udp_and_tcp(server, local, slice_db) -> None:
    for wire in query_set(slice_db, 40, seed=8):
        want = local.respond(wire, tcp=False, client=("::1", 5353))
        assert same(udp_ask(v6(server), wire), want)
    with tcp_connect(v6(server)) as s:
        wire = query_set(slice_db, 1, seed=9)[0]
        s.sendall(frame(wire))
        assert same(tcp_read(s), local.respond(wire, tcp=True, client=("::1", 5353)))


def test_both_workers_answer_and_stats_are_readable(server, slice_db) -> None:
    """SO_REUSEPORT spreads flows by source port: many sockets reach both workers."""
    before = read_stats(server.info.stats_path)
    assert len(before["workers"]) == 2
    wire = query_set(slice_db, 1, seed=10)[0]
    for _ in range(64):
        udp_ask(v4(server), wire)
    after = fresh_stats(server.info.stats_path, time.time())
    pids = {w["pid"] for w in after["workers"]}
    assert pids == set(server.info.pids) and len(pids) == 2
    for w0, w1 in zip(before["workers"], after["workers"], strict=True):
        assert w1["server"]["udp_out"] > w0["server"]["udp_out"], "a worker answered nothing"
    total = after["total"]
    assert total["server"]["udp_in"] - before["total"]["server"]["udp_in"] >= 64
    assert total["responder"]["queries"] >= total["server"]["udp_in"]
    assert json.loads((server.info.stats_path / "server.json").read_text())["workers"]


def test_axfr_streams_over_tcp(server, slice_db) -> None:
    origin, names = _slice_names(slice_db)
    msgs = list(
        dns.query.xfr(v4(server)[0], origin, port=v4(server)[1], timeout=10, relativize=False)
    )
    assert len(msgs) >= 2, "expected the transfer in several messages"
    owners = {rrs.name for m in msgs for rrs in m.answer}
    assert set(names) <= owners
    first, last = msgs[0].answer[0], msgs[-1].answer[-1]
    assert first.rdtype == last.rdtype == dns.rdatatype.SOA


def test_axfr_refused_to_others_and_on_udp(server, slice_db) -> None:
    origin, _ = _slice_names(slice_db)
    q = dns.message.make_query(origin, "AXFR")
    r = dns.message.from_wire(udp_ask(v4(server), q.to_wire()))
    assert r.rcode() != dns.rcode.NOERROR or not r.answer
    with tcp_connect(v6(server)) as s:  # ::1 is not in axfr_allow
        s.sendall(frame(q.to_wire()))
        r = dns.message.from_wire(tcp_read(s))
    assert r.rcode() == dns.rcode.REFUSED and not r.answer


def test_tcp_idle_timeout_closes(server) -> None:
    with tcp_connect(v4(server)) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 0.5 < time.monotonic() - t0 < 4


def test_junk_does_not_hurt(server, local, slice_db) -> None:
    addr = v4(server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 11, os.urandom(300), b"\x12\x34\x81\x00" + b"\0" * 8):
            s.sendto(junk, addr)
    with tcp_connect(addr) as s:
        s.sendall(b"\x00\x05hello")
        s.sendall(b"\x00")  # half a length, then close
    wire = query_set(slice_db, 1, seed=11)[0]
    assert same(udp_ask(addr, wire), local.respond(wire, tcp=False, client=addr))


def test_helpers() -> None:
    assert parse_listen("127.0.0.1:5300") == ("127.0.0.1", 5300)
    assert parse_listen("[::1]:53") == ("::1", 53)
    assert parse_listen("::") == ("::", 53)
    with pytest.raises(ServeError):
        parse_listen("localhost:53")
    q = dns.message.make_query("example.com.", "AXFR")
    assert is_axfr(q.to_wire())
    assert not is_axfr(dns.message.make_query("example.com.", "A").to_wire())
    r = dns.message.from_wire(servfail(q.to_wire()))
    assert r.rcode() == dns.rcode.SERVFAIL and r.id == q.id and r.question == q.question
    assert servfail(b"\x00\x01") is None


def test_responder_exception_gives_servfail(slice_db) -> None:
    with Background(slice_db, [("127.0.0.1", 0)], 1, responder_factory=StandIn) as srv:
        q = dns.message.make_query("crash.com.", "A")
        r = dns.message.from_wire(udp_ask(srv.info.listen[0], q.to_wire()))
        assert r.rcode() == dns.rcode.SERVFAIL and r.id == q.id
        q2 = dns.message.make_query("com.", "SOA")
        assert dns.message.from_wire(udp_ask(srv.info.listen[0], q2.to_wire())).answer
        stats = fresh_stats(srv.info.stats_path, time.time())
        assert stats["total"]["server"]["errors"] == 1
    assert srv.exitcode == 0


def test_sigterm_is_clean_and_fast(slice_db, tmp_path, caplog) -> None:
    stats = tmp_path / "stats"
    srv = start(slice_db, [("127.0.0.1", 0), ("::1", 0)], workers=2, stats_path=stats)
    addr = v4(srv)
    pids = list(srv.info.pids)
    wire = query_set(slice_db, 1, seed=12)[0]
    assert udp_ask(addr, wire)
    held = tcp_connect(addr)  # an open client must not delay the stop
    t0 = time.monotonic()
    assert srv.stop() == 0
    elapsed = time.monotonic() - t0
    held.close()
    assert elapsed < 3.0, f"stop took {elapsed:.1f} s"
    for pid in pids + [srv.pid]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # the ports are free again: both UDP and TCP can be bound
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of `held`
            s.bind(addr)
    final = read_stats(stats)
    assert final["total"]["server"]["udp_out"] >= 1


def test_start_and_stop_log_one_line_each(slice_db, tmp_path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "serve",
            str(slice_db),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--stats",
            str(tmp_path / "st"),
        ]
        + (["--responder", "tests.integration.test_engine_server:StandIn"] if factory() else []),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "st" / "server.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 2, err
    assert "started" in lines[0] and "2 worker(s)" in lines[0]
    assert "stopped (SIGINT)" in lines[1]


def test_dead_worker_is_replaced(slice_db) -> None:
    with start(slice_db, [("127.0.0.1", 0)], workers=2) as srv:
        victim = srv.info.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            pids = {w["pid"] for w in read_stats(srv.info.stats_path)["workers"]}
            if victim not in pids and len(pids) == 2:
                break
            assert time.monotonic() < deadline, "worker not replaced"
            time.sleep(0.1)
        wire = query_set(slice_db, 1, seed=13)[0]
        for _ in range(20):
            assert udp_ask(srv.info.listen[0], wire)
    assert srv.exitcode == 0


def test_bad_configuration_is_a_clear_error(slice_db, tmp_path) -> None:
    with pytest.raises(ServeError, match="no such slice"):
        Background(tmp_path / "missing.db", [("127.0.0.1", 0)], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match="cannot listen"):
            start(slice_db, [("127.0.0.1", port)], 1)


def test_manifest_source(zone_slices) -> None:
    with start((zone_slices, 2), [("127.0.0.1", 0)], workers=1) as srv:
        assert srv.info.slice_db.name == "slice-2.db"
        assert srv.info.meta["index"] == "2"


@pytest.mark.root
def test_serves_in_a_namespace_over_veth(slice_db, local) -> None:
    """The bench's set-up in small: server and client namespaces joined by a veth pair."""
    sys.path.insert(0, str(ROOT))
    from tests.netns import netns, require_netns, veth

    require_netns()
    with (
        netns("esrv") as srv,
        netns("ecli") as cli,
        veth(srv, cli, "10.53.252.1/24", "10.53.252.2/24") as link,
    ):
        names = (srv.name, cli.name)
        proc = srv.popen(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "serve",
                str(slice_db),
                "--listen",
                f"{link.a_addr}:53",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        wire = query_set(slice_db, 1, seed=30)[0]
        probe = (
            "import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3)\n"
            f"w=bytes.fromhex('{wire.hex()}')\n"
            "for _ in range(60):\n"
            f"    s.sendto(w,('{link.a_addr}',53))\n"
            "    try:\n"
            "        sys.stdout.write(s.recv(65535).hex()); break\n"
            "    except TimeoutError: time.sleep(0.2)\n"
        )
        got = bytes.fromhex(cli.run([sys.executable, "-c", probe]).stdout.strip())
        assert same(got, local.respond(wire, tcp=False, client=(link.b_addr, 5353)))
    assert proc.wait(10) is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names), "namespace left behind"
