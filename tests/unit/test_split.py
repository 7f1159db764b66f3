"""split_zone: boundaries, the parallel parse, bad input, TTL normalisation, CNAME target copies.

Slice equivalence on generated plain/NSEC/NSEC3 zones is checked record by record in
tests/integration/test_split_signed.py; here are the properties that need no signer.
"""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
from pathlib import Path

import dns.name
import dns.zone
import pytest

from datasets.gen_zone import generate_zone
from zoneslice import split
from zoneslice.errors import ManifestError, SliceError, ZoneFileError
from zoneslice.manifest import load_manifest
from zoneslice.split import default_out_dir, split_zone
from zoneslice.store import models
from zoneslice.store.keys import key_labels, name_key

DATA = Path(__file__).resolve().parents[1] / "data"
HEAD = "$ORIGIN example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 604800 300\n@ NS ns1\nns1 A 192.0.2.1\n"


def _rows(out: Path) -> list[set[tuple]]:
    """Every slice's rows, in slice order."""
    m = load_manifest(out)
    result = []
    for s in m.slices:
        conn = sqlite3.connect(f"file:{out / s.file}?mode=ro", uri=True)
        try:
            result.append(set(conn.execute("SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr")))
        finally:
            conn.close()
    return result


def _tree(d: Path) -> dict[str, str]:
    """File name -> sha256 of everything under ``d`` (to prove a failed split touched nothing)."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


@pytest.fixture(scope="module")
def big_zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "com.zone"
    generate_zone(path, 20000, seed=7)
    return path


@pytest.fixture(scope="module")
def small_zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "com.zone"
    generate_zone(path, 3000, seed=9)
    return path


# -- boundaries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 3, 5, 13])
def test_records_boundaries_balanced_within_5_percent(big_zone: Path, tmp_path: Path, parts: int) -> None:
    m = split_zone(big_zone, parts, tmp_path / "s").manifest
    owned = [s.records_owned for s in m.slices]
    mean = sum(owned) / parts
    assert all(abs(n - mean) <= 0.05 * mean for n in owned), owned
    assert m.bounds[0] == "" and m.bounds == sorted(m.bounds) and len(set(m.bounds)) == parts


def test_letter_boundaries_cut_only_between_first_characters(small_zone: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    m = split_zone(small_zone, 3, out, by="letter").manifest
    assert m.by == "letter"
    assert all(len(b) == 1 for b in m.bounds[1:]), m.bounds
    slices_of_char: dict[bytes, set[int]] = {}
    for i, rows in enumerate(_rows(out)):
        for rkey, *_rest, origin in rows:
            if origin == models.OWNED and rkey:
                slices_of_char.setdefault(key_labels(rkey)[0][:1], set()).add(i)
    assert len(slices_of_char) > 3
    assert all(len(s) == 1 for s in slices_of_char.values())
    assert all(s.records_owned > 0 for s in m.slices)


def test_records_boundaries_can_use_longer_prefixes(big_zone: Path, tmp_path: Path) -> None:
    """One letter is too coarse for 13 balanced parts of a .com-like zone."""
    m = split_zone(big_zone, 13, tmp_path / "s").manifest
    assert any(len(b) > 1 for b in m.bounds)


@pytest.mark.parametrize(("parts", "by"), [(4, "records"), (5, "records"), (4, "letter")])
def test_more_parts_than_labels_is_a_slice_error(tmp_path: Path, parts: int, by: str) -> None:
    zone = tmp_path / "few.zone"
    zone.write_text(HEAD + "alpha A 192.0.2.2\nbeta A 192.0.2.3\n")  # labels: alpha, beta, ns1
    assert len(split_zone(zone, 3, tmp_path / "ok", by=by).manifest.slices) == 3
    with pytest.raises(SliceError, match=r"\b(non-empty ranges|distinct first characters)\b"):
        split_zone(zone, parts, tmp_path / "s", by=by)
    assert not (tmp_path / "s").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.zone", "ok"]


@pytest.mark.parametrize(("parts", "by"), [(0, "records"), (2, "size")])
def test_bad_split_arguments(small_zone: Path, tmp_path: Path, parts: int, by: str) -> None:
    with pytest.raises(SliceError):
        split_zone(small_zone, parts, tmp_path / "s", by=by)
    assert list(tmp_path.iterdir()) == []


def test_default_out_dir_and_gzip_input(small_zone: Path, tmp_path: Path) -> None:
    gz = tmp_path / "com.zone.gz"
    gz.write_bytes(gzip.compress(small_zone.read_bytes()))
    assert default_out_dir(gz) == tmp_path / "com.slices"
    result = split_zone(gz, 3)
    assert result.directory == tmp_path / "com.slices"
    plain = split_zone(small_zone, 3, tmp_path / "plain")
    assert _rows(result.directory) == _rows(plain.directory)
    assert result.manifest.records_in == plain.manifest.records_in > 9000


def test_progress_reports_records_and_bytes(small_zone: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    result = split_zone(small_zone, 2, tmp_path / "s", progress=lambda *a: calls.append(a))
    size = small_zone.stat().st_size
    assert calls and calls[-1] == (result.manifest.records_in, size, size)
    assert all(total == size and 0 <= done <= size for _r, done, total in calls)


def test_syntax_zone_split_in_one_part_holds_what_dnspython_reads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(DATA)  # dnspython opens $INCLUDE files relative to the working directory
    zone = dns.zone.from_file("syntax.zone", relativize=False)
    want = set()
    for name, node in zone.nodes.items():
        for rds in node.rdatasets:
            nsec3 = rds.rdtype == 50 or rds.covers == 50
            origin = models.COPY_NSEC3 if nsec3 else models.OWNED
            for rd in rds:
                want.add((name_key(name, zone.origin), rds.rdtype, rds.covers, rd.to_wire(), rds.ttl, origin))
    m = split_zone(DATA / "syntax.zone", 1, tmp_path / "s").manifest
    assert m.dnssec == "nsec3" and m.serial == 2026010101 and m.origin == "example."
    assert _rows(tmp_path / "s") == [want]


def test_cname_target_in_another_slice_is_copied(tmp_path: Path) -> None:
    zone = tmp_path / "c.zone"
    zone.write_text(
        HEAD
        + "alias CNAME zz-target\nalias2 CNAME alias\nchain CNAME zz-hop\nzz-hop CNAME zz-end\n"
        + "zz-target A 192.0.2.9\nzz-target TXT t\nzz-end AAAA 2001:db8::9\nmid A 192.0.2.10\n"
    )
    out = tmp_path / "s"
    m = split_zone(zone, 3, out).manifest
    plan = m.plan
    first = plan.slice_for("alias.example.")
    assert first == plan.slice_for("chain.example.") != plan.slice_for("zz-target.example.")
    rows = _rows(out)[first]
    copied = {(key_labels(k)[0], t) for k, t, _c, _d, _ttl, o in rows if o == models.COPY_TARGET}
    assert copied == {(b"zz-target", 1), (b"zz-target", 16), (b"zz-hop", 5), (b"zz-end", 28)}
    assert m.slices[first].records_copied.get("cname_target") == 4


# -- TTL normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_rrset_with_different_ttls_gets_the_first_records_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(split, "_PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(split.os, "cpu_count", lambda: 2)
    zone = tmp_path / "t.zone"
    zone.write_text(
        HEAD
        + "adj 600 A 192.0.2.1\nadj 300 A 192.0.2.2\nadj A 192.0.2.3\n"  # adjacent (as BIND)
        + "far 300 A 192.0.2.1\nother A 192.0.2.1\nfar 600 A 192.0.2.2\n"  # not adjacent
        + "sig 500 TXT a\nsig 100 TXT b\n"
        + "".join(f"pad{i} 300 A 192.0.2.{i % 250}\n" for i in range(300))
    )
    out = tmp_path / "s"
    m = split_zone(zone, 1, out).manifest
    ttls: dict[tuple[bytes, int], set[int]] = {}
    for rkey, rdtype, _c, _d, ttl, _o in _rows(out)[0]:
        ttls.setdefault((rkey, rdtype), set()).add(ttl)
    assert ttls[(b"adj\x00", 1)] == {600}
    assert ttls[(b"far\x00", 1)] == {300}
    assert ttls[(b"sig\x00", 16)] == {500}
    assert all(len(v) == 1 for v in ttls.values())
    assert m.source["ttl_normalised_rrsets"] >= 3


# -- the parallel (2-process) parse --------------------------------------------------------------


def _staging_count(zone: Path, tmp: Path) -> int:
    tmp.mkdir()
    _reader, staging = split._Splitter(zone, 3, tmp / "out", "records", None, None).load(tmp)
    return len(staging)


def _variant(small_zone: Path, tmp_path: Path, kind: str) -> Path:
    lines = small_zone.read_text().splitlines(keepends=True)
    path = tmp_path / f"{kind}.zone"
    if kind == "czds":
        text = "".join(lines)
    elif kind == "soa-last":
        text = "".join(lines[1:] + lines[:1])
    elif kind == "ttl-directive":  # a $TTL after records, in the first chunk
        text = "".join(lines[:20] + ["$TTL 3600\n"] + lines[20:])
    elif kind == "origin-directive":
        text = "".join(lines[:20] + ["$ORIGIN com.\n"] + lines[20:])
    elif kind == "ttl-inherited":  # only the first record states a TTL: chunk 2 depends on chunk 1
        text = "".join(lines[:1] + [ln.replace("\t172800\t", "\t").replace("\t86400\t", "\t") for ln in lines[1:]])
    elif kind == "parens":  # continuation lines start in column 0, so a cut can land inside a record
        text = "".join(lines[:14]) + "".join(
            f"t{i}\t300\tIN\tTXT\t(\n\"chunk {i}\"\n\"two\" )\n" for i in range(3000)
        )
    elif kind == "rfc1035":
        generate_zone(path, 3000, seed=9, style="rfc1035")
        return path
    else:
        raise AssertionError(kind)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("kind", "parallel"),
    [
        ("czds", True),
        ("soa-last", True),
        ("ttl-directive", False),
        ("origin-directive", False),
        ("ttl-inherited", False),
        ("rfc1035", False),
        ("parens", None),  # either, depending on where the cut lands
    ],
)
def test_parallel_parse_gives_the_same_slices(
    small_zone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, parallel: bool | None
) -> None:
    zone = _variant(small_zone, tmp_path, kind)
    serial = split_zone(zone, 3, tmp_path / "serial").manifest
    monkeypatch.setattr(split, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(split.os, "cpu_count", lambda: 2)
    if parallel is not None:
        assert _staging_count(zone, tmp_path / "probe") == (2 if parallel else 1)
    par = split_zone(zone, 3, tmp_path / "parallel").manifest
    assert _rows(tmp_path / "parallel") == _rows(tmp_path / "serial")
    assert (par.bounds, par.serial, par.records_in) == (serial.bounds, serial.serial, serial.records_in)
    for a, b in zip(par.slices, serial.slices, strict=True):
        assert (a.names, a.records_owned, a.records_apex, a.records_copied) == (
            b.names, b.records_owned, b.records_apex, b.records_copied,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_parallel_parse_reports_bad_input_like_the_serial_one(
    small_zone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = small_zone.read_text().splitlines(keepends=True)
    bad_line = len(lines) - 10
    lines[bad_line - 1] = "broken.com.\t300\tIN\tA\t192.0.2.300\n"
    zone = tmp_path / "bad.zone"
    zone.write_text("".join(lines))
    monkeypatch.setattr(split, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(split.os, "cpu_count", lambda: 2)
    with pytest.raises(ZoneFileError) as info:
        split_zone(zone, 3, tmp_path / "s")
    assert (info.value.filename, info.value.line) == (str(zone), bad_line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zone"]


def test_many_first_octets_give_the_same_slices_in_several_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slice is built from one staging table per first octet of the key, read in
    compound SELECTs of at most _MAX_ARMS tables: cutting them into more statements
    (as for a zone whose labels start with hundreds of different octets) changes nothing."""
    zone = tmp_path / "octets.zone"
    zone.write_text(
        HEAD + "".join(f"\\{o:03d}x{o} A 192.0.2.{o % 250}\n" for o in range(33, 256) if o != 46)
        + "".join(f"dup{i} 300 A 192.0.2.{i}\nother{i} A 192.0.2.1\ndup{i} 600 A 192.0.2.{i}\n" for i in range(20))
    )
    whole = split_zone(zone, 3, tmp_path / "whole").manifest
    monkeypatch.setattr(split, "_MAX_ARMS", 3)
    cut = split_zone(zone, 3, tmp_path / "cut").manifest
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert [s.records_owned for s in cut.slices] == [s.records_owned for s in whole.slices]
    assert sum(s.records_owned for s in whole.slices) == 222 + 40 + 1  # + ns1
    ttls = {(k, t): ttl for rows in _rows(tmp_path / "cut") for k, t, _c, _d, ttl, _o in rows}
    assert all(ttls[(f"dup{i}".encode() + b"\x00", 1)] == 300 for i in range(20))


