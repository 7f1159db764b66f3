"""RFC 2136 semantics on a whole-zone database: rcodes, atomicity, special rules, journal, TSIG."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import struct
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from zoneslice import journal
from zoneslice.engine import Responder
from zoneslice.engine.node import NodeContext
from zoneslice.errors import KeyFileError
from zoneslice.split import split_zone
from zoneslice.updates import ddns
from zoneslice.updates.acl import UpdatePolicy, parse_keys
from zoneslice.updates.handler import WatchedResponder
from zoneslice.updates.primary import PrimaryRole
from zoneslice.updates.queue import Job, UpdateQueue

ZONE = """$ORIGIN example.
$TTL 3600
@     SOA  ns1 hostmaster 100 3600 900 604800 300
@     NS   ns1
@     NS   ns2
ns1   A    192.0.2.1
ns2   A    192.0.2.2
www   A    192.0.2.80
www   A    192.0.2.81
www   TXT  "hello"
alias CNAME www
mail  MX   10 mx.Example.
"""
ORIGIN = dns.name.from_text("example.")
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
KEYRING = dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", SECRET)})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    zf = tmp_path / "example.zone"
    zf.write_text(ZONE)
    return split_zone(zf, 1, tmp_path / "whole").manifest.slice_path(0)


@pytest.fixture
def q(db: Path) -> UpdateQueue:
    queue = UpdateQueue(db)
    yield queue
    queue.close()


def new() -> dns.update.UpdateMessage:
    return dns.update.UpdateMessage("example.")


def run(q: UpdateQueue, u: dns.message.Message) -> ddns.UpdateResult:
    wire = u.to_wire()
    return q.apply(dns.message.from_wire(wire, one_rr_per_rrset=True), wire)


class RoleHandler:
    """The writer's PrimaryRole driven from the test: ``handler(wire, client) -> answer``."""

    def __init__(self, db: Path, policy: UpdatePolicy, hooks=()) -> None:
        self.role = PrimaryRole(KEYRING, policy)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.role.start(NodeContext(db, None, list(hooks))))

    def __call__(self, wire: bytes, client) -> bytes | None:
        return self.loop.run_until_complete(self.role.handle(wire, client, False))

    def queue(self) -> UpdateQueue:
        return self.role.queue

    def close(self) -> None:
        self.loop.run_until_complete(self.role.stop())
        self.loop.close()


