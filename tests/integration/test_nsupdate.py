"""BIND's nsupdate and dig against `zoneslice serve` of a whole-zone database (split --parts 1),
UPDATEs applied by the node's writer process (PrimaryRole)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess

import dns.message
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest

from tests.example import EXAMPLE_ZONE, SECRET
from zoneslice import journal
from zoneslice.engine.server import Background
from zoneslice.split import split_zone
from zoneslice.updates.acl import load_keys
from zoneslice.updates.primary import primary_role_factory

ZONE = EXAMPLE_ZONE
WRONG = "b3RoZXJzZWNyZXRvdGhlcnNlY3JldG90aGVyc2VjcmV0"

pytestmark = pytest.mark.skipif(
    shutil.which("nsupdate") is None or shutil.which("dig") is None,
    reason="bind9-dnsutils (nsupdate, dig) not installed",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nsupdate")
    (tmp / "example.zone").write_text(ZONE)
    db = split_zone(tmp / "example.zone", 1, tmp / "whole").manifest.slice_path(0)
    keyfile = tmp / "keys.conf"
    keyfile.write_text(f'key "k1" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n')
    ring = load_keys(keyfile)
    with Background(db, [("127.0.0.1", 0)], workers=2, role=primary_role_factory(db, ring)) as srv:
        yield db, srv.info.listen[0][1]


def nsupdate(port: int, commands: str, *key: str) -> subprocess.CompletedProcess[str]:
    script = f"server 127.0.0.1 {port}\nzone example.\n{commands}\nsend\n"
    return subprocess.run(
        ["nsupdate", "-t", "5", *key], input=script, capture_output=True, text=True, timeout=30
    )


def dig(port: int, name: str, rdtype: str = "A") -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=3", name, rdtype],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return sorted(out.stdout.splitlines())


def test_nsupdate_then_dig_sees_it(server) -> None:
    db, port = server
    for _ in range(6):  # both workers answer, each with a warm cache
        assert dig(port, "www.example.") == ["192.0.2.80"]
    r = nsupdate(
        port,
        "update delete www.example. A\nupdate add www.example. 300 A 192.0.2.99\n"
        "update add new.example. 300 TXT \"added by nsupdate\"",
        "-y", f"hmac-sha256:k1:{SECRET}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for _ in range(6):
        assert dig(port, "www.example.") == ["192.0.2.99"]
    assert dig(port, "new.example.", "TXT") == ['"added by nsupdate"']
    assert dig(port, "example.", "SOA")[0].split()[2] == "101"
    with sqlite3.connect(db) as conn:
        (cs,) = journal.changes_since(conn, 100)
    assert {str(n) for n, *_ in cs.added} == {"www.example.", "new.example."}


def test_prerequisite_failure_over_the_wire(server) -> None:
    _db, port = server
    r = nsupdate(port, "prereq nxdomain www.example.\nupdate delete www.example. A",
                 "-y", f"hmac-sha256:k1:{SECRET}")
    assert r.returncode != 0 and "YXDOMAIN" in r.stdout + r.stderr
    assert dig(port, "www.example.")  # still there


def test_bad_key_and_unsigned(server) -> None:
    _db, port = server
    before = dig(port, "example.", "SOA")
    r = nsupdate(port, "update delete www.example. A", "-y", f"hmac-sha256:k1:{WRONG}")
    assert r.returncode != 0 and "NOTAUTH(BADSIG)" in r.stdout + r.stderr
    r = nsupdate(port, "update delete www.example. A", "-y", f"hmac-sha256:nokey:{SECRET}")
    assert r.returncode != 0 and "NOTAUTH(BADKEY)" in r.stdout + r.stderr
    r = nsupdate(port, "update delete www.example. A")
    assert r.returncode != 0 and "REFUSED" in r.stdout + r.stderr
    assert dig(port, "example.", "SOA") == before and dig(port, "www.example.")
    # the exact TSIG errors, read with dnspython
    for ring, keyname, err in (
        (dns.tsigkeyring.from_text({"k1.": ("hmac-sha256", WRONG)}), "k1.", dns.rcode.BADSIG),
        (dns.tsigkeyring.from_text({"nokey.": ("hmac-sha256", SECRET)}), "nokey.", dns.rcode.BADKEY),
    ):
        u = dns.update.UpdateMessage("example.")
        u.delete("www.example.", "A")
        u.use_tsig(ring, keyname)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(u.to_wire(), ("127.0.0.1", port))
            wire, _ = s.recvfrom(65535)
        resp = dns.message.from_wire(wire, keyring=False)
        assert resp.rcode() == dns.rcode.NOTAUTH and resp.tsig[0].error == err