# -- bad input -------------------------------------------------------------------------------------

BAD = {
    # name: (zone text, line or None, reason)
    "malformed A": (HEAD + "www A 192.0.2.300\n", 6, "bad A rdata"),
    "unknown type": (HEAD + "www BOGUS 1\n", 6, "unknown type 'BOGUS'"),
    "bad TTL": (HEAD + "www 1x A 192.0.2.1\n", 6, "bad TTL '1x'"),
    "TTL too large": (HEAD + "www 2147483648 A 192.0.2.1\n", 6, "above 2^31-1"),
    "$TTL too large": (HEAD + "$TTL 4294967295\nwww A 192.0.2.1\n", 6, "above 2^31-1"),
    "unclosed parenthesis": (HEAD + "www TXT ( a\nb\n", 6, "unbalanced '('"),
    "extra parenthesis": (HEAD + 'www TXT "a" )\n', 6, "unbalanced ')'"),
    "unterminated quote": (HEAD + 'www TXT "abc\nx A 192.0.2.1\n', 6, "unterminated quoted string"),
    "out-of-zone owner": (HEAD + "www.example.net. A 192.0.2.1\n", 6, "outside the zone example."),
    "missing SOA": ("$ORIGIN example.\n$TTL 300\n@ NS ns1\nns1 A 192.0.2.1\n", None, "no SOA record"),
    "SOA not at apex": (HEAD + "www SOA ns1 h 1 2 3 4 5\n", 6, "SOA record at www is not at the apex"),
    "second SOA": (HEAD + "@ SOA ns1 h 2 2 3 4 5\n", 6, "second SOA record"),
    "CNAME beside data": (HEAD + "www CNAME ns1\nwww A 192.0.2.2\n", 6, "CNAME at www beside other data"),
    "two CNAMEs": (HEAD + "www CNAME ns1\nwww CNAME ns2\n", 6, "more than one CNAME at www"),
    "no NS at apex": ("$ORIGIN example.\n$TTL 300\n@ SOA ns1 h 1 2 3 4 5\nns1 A 192.0.2.1\n", None, "no NS records at the apex"),
    "missing $INCLUDE": (HEAD + "$INCLUDE missing.zone\n", 6, "does not exist"),
    "relative name, no origin": ("$TTL 300\nwww A 192.0.2.1\n", 2, "cannot tell the zone origin"),
    "@ without origin": ("@ 300 SOA ns1.example. h.example. 1 2 3 4 5\n", 1, "cannot tell the zone origin"),
    "non-IN class": (HEAD + "www CH TXT hi\n", 6, "class CH is not IN"),
    "no TTL": ("$ORIGIN example.\nns1 A 192.0.2.1\n@ 300 SOA ns1 h 1 2 3 4 5\n", 2, "no TTL"),
    "owner label too long": (HEAD + "a" * 64 + " A 192.0.2.1\n", 6, "63 octets"),
    "empty file": ("", None, "holds no records"),
    "comments only": ("; nothing here\n\n   \n", None, "holds no records"),
}


