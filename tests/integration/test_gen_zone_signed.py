"""Generated zones signed by dnssec-signzone (NSEC, NSEC3 opt-out) pass BIND's own checks."""

from __future__ import annotations

import calendar
import collections
import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.rdatatype
import dns.zone
import pytest

from datasets.gen_zone import ZoneStats, generate_zone, main
from datasets.sign import (
    EXPIRATION,
    INCEPTION,
    SignError,
    sign_zone,
    verify_zone,
    write_seeded_keys,
)

DELEGATIONS = 2000


def _checkzone(origin: str, path: Path) -> str:
    tool = shutil.which("named-checkzone")
    assert tool, "named-checkzone missing: install bind9-utils (scripts/setup.sh)"
    proc = subprocess.run(
        [tool, "-i", "local", origin, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _epoch(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y%m%d%H%M%S"))


def _without_signatures(path: Path) -> list[str]:
    """The signed zone with the (randomized ECDSA) signature bytes cut off each RRSIG."""
    lines = []
    for line in path.read_text().splitlines():
        fields = line.split()
        lines.append(" ".join(fields[:12]) if fields[3] == "RRSIG" else line)
    return lines


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ZoneStats]:
    path = tmp_path_factory.mktemp("sign") / "com.zone"
    return path, generate_zone(path, DELEGATIONS, seed=21)


@pytest.mark.parametrize("mode", ["nsec", "nsec3"])
def test_signed_zone_verifies(
    mode: str, unsigned: tuple[Path, ZoneStats], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, stats = unsigned
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / f"{mode}.zone"
    assert sign_zone(src, dst, "com.", mode, seed=21) == dst
    assert os.listdir(tmp_path) == [dst.name], "signer left files behind"
    assert _checkzone("com.", dst).endswith("OK\n")
    assert "ECDSAP256SHA256" in verify_zone(dst, "com.")

    zone = dns.zone.from_file(str(dst), origin="com.", relativize=False)
    types = collections.Counter(
        rds.rdtype for node in zone.nodes.values() for rds in node for _ in rds
    )
    assert types[dns.rdatatype.NS] == stats.ns + 13 and types[dns.rdatatype.DS] == stats.ds
    ksk, zsk = write_seeded_keys(tmp_path, "com.", 21)
    dnskeys = zone.get_rdataset("com.", "DNSKEY")
    assert sorted(dns.dnssec.key_id(k) for k in dnskeys) == sorted([ksk, zsk])
    signers = {
        r.key_tag
        for node in zone.nodes.values()
        for rds in node
        if rds.rdtype == dns.rdatatype.RRSIG
        for r in rds
    }
    assert signers == {ksk, zsk}
    assert all(
        r.inception == _epoch(INCEPTION) and r.expiration == _epoch(EXPIRATION)
        for node in zone.nodes.values()
        for rds in node
        if rds.rdtype == dns.rdatatype.RRSIG
        for r in rds
    )
    if mode == "nsec":
        # Every delegation and the apex, nothing below a cut (glue).
        owners = {n for n, node in zone.nodes.items() if node.get_rdataset(1, dns.rdatatype.NSEC)}
        cuts = {n for n, node in zone.nodes.items() if node.get_rdataset(1, dns.rdatatype.NS)}
        assert owners == cuts and len(owners) == stats.delegations + 1
        assert types[dns.rdatatype.NSEC3] == 0
    else:
        assert [r.to_text() for r in zone.get_rdataset("com.", "NSEC3PARAM")] == ["1 0 0 -"]
        nsec3 = [
            r
            for node in zone.nodes.values()
            for rds in node
            if rds.rdtype == dns.rdatatype.NSEC3
            for r in rds
        ]
        assert all(r.flags == 1 and r.iterations == 0 and r.salt == b"" for r in nsec3)
        # Opt-out: only the apex and the DS-carrying delegations are in the chain.
        assert len(nsec3) == stats.ds_delegations + 1
        assert types[dns.rdatatype.NSEC] == 0


def test_signing_is_deterministic_but_for_signature_bytes(
    unsigned: tuple[Path, ZoneStats], tmp_path: Path
) -> None:
    src, _ = unsigned
    a = sign_zone(src, tmp_path / "a.zone", "com.", "nsec3", seed=21)
    b = sign_zone(src, tmp_path / "b.zone", "com.", "nsec3", seed=21)
    c = sign_zone(src, tmp_path / "c.zone", "com.", "nsec3", seed=22)
    assert _without_signatures(a) == _without_signatures(b)
    assert _without_signatures(a) != _without_signatures(c)
    assert not any(line.startswith(";") for line in a.read_text().splitlines())


def test_gzip_in_and_out(tmp_path: Path) -> None:
    src = tmp_path / "com.zone.gz"
    generate_zone(src, 1000, seed=3, style="rfc1035")
    dst = sign_zone(src, tmp_path / "signed.zone.gz", "com.", "nsec3", seed=3)
    assert dst.read_bytes()[:2] == b"\x1f\x8b"
    plain = tmp_path / "signed.zone"
    plain.write_bytes(gzip.decompress(dst.read_bytes()))
    verify_zone(plain, "com.")


def test_command_line_signs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zone"
    assert main(["-n", "1000", "--seed", "5", "--sign", "nsec3", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["signed"] == "nsec3" and report["bytes"] == out.stat().st_size
    verify_zone(out, "com.")
    assert os.listdir(tmp_path) == ["cli.zone"]


def test_bad_input_raises_sign_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zone"
    bad.write_text("com. 900 IN SOA a.invalid. b.invalid. 1 2 3 4 5\ncom. 900 IN NS\n")
    with pytest.raises(SignError, match="dnssec-signzone"):
        sign_zone(bad, tmp_path / "out.zone", "com.", "nsec")
    assert not (tmp_path / "out.zone").exists()
    with pytest.raises(ValueError):
        sign_zone(bad, tmp_path / "out.zone", "com.", "nsec5")
