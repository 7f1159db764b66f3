"""The streaming master-file reader against dnspython (and BIND) on the same files.

tests/data/syntax.zone exercises the master-file syntax the issue lists; the reader must
yield exactly the records dnspython's zone parser reads from it, and the generator's two
output styles must read as the same zone.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from datasets.gen_zone import generate_zone
from zoneslice.errors import ZoneFileError
from zoneslice.store.keys import key_name, name_key
from zoneslice.zonefile import ZoneReader, chunk_bounds

DATA = Path(__file__).resolve().parents[1] / "data"
SYNTAX = DATA / "syntax.zone"


def _reference(path: Path, origin: str | None = None) -> set[tuple]:
    """(owner key, type, covers, ttl, rdata wire) of every record dnspython reads."""
    zone = dns.zone.from_file(str(path), origin=origin, relativize=False)
    return {
        (name_key(name, zone.origin), int(rds.rdtype), int(rds.covers), rds.ttl, rd.to_wire())
        for name, node in zone.nodes.items()
        for rds in node.rdatasets
        for rd in rds
    }


def _read(path: Path, origin: str | None = None) -> set[tuple]:
    return {(k, t, c, ttl, w) for k, t, c, w, ttl, _tk, _line in ZoneReader(path, origin)}


@pytest.fixture
def in_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """dnspython opens $INCLUDE files relative to the working directory, zoneslice to the file."""
    monkeypatch.chdir(DATA)


def test_syntax_zone_reads_as_dnspython_reads_it(in_data: None) -> None:
    want = _reference(SYNTAX)
    got = _read(SYNTAX)
    assert got - want == set()
    assert want - got == set()


def test_syntax_zone_exercises_what_it_claims(in_data: None) -> None:
    records = list(ZoneReader(SYNTAX))
    types = {dns.rdatatype.to_text(t) for _k, t, *_ in records}
    for t in (
        "SOA NS A AAAA MX TXT SRV CNAME DNAME DS DNSKEY RRSIG NSEC NSEC3 NSEC3PARAM CAA TLSA SVCB HTTPS "
        "NAPTR SSHFP LOC HINFO PTR SPF URI RP AFSDB KX EUI48 EUI64 APL DHCID IPSECKEY OPENPGPKEY CERT "
        "CDS ZONEMD CSYNC TYPE65280 TYPE65281"
    ).split():
        assert t in types, t
    keys = {k for k, *_ in records}
    origin = dns.name.from_text("example.")
    for owner in (
        "a\\046b", "abc", "\\000", "x\\001y", "sp\\ ace", "caf\\233", "*.wild", "inc1", "inc1.inc",
        "inc3.inc", "host.sub2", "123",
    ):  # fmt: skip
        assert name_key(dns.name.from_text(owner, origin), origin) in keys, owner
    assert len(records) == len(_read(SYNTAX)) + 1  # one duplicate record (WWW.EXAMPLE. A)
    assert {(t, c) for _k, t, c, *_ in records if t == 46} == {(46, 6), (46, 48), (46, 43), (46, 50)}


def test_origin_argument_gives_the_same_records(in_data: None) -> None:
    assert _read(SYNTAX, "EXAMPLE.") == _read(SYNTAX) == _read(SYNTAX, "example")


def test_gzip_and_crlf_give_the_same_records(tmp_path: Path) -> None:
    shutil.copy(DATA / "included.zone", tmp_path / "included.zone")
    gz = tmp_path / "syntax.zone.gz"
    gz.write_bytes(gzip.compress(SYNTAX.read_bytes()))
    crlf = tmp_path / "crlf.zone"
    crlf.write_bytes(SYNTAX.read_bytes().replace(b"\n", b"\r\n"))
    assert _read(gz) == _read(crlf) == _read(SYNTAX)


def test_syntax_zone_agrees_with_bind(tmp_path: Path) -> None:
    """named-checkzone's canonical dump holds the same records.

    TTLs are left out: BIND keeps an included file's $TTL after the $INCLUDE line and gives
    non-adjacent records of one RRset the later TTL; dnspython and zoneslice restore the
    including file's $TTL (RFC 1035 5.1 scoping, like $ORIGIN).
    """
    tool = shutil.which("named-checkzone")
    assert tool, "named-checkzone missing: install bind9-utils (scripts/setup.sh)"
    dump = tmp_path / "dump.zone"
    proc = subprocess.run(
        [tool, "-q", "-D", "-o", str(dump), "example.", "syntax.zone"],
        cwd=DATA, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bind = {(k, t, c, w) for k, t, c, _ttl, w in _reference(dump, "example.")}
    assert {(k, t, c, w) for k, t, c, _ttl, w in _read(SYNTAX)} == bind


def test_generator_styles_read_as_the_same_zone(tmp_path: Path, seed: int = 3) -> None:
    czds, rfc = tmp_path / "czds.zone", tmp_path / "rfc1035.zone.gz"
    generate_zone(czds, 2000, seed=seed, style="czds")
    generate_zone(rfc, 2000, seed=seed, style="rfc1035")
    a, b = _read(czds), _read(rfc)
    assert len(a) > 6000 and a == b
    plain = tmp_path / "rfc1035.zone"
    plain.write_bytes(gzip.decompress(rfc.read_bytes()))
    assert b == _reference(plain)


def test_target_keys_and_lines(in_data: None) -> None:
    """target_key is the in-zone key of an NS/CNAME/MX/SRV/DNAME target (None outside);
    line is where the record starts."""
    origin = dns.name.from_text("example.")
    lines = SYNTAX.read_text().splitlines()
    seen = 0
    for key, rdtype, _covers, wire, _ttl, tkey, line in ZoneReader(SYNTAX):
        rd = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, wire, 0, len(wire))
        target = {2: "target", 5: "target", 15: "exchange", 33: "target", 39: "target"}.get(rdtype)
        if target is not None:
            t = getattr(rd, target)
            assert tkey == (name_key(t, origin) if t.is_subdomain(origin) else None), (line, t)
            seen += 1
        elif rdtype != 12:  # a PTR's target key may be given; nothing uses it
            assert tkey is None, (line, rdtype)
        if key in (b"paren\x00", b"mail2\x00") and rdtype == 1:
            owner = key_name(key, origin).relativize(origin).to_text()
            assert lines[line - 1].startswith(owner), (line, owner)
    assert seen >= 15


def test_soa_minimum_is_the_default_ttl_without_ttl_directive(tmp_path: Path) -> None:
    """As named-checkzone: "no TTL specified; using SOA MINTTL instead" for the whole zone,
    even after a record with an explicit TTL."""
    zone = tmp_path / "z.zone"
    zone.write_text(
        "$ORIGIN example.\n@ SOA ns1 h 1 2 3 4 77\n@ NS ns1\nns1 600 A 192.0.2.1\nb A 192.0.2.2\n"
    )
    ttls = {(k, t): ttl for k, t, _c, _w, ttl, _tk, _l in ZoneReader(zone)}
    assert ttls == {(b"", 6): 77, (b"", 2): 77, (b"ns1\x00", 1): 600, (b"b\x00", 1): 77}


def test_last_explicit_ttl_when_soa_has_one(tmp_path: Path) -> None:
    zone = tmp_path / "z.zone"
    zone.write_text("$ORIGIN example.\n@ 500 SOA ns1 h 1 2 3 4 77\n@ NS ns1\na 300 A 192.0.2.1\nb A 192.0.2.2\n")
    ttls = {(k, t): ttl for k, t, _c, _w, ttl, _tk, _l in ZoneReader(zone)}
    assert ttls == {(b"", 6): 500, (b"", 2): 500, (b"a\x00", 1): 300, (b"b\x00", 1): 300}


HEAD = "$ORIGIN example.\n$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('x NS "quoted"\n', "bad NS rdata"),
        ('x 300 IN NS "quoted"\n', "bad NS rdata"),
        ('x MX 10 "quoted"\n', "bad MX rdata"),
        ("x 300 IN DS 1 8 2 abcd\n", "digest length"),
        ("x 300 IN DS 1 8 2_0 " + "ab" * 32 + "\n", "bad DS rdata"),
        ("x 300 IN DS 1 8 +2 " + "ab" * 32 + "\n", "bad DS rdata"),
        ("x 300 IN DS 1 8 2 " + "ab" * 31 + "a\n", "bad DS rdata"),
        ("x 300 IN A 01.2.3.4\n", "bad A rdata"),
        ("x 300 IN AAAA 1::2::3\n", "bad AAAA rdata"),
        ("x 300 IN MX 70000 ns1\n", "bad MX rdata"),
        ("x 300 IN A 192.0.2.1 )\n", "bad A rdata"),
        ("x 300 IN NS " + "a" * 64 + ".net.\n", "over-long label"),
        ("x A IN 192.0.2.1\n", "bad A rdata"),
        ("x HTTPS 1 . alpn= \"h2\"\n", "bad HTTPS rdata"),
        ("x TXT\n", "has no rdata"),
        ("x 300 IN\n", "record has no type"),
        ("$GENERATE 1-2 x$ A 192.0.2.$\n", "unsupported directive"),
        ("$ORIGIN\n", "$ORIGIN takes one name"),
    ],
)
def test_malformed_lines_are_rejected_like_dnspython_rejects_them(tmp_path: Path, body: str, reason: str) -> None:
    zone = tmp_path / "z.zone"
    zone.write_text(HEAD + body)
    with pytest.raises(ZoneFileError) as info:
        list(ZoneReader(zone))
    assert (info.value.line, info.value.filename) == (5, str(zone))
    assert reason in info.value.reason
    if not body.startswith("$"):
        with pytest.raises(dns.exception.SyntaxError):
            dns.zone.from_file(str(zone), relativize=False)


def test_quoted_values_glued_to_keys_and_strings(tmp_path: Path) -> None:
    """SVCB key="value" has no space after '='; a quote inside a TXT word splits it as dnspython does."""
    zone = tmp_path / "z.zone"
    zone.write_text(
        HEAD + 'x HTTPS 1 . alpn="h2,h3" port="8443" ech="AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA"\n'
        'x TXT a"b c"d "e"f\n'
    )
    assert _read(zone) == _reference(zone)


def test_chunk_bounds_cut_before_owner_lines(tmp_path: Path) -> None:
    zone = tmp_path / "z.zone"
    generate_zone(zone, 3000, seed=5, style="rfc1035")
    data = zone.read_bytes()
    for n in (2, 3, 7):
        chunks = chunk_bounds(zone, n)
        assert chunks[0][:1] == (0,) and chunks[-1][1] == len(data)
        for (_s, e, _l), (s2, _e2, line) in zip(chunks, chunks[1:], strict=False):
            assert e == s2 and data[s2 - 1 : s2] == b"\n"
            assert data[s2 : s2 + 1] not in (b" ", b"\t", b"$", b";", b"(", b")", b"\n")
            assert data[:s2].count(b"\n") + 1 == line


def test_error_inside_an_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "inner.zone").write_text("ok A 192.0.2.1\n\nbad A 192.0.2.256\n")
    zone = tmp_path / "z.zone"
    zone.write_text(HEAD + "$INCLUDE inner.zone\n")
    with pytest.raises(ZoneFileError) as info:
        list(ZoneReader(zone))
    assert str(info.value).startswith(f"{tmp_path / 'inner.zone'}:3: bad A rdata")