def _write_bad(tmp_path: Path, name: str) -> Path:
    text = BAD[name][0]
    zone = tmp_path / "in" / "bad.zone"
    zone.parent.mkdir()
    zone.write_text(text)
    return zone


@pytest.fixture
def previous_split(tmp_path: Path) -> Path:
    """A good split already in the output directory, which a failed split must leave alone."""
    good = tmp_path / "good.zone"
    good.write_text(HEAD + "".join(f"{c}name A 192.0.2.{i}\n" for i, c in enumerate("abcdefgh")))
    out = tmp_path / "out" / "slices"
    split_zone(good, 3, out)
    good.unlink()
    return out


def _assert_untouched(out: Path, before: dict[str, str]) -> None:
    assert _tree(out.parent) == before
    assert [p.name for p in out.parent.iterdir()] == ["slices"]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_names_file_line_and_reason_and_changes_nothing(
    tmp_path: Path, previous_split: Path, name: str
) -> None:
    zone = _write_bad(tmp_path, name)
    _text, line, reason = BAD[name]
    before = _tree(previous_split.parent)
    with pytest.raises(ZoneFileError) as info:
        split_zone(zone, 1, previous_split)
    err = info.value
    assert err.filename == str(zone) and err.line == line and reason in err.reason
    where = f"{zone}:{line}" if line is not None else str(zone)
    assert str(err).startswith(f"{where}: ") and reason in str(err)
    _assert_untouched(previous_split, before)
    assert sorted(p.name for p in zone.parent.iterdir()) == ["bad.zone"]