def state(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return sorted(c.execute("SELECT rkey, rdtype, covers, rdata, ttl FROM rr"))


def rrset(db: Path, name: str, rdtype: str) -> set[tuple[str, int]]:
    """(rdata text, ttl) of an RRset as stored."""
    from zoneslice.store.keys import name_key

    key = name_key(dns.name.from_text(name, ORIGIN), ORIGIN)
    t = dns.rdatatype.from_text(rdtype)
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT rdata, ttl FROM rr WHERE rkey = ? AND rdtype = ?", (key, t))
        return {
            (dns.rdata.from_wire(dns.rdataclass.IN, t, rd, 0, len(rd)).to_text(), ttl)
            for rd, ttl in rows
        }


def serial(db: Path) -> int:
    (soa,) = rrset(db, "@", "SOA")
    return int(soa[0].split()[2])


# ---- prerequisites: RFC 2136 §3.2.5 table


@pytest.mark.parametrize(
    ("build", "rcode"),
    [
        (lambda u: u.present("www"), dns.rcode.NOERROR),  # ANY ANY: name in use
        (lambda u: u.present("nope"), dns.rcode.NXDOMAIN),
        (lambda u: u.present("www", "TXT"), dns.rcode.NOERROR),  # ANY rrset: exists
        (lambda u: u.present("www", "MX"), dns.rcode.NXRRSET),
        (lambda u: u.absent("nope"), dns.rcode.NOERROR),  # NONE ANY: name not in use
        (lambda u: u.absent("www"), dns.rcode.YXDOMAIN),
        (lambda u: u.absent("www", "MX"), dns.rcode.NOERROR),  # NONE rrset: does not exist
        (lambda u: u.absent("www", "A"), dns.rcode.YXRRSET),
        (lambda u: u.present("www", "A", "192.0.2.80"), dns.rcode.NXRRSET),  # value: whole RRset
        (
            lambda u: (u.present("www", "A", "192.0.2.81"), u.present("www", "A", "192.0.2.80")),
            dns.rcode.NOERROR,
        ),
        (lambda u: u.present("mail", "MX", "10 MX.example."), dns.rcode.NOERROR),  # canonical
        (lambda u: u.present("www.other."), dns.rcode.NOTZONE),
    ],
)
def test_prerequisite_rcodes(q: UpdateQueue, db: Path, build, rcode: int) -> None:
    u = new()
    build(u)
    u.add("new", 300, "A", "192.0.2.9")
    before = serial(db)
    res = run(q, u)
    assert res.rcode == rcode, res.reason
    assert (rrset(db, "new", "A") != set()) == (rcode == dns.rcode.NOERROR)
    assert serial(db) == before + (1 if rcode == dns.rcode.NOERROR else 0)


def test_prerequisites_in_rfc_order(q: UpdateQueue) -> None:
    u = new()
    u.absent("www")  # YXDOMAIN, first in the message
    u.present("nope")  # NXDOMAIN
    assert run(q, u).rcode == dns.rcode.YXDOMAIN


def test_prerequisite_ttl_formerr(q: UpdateQueue) -> None:
    u = new()
    u.find_rrset(u.prerequisite, dns.name.from_text("www.example."), dns.rdataclass.ANY,
                 dns.rdatatype.A, create=True)
    wire = bytearray(u.to_wire())
    wire[-5] = 7  # TTL of the prerequisite (last 4 octets before rdlength) != 0
    msg = dns.message.from_wire(bytes(wire), one_rr_per_rrset=True)
    assert q.apply(msg, bytes(wire)).rcode == dns.rcode.FORMERR


def test_zone_section(q: UpdateQueue) -> None:
    u = dns.update.UpdateMessage("other.")
    u.add("x.other.", 300, "A", "192.0.2.1")
    assert run(q, u).rcode == dns.rcode.NOTAUTH


# ---- update section: prescan and atomicity


def test_prescan_refuses_whole_message(q: UpdateQueue, db: Path) -> None:
    before = state(db)
    u = new()
    u.add("ok", 300, "A", "192.0.2.7")
    u.add("bad.other.", 300, "A", "192.0.2.8")
    assert run(q, u).rcode == dns.rcode.NOTZONE
    assert state(db) == before


def test_failing_prerequisite_changes_nothing(q: UpdateQueue, db: Path) -> None:
    before = state(db)
    u = new()
    u.present("nope")
    u.delete("www")
    assert run(q, u).rcode == dns.rcode.NXDOMAIN
    assert state(db) == before


def test_policy_refusal_changes_nothing(q: UpdateQueue, db: Path) -> None:
    before = state(db)
    u = new()
    u.add("free", 300, "A", "192.0.2.7")
    u.add("locked", 300, "A", "192.0.2.8")
    wire = u.to_wire()
    msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
    res = q.apply(msg, wire, allowed=lambda name, _t: not name.labels[0].startswith(b"locked"))
    assert res.rcode == dns.rcode.REFUSED
    assert state(db) == before


def test_ordered_application(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.add("seq", 300, "A", "192.0.2.1")
    u.delete("seq", "A")
    u.add("seq", 300, "TXT", "after")
    assert run(q, u).rcode == dns.rcode.NOERROR
    assert rrset(db, "seq", "A") == set()
    assert rrset(db, "seq", "TXT") == {('"after"', 300)}


# ---- special rules


def test_soa_rules(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.delete("@", "SOA")
    u.delete("@")
    assert run(q, u).rcode == dns.rcode.NOERROR
    assert rrset(db, "@", "SOA") and len(rrset(db, "@", "NS")) == 2
    assert serial(db) == 100  # nothing changed: no bump
    u = new()
    u.add("@", 3600, "SOA", "ns1 hostmaster 99 3600 900 604800 300")  # not greater: ignored
    assert run(q, u).changeset is None and serial(db) == 100
    u = new()
    u.add("@", 3600, "SOA", "ns1 hostmaster 500 3600 900 604800 300")
    res = run(q, u)
    assert res.rcode == dns.rcode.NOERROR and serial(db) == 500  # taken as is, no extra bump
    assert res.changeset.serial_from == 100 and res.changeset.serial_to == 500


def test_last_apex_ns_kept(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.delete("@", "NS", "ns1.example.")
    u.delete("@", "NS", "ns2.example.")
    assert run(q, u).rcode == dns.rcode.NOERROR
    assert rrset(db, "@", "NS") == {("ns2.example.", 3600)}


def test_cname_conflicts_ignored(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.add("www", 300, "CNAME", "elsewhere")  # www has A/TXT: ignored
    u.add("alias", 300, "A", "192.0.2.5")  # alias is a CNAME: ignored
    u.add("alias", 300, "CNAME", "ns1")  # replaces the CNAME
    assert run(q, u).rcode == dns.rcode.NOERROR
    assert rrset(db, "www", "CNAME") == set()
    assert rrset(db, "alias", "A") == set()
    assert rrset(db, "alias", "CNAME") == {("ns1.example.", 300)}


def test_new_ttl_applies_to_rrset(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.add("www", 60, "A", "192.0.2.82")
    run(q, u)
    assert rrset(db, "www", "A") == {(f"192.0.2.{i}", 60) for i in (80, 81, 82)}


def test_serial_bumped_once_and_unixtime(db: Path) -> None:
    q = UpdateQueue(db)
    u = new()
    for i in range(5):
        u.add(f"h{i}", 300, "A", f"192.0.2.{i}")
    assert run(q, u).changeset.serial_to == 101
    q.close()
    q = UpdateQueue(db, serial_policy="unixtime")
    u = new()
    u.add("t", 300, "A", "192.0.2.1")
    assert abs(run(q, u).changeset.serial_to - time.time()) < 5
    q.close()
    assert ddns.next_serial(0xFFFFFFFF) == 1


# ---- journal and group commit


def test_journal_entries(q: UpdateQueue, db: Path) -> None:
    u = new()
    u.delete("www", "A", "192.0.2.80")
    u.add("new", 300, "A", "192.0.2.9")
    run(q, u)
    u = new()
    u.delete("new")
    run(q, u)
    conn = sqlite3.connect(db)
    chain = journal.changes_since(conn, 100)
    assert [(c.serial_from, c.serial_to) for c in chain] == [(100, 101), (101, 102)]
    first = chain[0]
    assert [(str(n), t) for n, t, _, _ in first.deleted] == [("www.example.", 1)]
    assert [(str(n), t, ttl) for n, t, ttl, _ in first.added] == [("new.example.", 1, 300)]
    assert [str(n) for n, *_ in chain[1].deleted] == ["new.example."]
    assert journal.changes_since(conn, 101)[0].serial_to == 102
    assert journal.changes_since(conn, 102) == []
    assert journal.changes_since(conn, 7) is None
    names, seq = journal.names_since(conn, 1)
    assert seq == 2 and dns.name.from_text("new.example.") in names
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["serial"] == "102"
    conn.close()


def test_group_commit_rolls_back_refused_alone(q: UpdateQueue, db: Path) -> None:
    jobs = []
    for i, bad in enumerate([False, True, False]):
        u = new()
        if bad:
            u.present("nope")
        u.add(f"g{i}", 300, "A", f"192.0.2.{i}")
        wire = u.to_wire()
        jobs.append(Job(dns.message.from_wire(wire, one_rr_per_rrset=True), wire))
    results = q.apply_batch(jobs)
    assert [r.rcode for r in results] == [0, dns.rcode.NXDOMAIN, 0]
    assert q.counters["commits"] == 1
    assert rrset(db, "g1", "A") == set() and rrset(db, "g2", "A")
    assert serial(db) == 102


def test_one_batch_equals_one_commit_per_message(tmp_path: Path) -> None:
    """A group is written once at the end (its net change): the rows, journal and serial
    must be those of the same messages committed one by one, with a refusal in the middle
    and later messages reading what earlier ones in the group did."""

    def messages() -> list[dns.update.UpdateMessage]:
        out = []
        u = new()
        u.add("x", 300, "A", "192.0.2.10")
        out.append(u)
        u = new()
        u.present("x", "A")
        u.delete("x", "A", "192.0.2.10")
        u.add("x", 300, "A", "192.0.2.20")
        out.append(u)
        u = new()
        u.present("nope")
        u.add("x", 300, "A", "192.0.2.30")
        out.append(u)
        u = new()
        u.add("x", 600, "A", "192.0.2.21")  # new TTL for the whole RRset
        u.add("x", 600, "TXT", '"t"')
        u.delete("www", "A", "192.0.2.80")
        out.append(u)
        u = new()
        u.delete("x", "AAAA")  # changes nothing: no serial step
        out.append(u)
        u = new()
        u.add("@", 300, "SOA", "ns1 hostmaster 500 3600 900 604800 300")
        u.delete("x", "TXT")
        out.append(u)
        u = new()
        u.absent("x", "TXT")
        u.delete("x")
        u.add("x", 60, "CNAME", "www")
        out.append(u)
        return out

    def run_in(group: bool) -> tuple[list[int], list[tuple], list[tuple], str]:
        zf = tmp_path / "example.zone"
        zf.write_text(ZONE)
        d = split_zone(zf, 1, tmp_path / ("group" if group else "single")).manifest.slice_path(0)
        queue = UpdateQueue(d)
        try:
            jobs = []
            for u in messages():
                wire = u.to_wire()
                jobs.append(Job(dns.message.from_wire(wire, one_rr_per_rrset=True), wire))
            if group:
                rcodes = [r.rcode for r in queue.apply_batch(jobs)]
                assert queue.counters["commits"] == 1
            else:
                rcodes = [queue.apply_batch([j])[0].rcode for j in jobs]
        finally:
            queue.close()
        with sqlite3.connect(d) as c:
            steps = c.execute(
                "SELECT serial_from, serial_to, deleted, added FROM journal ORDER BY seq"
            ).fetchall()
            serial_now = c.execute("SELECT value FROM meta WHERE key = 'serial'").fetchone()[0]
        return rcodes, state(d), steps, serial_now

    grouped, single = run_in(True), run_in(False)
    assert grouped[0] == [0, 0, dns.rcode.NXDOMAIN, 0, 0, 0, 0]
    assert grouped == single
    assert grouped[3] == "501" and len(grouped[2]) == 5


def test_writer_thread_groups_concurrent_updates(q: UpdateQueue, db: Path) -> None:
    futures = []
    for i in range(20):
        u = new()
        u.add(f"c{i}", 300, "A", "192.0.2.1")
        wire = u.to_wire()
        futures.append(q.submit(dns.message.from_wire(wire, one_rr_per_rrset=True), wire))
    assert all(f.result(30).rcode == 0 for f in futures)
    assert serial(db) == 120
    assert q.counters["commits"] < 20


# ---- TSIG, policy and the engine hook


def test_parse_keys() -> None:
    ring = parse_keys(f'key "k1" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
                      f'key k2 {{ secret "{SECRET}"; }};')
    assert set(map(str, ring)) == {"k1.", "k2."}
    with pytest.raises(KeyFileError):
        parse_keys("key k3 { algorithm hmac-sha256; };")


def test_parse_keys_comments_outside_quotes_only() -> None:
    """A base64 secret may contain ``//`` (found by a generated testbed key)."""
    secret = "ab//cd+/" + "A" * 35 + "="
    ring = parse_keys(
        f'# c1\nkey "k" {{ algorithm hmac-sha256; // c2\n secret "{secret}"; }}; /* c3 */\n'
    )
    assert ring[dns.name.from_text("k")].secret == base64.b64decode(secret)


def test_handler_tsig_and_cache(db: Path) -> None:
    responder = Responder(db)
    policy = UpdatePolicy.simple(ORIGIN, KEYRING, allow_unsigned=["10.53.0.9"])
    handler = RoleHandler(db, policy, [responder.invalidate])
    watched = WatchedResponder(responder)
    client = ("127.0.0.1", 5353)

    def ask() -> list[str]:
        qm = dns.message.make_query("www.example.", "A")
        r = dns.message.from_wire(watched.respond(qm.to_wire(), tcp=False, client=client))
        return sorted(rd.to_text() for rrs in r.answer for rd in rrs)

    assert ask() == ["192.0.2.80", "192.0.2.81"]  # now cached
    u = new()
    u.replace("www", 300, "A", "192.0.2.99")
    u.use_tsig(KEYRING, "k1.")
    out = handler(u.to_wire(), client)
    resp = dns.message.from_wire(out, keyring=KEYRING, request_mac=u.mac)
    assert resp.rcode() == dns.rcode.NOERROR and resp.had_tsig
    assert ask() == ["192.0.2.99"]

    bad = dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", "b3RoZXJzZWNyZXQ=")})
    unknown = dns.tsigkeyring.from_text({"nokey.": ("hmac-sha256", SECRET)})
    for ring, keyname, err in ((bad, "k1.", dns.rcode.BADSIG), (unknown, "nokey.", dns.rcode.BADKEY)):
        u = new()
        u.delete("www")
        u.use_tsig(ring, keyname)
        r = dns.message.from_wire(handler(u.to_wire(), client), keyring=False)
        assert r.rcode() == dns.rcode.NOTAUTH and r.tsig[0].error == err
    u = new()
    u.delete("www")
    r = dns.message.from_wire(handler(u.to_wire(), client))
    assert r.rcode() == dns.rcode.REFUSED  # unsigned from an address not allowed
    r = dns.message.from_wire(handler(u.to_wire(), ("10.53.0.9", 1)))
    assert r.rcode() == dns.rcode.NOERROR
    assert ask() == []

    other = Responder(db)  # another worker's view: its cache must drop the name too
    watched2 = WatchedResponder(other)
    qm = dns.message.make_query("ns1.example.", "A").to_wire()
    assert b"\xc0\x00\x02\x01" in watched2.respond(qm, tcp=False, client=client)
    u = new()
    u.replace("ns1", 300, "A", "192.0.2.111")
    u.use_tsig(KEYRING, "k1.")
    handler(u.to_wire(), client)
    assert b"\xc0\x00\x02\x6f" in watched2.respond(qm, tcp=False, client=client)
    handler.close()
    responder.close()
    other.close()


def test_prescan_formerr(q: UpdateQueue, db: Path) -> None:
    before = state(db)
    u = new()
    u.add("ok", 300, "A", "192.0.2.7")
    u.delete("www", "A", "192.0.2.80")  # class NONE: TTL must be 0
    wire = bytearray(u.to_wire())
    wire[-9] = 1  # TTL of the last record (4 rdata + 2 rdlength + 4 TTL octets from the end)
    msg = dns.message.from_wire(bytes(wire), one_rr_per_rrset=True)
    assert q.apply(msg, bytes(wire)).rcode == dns.rcode.FORMERR
    u = new()
    u.add("ok", 300, "A", "192.0.2.7")
    u.add("x", 300, "MAILB", r"\# 0")  # meta type: FORMERR
    wire = u.to_wire()
    msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
    assert q.apply(msg, wire).rcode == dns.rcode.FORMERR
    assert state(db) == before


def test_out_of_slice_is_notauth(tmp_path: Path) -> None:
    zf = tmp_path / "z.zone"
    zf.write_text(ZONE + "".join(f"h{c} A 192.0.2.3\n" for c in "abcdefghijklmnop"))
    m = split_zone(zf, 2, tmp_path / "two").manifest
    q0 = UpdateQueue(m.slice_path(0))
    try:
        inside, outside = (
            ("alias", "www") if q0.zone.owns(dns.name.from_text("alias.example.")) else ("www", "alias")
        )
        assert not q0.zone.owns(dns.name.from_text(f"{outside}.example."))
        u = new()
        u.add(inside, 300, "TXT", "in")
        assert run(q0, u).rcode in (dns.rcode.NOERROR,)
        u = new()
        u.add(outside, 300, "TXT", "out")
        assert run(q0, u).rcode == dns.rcode.NOTAUTH
    finally:
        q0.close()


def test_badtime(db: Path) -> None:
    """A request signed an hour ago (fudge 300) gets NOTAUTH/BADTIME with the server's time."""
    import struct

    import dns.rdtypes.ANY.TSIG

    policy = UpdatePolicy.simple(ORIGIN, KEYRING)
    handler = RoleHandler(db, policy)
    before = state(db)
    u = new()
    u.delete("www")
    wire = u.to_wire()
    key = KEYRING[dns.name.from_text("k1.")]
    then = int(time.time()) - 3600
    tmpl = dns.rdtypes.ANY.TSIG.TSIG(dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm,
                                     then, 300, b"", u.id, 0, b"")
    tsig, _ = dns.tsig.sign(wire, key, tmpl, then)
    rdata = tsig.to_wire()
    signed = bytearray(wire + key.name.to_wire()
                       + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
                       + rdata)
    struct.pack_into("!H", signed, 10, 1)
    r = dns.message.from_wire(handler(bytes(signed), ("127.0.0.1", 1)), keyring=False)
    assert r.rcode() == dns.rcode.NOTAUTH and r.tsig[0].error == dns.rcode.BADTIME
    assert abs(int.from_bytes(r.tsig[0].other, "big") - time.time()) < 5
    assert state(db) == before
    handler.close()


def test_key_grants_and_durability(db: Path) -> None:
    policy = UpdatePolicy.from_grants(ORIGIN, KEYRING, ["k1=sub"])
    handler = RoleHandler(db, policy)
    for name, rcode in (("www", dns.rcode.REFUSED), ("a.sub", dns.rcode.NOERROR)):
        u = new()
        u.add(name, 300, "A", "192.0.2.1")
        u.use_tsig(KEYRING, "k1.")
        r = dns.message.from_wire(handler(u.to_wire(), ("127.0.0.1", 1)), keyring=KEYRING,
                                  request_mac=u.mac)
        assert r.rcode() == rcode
    writer = handler.queue()
    assert writer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert writer.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync per commit
    assert journal.trim(writer.conn, 0) == 1 and journal.changes_since(writer.conn, 100) is None
    handler.close()
    with pytest.raises(KeyFileError):
        UpdatePolicy.from_grants(ORIGIN, KEYRING, ["k9=sub"])


def test_no_stale_answer_after_ack(db: Path) -> None:
    """Every cached answer, in this worker and in another one, matches a fresh Responder."""
    own = Responder(db)
    handler = RoleHandler(db, UpdatePolicy.simple(ORIGIN, KEYRING), [own.invalidate])
    workers = [WatchedResponder(own), WatchedResponder(Responder(db))]
    questions = [("new.", "A"), ("b.", "A"), ("x.b.", "TXT"), ("a.b.", "A"), ("www.", "ANY"),
                 ("", "SOA"), ("", "NS"), ("zz.", "A"), ("alias.", "A")]

    def ask(resp, name: str, rdtype: str) -> tuple:
        qm = dns.message.make_query(f"{name}example.", rdtype).to_wire()
        m = dns.message.from_wire(resp.respond(qm, tcp=False, client=("127.0.0.1", 1)))
        return m.rcode(), sorted(m.answer, key=str), sorted(m.authority, key=str)

    for w in workers:
        for name, rdtype in questions:
            ask(w, name, rdtype)
    u = new()
    u.add("new", 300, "A", "192.0.2.7")
    u.add("a.b", 300, "A", "192.0.2.8")  # b becomes an empty non-terminal
    u.add("*", 300, "A", "192.0.2.9")
    u.delete("www")
    u.add("@", 300, "NS", "ns3.example.")
    u.add("www", 300, "A", "192.0.2.10")
    u.use_tsig(KEYRING, "k1.")
    handler(u.to_wire(), ("127.0.0.1", 1))
    fresh = Responder(db)
    for name, rdtype in questions:
        want = ask(fresh, name, rdtype)
        assert [ask(w, name, rdtype) for w in workers] == [want, want], (name, rdtype)
    assert ask(fresh, "zz.", "A")[1]  # the wildcard answers now
    handler.close()
    for r in (own, workers[1].inner, fresh):
        r.close()


def test_worker_behind_by_more_commits_than_answers_drops_its_cache(db: Path) -> None:
    """A worker with fewer cached answers than journal entries to read drops the cache
    instead of decoding them (the primary's workers under an update stream); its answers
    still match a fresh Responder."""
    handler = RoleHandler(db, UpdatePolicy.simple(ORIGIN, KEYRING))
    worker = WatchedResponder(Responder(db))
    questions = [("www.example.", "A"), ("nope.example.", "A")]

    def ask(resp, name: str, rdtype: str) -> tuple:
        qm = dns.message.make_query(name, rdtype).to_wire()
        m = dns.message.from_wire(resp.respond(qm, tcp=False, client=("127.0.0.1", 1)))
        return m.rcode(), sorted(map(str, m.answer)), sorted(map(str, m.authority))

    for q in questions:
        ask(worker, *q)
    for i in range(len(questions) + 1):
        u = new()
        u.add(f"n{i}", 300, "A", f"192.0.2.{60 + i}")
        u.use_tsig(KEYRING, "k1.")
        handler(u.to_wire(), ("127.0.0.1", 1))
    c = worker.counters
    dropped, misses = c.get("commits_dropped_all", 0), c["cache_misses"]
    fresh = Responder(db)
    for q in [*questions, ("n0.example.", "A")]:
        assert ask(worker, *q) == ask(fresh, *q), q
    assert c["commits_dropped_all"] == dropped + 1
    assert c["cache_misses"] == misses + 3
    handler.close()
    for r in (worker.inner, fresh):
        r.close()


def test_serial_step_keeps_negative_answers_cached(db: Path) -> None:
    """A commit elsewhere moves only the apex SOA: another worker's cached NXDOMAIN and SOA
    answers stay cached, now with the new serial; an apex change still drops them."""
    handler = RoleHandler(db, UpdatePolicy.simple(ORIGIN, KEYRING))
    worker = WatchedResponder(Responder(db))
    questions = [("nope.example.", "A"), ("example.", "SOA"), ("www.example.", "MX")]

    def ask(resp, name: str, rdtype: str) -> dns.message.Message:
        qm = dns.message.make_query(name, rdtype)
        return dns.message.from_wire(resp.respond(qm.to_wire(), tcp=False, client=("127.0.0.1", 1)))

    def same(a: dns.message.Message, b: dns.message.Message) -> bool:
        return a.rcode() == b.rcode() and all(
            sorted(map(str, x)) == sorted(map(str, y))
            for x, y in ((a.answer, b.answer), (a.authority, b.authority),
                         (a.additional, b.additional))
        )

    def send(u: dns.update.UpdateMessage) -> None:
        u.use_tsig(KEYRING, "k1.")
        assert dns.message.from_wire(handler(u.to_wire(), ("127.0.0.1", 1)), keyring=KEYRING,
                                     request_mac=u.mac).rcode() == dns.rcode.NOERROR

    for q in questions:
        ask(worker, *q)
    u = new()
    u.add("fresh", 300, "A", "192.0.2.50")
    send(u)
    hits = worker.counters["cache_hits"]
    fresh = Responder(db)
    for q in questions:
        got, want = ask(worker, *q), ask(fresh, *q)
        assert same(got, want), (q, got.to_text(), want.to_text())
        soa = (got.answer or got.authority)[0][0]
        assert soa.serial == 101
    assert worker.counters["cache_hits"] == hits + len(questions)
    u = new()
    u.add("@", 300, "NS", "ns3.example.")
    send(u)
    hits = worker.counters["cache_hits"]
    fresh2 = Responder(db)
    for q in questions:
        assert same(ask(worker, *q), ask(fresh2, *q))
    assert worker.counters["cache_hits"] == hits  # the apex changed: all re-rendered
    handler.close()
    for r in (worker.inner, fresh, fresh2):
        r.close()


@pytest.mark.parametrize("alg", ["hmac-md5.sig-alg.reg.int.", "hmac-sha1", "hmac-sha224", "hmac-sha256",
                                 "hmac-sha384", "hmac-sha512"])
def test_tsig_checked_and_signed_as_dnspython_does(alg: str) -> None:
    """The hmac fast path of parse_update/response agrees with dns.tsig both ways, and a
    tampered byte, a skewed clock or a truncated MAC give dnspython's own verdicts."""
    from zoneslice.updates.wire import parse_update, response

    ring = dns.tsigkeyring.from_text({"k.": (alg, SECRET)})
    u = dns.update.UpdateMessage("example.")
    u.add("www", 300, "A", "192.0.2.7")
    u.use_tsig(ring, "k.")
    wire = u.to_wire()
    upd = parse_update(wire, ring)
    assert upd.mac == u.mac and upd.keyname == dns.name.from_text("k.")
    out = response(upd, wire, dns.rcode.NOERROR)
    r = dns.message.from_wire(out, keyring=ring, request_mac=u.mac)
    assert r.had_tsig and r.rcode() == dns.rcode.NOERROR and r.id == u.id

    tampered = bytearray(wire)
    tampered[wire.index(bytes((192, 0, 2, 7))) + 3] ^= 1
    with pytest.raises(dns.tsig.BadSignature):
        parse_update(bytes(tampered), ring)
    with pytest.raises(dns.tsig.BadTime):
        parse_update(wire, ring, now=time.time() + 3600)
    other = dns.tsigkeyring.from_text({"k.": (alg, "b3RoZXJzZWNyZXQ=")})
    with pytest.raises(dns.tsig.BadSignature):
        parse_update(wire, other)
    # a MAC cut to half its length goes to dns.tsig, which refuses it for a full-length algorithm
    alg_wire = ring[dns.name.from_text("k.")].algorithm.to_wire()
    rs = wire.rindex(alg_wire)
    at = rs + len(alg_wire) + 8
    size = struct.unpack_from("!H", wire, at)[0]
    cut = bytearray(wire[:at] + struct.pack("!H", size // 2) + wire[at + 2 : at + 2 + size // 2]
                    + wire[at + 2 + size :])
    struct.pack_into("!H", cut, rs - 2, struct.unpack_from("!H", wire, rs - 2)[0] - size // 2)
    with pytest.raises(dns.tsig.BadSignature):
        parse_update(bytes(cut), ring)


def delaying_role(commit_group: int) -> PrimaryRole:
    """A primary whose small groups wait 0.2 s, taking unsigned updates from loopback."""
    policy = UpdatePolicy.from_grants("example.", KEYRING, [], ["127.0.0.0/8"])
    return PrimaryRole(KEYRING, policy, commit_delay=0.2, commit_group=commit_group)


def a_update(name: str, addr: str) -> bytes:
    u = new()
    u.add(name, 300, "A", addr)
    return u.to_wire()


def test_commit_delay_groups_a_trickle_and_a_full_group_goes_at_once(db: Path) -> None:
    """A lone update is applied at once; updates arriving a few ms apart share one commit
    when --commit-delay lets the group wait; a group that reaches commit_group goes at
    once; stop() applies what waits."""
    role = delaying_role(commit_group=4)
    loop = asyncio.new_event_loop()
    client = ("127.0.0.1", 5300)

    def wire(i: int) -> bytes:
        return a_update(f"trickle{i}", f"192.0.2.{i + 1}")

    async def trickle(first: int, n: int, gap: float | None) -> list[bytes | None]:
        tasks = []
        for i in range(first, first + n):
            tasks.append(asyncio.ensure_future(role.handle(wire(i), client, False)))
            if gap is not None:
                await asyncio.sleep(gap)
        return await asyncio.gather(*tasks)

    def noerror(answers: list[bytes | None]) -> bool:
        return all(a is not None and dns.message.from_wire(a).rcode() == dns.rcode.NOERROR
                   for a in answers)

    try:
        loop.run_until_complete(role.start(NodeContext(db, None, [])))
        counters = role.queue.counters
        t = time.monotonic()
        assert noerror(loop.run_until_complete(trickle(0, 1, None)))
        assert counters["commits"] == 1 and time.monotonic() - t < 0.1
        t = time.monotonic()
        assert noerror(loop.run_until_complete(trickle(1, 3, 0.01)))
        assert counters["commits"] == 2 and counters["updates"] == 4
        assert time.monotonic() - t >= 0.2
        t = time.monotonic()
        assert noerror(loop.run_until_complete(trickle(4, 4, None)))
        assert counters["commits"] == 3 and time.monotonic() - t < 0.15
        late = asyncio.ensure_future(role.handle(wire(9), client, False), loop=loop)
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.run_until_complete(role.stop())
        assert dns.message.from_wire(loop.run_until_complete(late)).rcode() == dns.rcode.NOERROR
    finally:
        loop.close()
    assert rrset(db, "trickle9.example.", "A") == {("192.0.2.10", 300)}



def test_closed_loop_senders_are_not_held_to_one_group_per_delay(db: Path) -> None:
    """Two clients that each send their next update only after the answer: the first
    delayed group gains nobody, so the following groups go at once (for WAIT_PAUSE)."""
    role = delaying_role(commit_group=8)
    loop = asyncio.new_event_loop()
    client = ("127.0.0.1", 5300)

    def wire(name: str) -> bytes:
        return a_update(name, "192.0.2.8")

    async def sender(tag: str, n: int) -> list[float]:
        took = []
        for i in range(n):
            t = time.monotonic()
            answer = await role.handle(wire(f"{tag}{i}"), client, False)
            assert answer is not None
            assert dns.message.from_wire(answer).rcode() == dns.rcode.NOERROR
            took.append(time.monotonic() - t)
        return took

    async def two() -> list[list[float]]:
        return await asyncio.gather(sender("a", 6), sender("b", 6))

    try:
        loop.run_until_complete(role.start(NodeContext(db, None, [])))
        t = time.monotonic()
        a, b = loop.run_until_complete(two())
        elapsed = time.monotonic() - t
        counters = role.queue.counters
    finally:
        loop.run_until_complete(role.stop())
        loop.close()
    assert counters["updates"] == 12
    # the first group goes at once (no stream yet), the second waits 0.2 s in vain;
    # the rest do not wait: 12 updates in well under 6 x 0.2 s
    assert sorted(a + b)[-3] < 0.1 and elapsed < 0.6, (a, b, elapsed)
    assert rrset(db, "b5.example.", "A") == {("192.0.2.8", 300)}