def test_truncated_gzip_is_bad_input_and_changes_nothing(
    small_zone: Path, tmp_path: Path, previous_split: Path
) -> None:
    data = gzip.compress(small_zone.read_bytes())
    zone = tmp_path / "in" / "trunc.zone.gz"
    zone.parent.mkdir()
    zone.write_bytes(data[: len(data) // 2])
    before = _tree(previous_split.parent)
    with pytest.raises(ZoneFileError) as info:
        split_zone(zone, 3, previous_split)
    err = info.value
    assert err.filename == str(zone) and err.line is not None and err.line > 1
    assert "read failed" in err.reason and str(err).startswith(f"{zone}:{err.line}: ")
    _assert_untouched(previous_split, before)


def test_missing_zone_file(tmp_path: Path) -> None:
    with pytest.raises(ZoneFileError, match="no such file"):
        split_zone(tmp_path / "nope.zone", 3, tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_failed_split_removes_its_temporary_directory_on_any_error(
    tmp_path: Path, previous_split: Path, small_zone: Path
) -> None:
    """Also for errors found late (after the slices are built): a CNAME beside data in slice 2."""
    lines = small_zone.read_text().splitlines(keepends=True)
    zone = tmp_path / "late.zone"
    zone.write_text("".join(lines) + "zzzz-late.com.\t300\tIN\tCNAME\tx.net.\nzzzz-late.com.\t300\tIN\tTXT\tt\n")
    before = _tree(previous_split.parent)
    with pytest.raises(ZoneFileError, match="CNAME at zzzz-late beside other data") as info:
        split_zone(zone, 3, previous_split)
    assert info.value.line == len(lines) + 1
    _assert_untouched(previous_split, before)


# -- manifest ----------------------------------------------------------------------------------


def test_manifest_round_trip_and_errors(small_zone: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = split_zone(small_zone, 3, out)
    m = load_manifest(out / "manifest.json")
    assert m == result.manifest and m.directory == out
    assert m.slice_path(2) == out / m.slices[2].file and m.slice_path(2).exists()
    with pytest.raises(SliceError):
        m.slice_path(3)
    assert all(m.plan.slice_for(dns.name.from_text(f"{s.first}.com.")) == s.index for s in m.slices)
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    for text, why in [
        ("{", "not a readable manifest"),
        ('{"format": "other"}', "format is"),
        ((out / "manifest.json").read_text().replace('"bounds": [', '"bounds": ["zz", '), "malformed"),
    ]:
        bad.write_text(text)
        with pytest.raises(ManifestError, match=why):
            load_manifest(bad)
