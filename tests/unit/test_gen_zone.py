"""The .com-like zone generator: determinism, shape, glue integrity, both styles, gzip."""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from datasets.gen_zone import LabelSpace, ZoneStats, generate_zone, main

DELEGATIONS = 5000


def _records(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        return [line.rstrip("\n").split("\t") for line in fh]


def _checkzone(origin: str, path: Path) -> str:
    tool = shutil.which("named-checkzone")
    assert tool, "named-checkzone missing: install bind9-utils (scripts/setup.sh)"
    # -i local: do not resolve out-of-zone NS targets (no network here); in-zone
    # and sibling-glue checks stay on.
    proc = subprocess.run(
        [tool, "-i", "local", origin, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ZoneStats, list[list[str]]]:
    path = tmp_path_factory.mktemp("gen") / "com.zone"
    stats = generate_zone(path, DELEGATIONS, seed=7, serial=2026112101)
    return path, stats, _records(path)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for style in ("czds", "rfc1035"):
        a, b, c = tmp_path / f"a.{style}", tmp_path / f"b.{style}", tmp_path / f"c.{style}"
        generate_zone(a, 2000, seed=3, style=style)
        generate_zone(b, 2000, seed=3, style=style)
        generate_zone(c, 2000, seed=4, style=style)
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
    owners3 = {r[0] for r in _records(tmp_path / "a.czds")}
    owners4 = {r[0] for r in _records(tmp_path / "c.czds")}
    assert len(owners3 & owners4) < 0.2 * len(owners3)


def test_czds_format_apex_and_ttls(zone: tuple[Path, ZoneStats, list[list[str]]]) -> None:
    _, stats, recs = zone
    assert all(len(r) == 5 for r in recs)
    assert recs[0][:4] == ["com.", "900", "IN", "SOA"]
    assert recs[0][4].split() == [
        "a.gtld-servers.net.",
        "nstld.verisign-grs.com.",
        "2026112101",
        "1800",
        "900",
        "604800",
        "86400",
    ]
    assert recs[1:14] == [
        ["com.", "172800", "IN", "NS", f"{c}.gtld-servers.net."] for c in "abcdefghijklm"
    ]
    ttl = {"NS": "172800", "A": "172800", "AAAA": "172800", "DS": "86400"}
    for owner, t, cls, typ, _ in recs[14:]:
        assert owner == owner.lower() and owner.endswith(".com.") and cls == "IN"
        assert t == ttl[typ]
    assert "com." not in {r[0] for r in recs[14:]}
    assert stats.records == len(recs)
    assert stats.bytes == stats.text_bytes == zone[0].stat().st_size


def test_each_owner_is_contiguous_and_labels_unique(
    zone: tuple[Path, ZoneStats, list[list[str]]],
) -> None:
    _, stats, recs = zone
    seen: set[str] = set()
    previous = None
    for r in recs:
        if r[0] != previous:
            assert r[0] not in seen, f"{r[0]} appears in two places"
            seen.add(r[0])
            previous = r[0]
    delegated = [r[0] for r in recs[14:] if r[3] == "NS"]
    assert len(set(delegated)) == stats.delegations == DELEGATIONS
    for name in set(delegated):
        label = name[: -len(".com.")]
        assert "." not in label and 1 <= len(label) <= 63
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", label), label


def test_shape_matches_com(zone: tuple[Path, ZoneStats, list[list[str]]]) -> None:
    _, stats, recs = zone
    by_type = collections.Counter(r[3] for r in recs[14:])
    assert (by_type["NS"], by_type["A"], by_type["AAAA"], by_type["DS"]) == (
        stats.ns,
        stats.glue_a,
        stats.glue_aaaa,
        stats.ds,
    )
    n = stats.delegations
    assert 2.1 <= stats.ns / n <= 2.55
    assert 0.28 <= stats.glued_delegations / n <= 0.39
    assert 0.04 <= stats.ds_delegations / n <= 0.08
    assert 0.08 <= stats.glue_aaaa / stats.glue_a <= 0.22
    assert stats.sibling_ns > 0.1 * stats.ns and stats.out_of_zone_ns > 0.3 * stats.ns
    assert stats.in_bailiwick_ns + stats.sibling_ns + stats.out_of_zone_ns == stats.ns
    for r in recs:
        if r[3] == "DS":
            tag, alg, digest_type, digest = r[4].split()
            assert 0 <= int(tag) <= 65535 and alg in ("8", "13") and digest_type == "2"
            assert re.fullmatch(r"[0-9A-F]{64}", digest)


def test_first_letters_are_skewed(zone: tuple[Path, ZoneStats, list[list[str]]]) -> None:
    _, stats, recs = zone
    labels = {r[0][:-5] for r in recs[14:] if r[3] == "NS"}
    first = collections.Counter(label[0] for label in labels)
    n = len(labels)
    assert first.most_common(1)[0][0] == "s"
    assert sum(first[c] for c in "scmbapt") > 0.40 * n
    assert all(first[c] < 0.015 * n for c in "xqz")
    assert 0.005 * n < sum(first[c] for c in "0123456789") < 0.05 * n
    assert max(first.values()) > 10 * min(first[c] for c in "abcdefghijklmnopqrstuvwxyz")
    assert 0.03 * n < sum("-" in label for label in labels) < 0.2 * n
    assert 0.03 * n < sum(any(ch.isdigit() for ch in label[1:]) for label in labels)


def test_glue_is_under_delegations_and_in_zone_targets_have_addresses(
    zone: tuple[Path, ZoneStats, list[list[str]]],
) -> None:
    _, _, recs = zone
    delegations = {r[0] for r in recs[14:] if r[3] == "NS"}
    addressed = {r[0] for r in recs if r[3] in ("A", "AAAA")}
    targets = {r[4] for r in recs[14:] if r[3] == "NS"}
    for host in addressed:
        parent = host.split(".", 1)[1]
        while parent.count(".") > 1 and parent not in delegations:
            parent = parent.split(".", 1)[1]
        assert parent in delegations, f"glue {host} is not below a delegation"
    assert addressed <= targets, "glue nobody refers to"
    in_zone = {t for t in targets if t.endswith(".com.")}
    assert in_zone <= addressed, sorted(in_zone - addressed)[:5]
    owner_of = {}
    for r in recs[14:]:
        if r[3] == "NS" and r[4] in in_zone:
            owner_of.setdefault(r[0], set()).add(r[4])
    sibling = [(d, t) for d, ts in owner_of.items() for t in ts if not t.endswith("." + d)]
    assert sibling, "no sibling glue"
    assert all(
        t.split(".", 1)[1] in delegations or t.split(".", 2)[2] in delegations for _, t in sibling
    )
    assert any(not t.endswith(".com.") for t in targets)


def test_named_checkzone_accepts_both_styles(tmp_path: Path) -> None:
    for style in ("czds", "rfc1035"):
        path = tmp_path / f"{style}.zone"
        stats = generate_zone(path, 3000, seed=11, style=style)
        out = _checkzone("com.", path)
        assert out.splitlines() == [f"zone com/IN: loaded serial {stats.serial}", "OK"], out


def test_named_checkzone_reports_missing_glue(
    tmp_path: Path, zone: tuple[Path, ZoneStats, list[list[str]]]
) -> None:
    """The check above is only worth something if it catches a broken zone."""
    path, _, recs = zone
    victim = next(r[0] for r in recs if r[3] == "A")
    broken = tmp_path / "broken.zone"
    broken.write_text("".join("\t".join(r) + "\n" for r in recs if r[0] != victim))
    assert "has no" in _checkzone("com.", broken)


def test_both_styles_parse_to_the_same_zone(tmp_path: Path) -> None:
    czds, rfc = tmp_path / "czds.zone", tmp_path / "rfc.zone"
    stats = generate_zone(czds, 1500, seed=5, style="czds")
    stats_rfc = generate_zone(rfc, 1500, seed=5, style="rfc1035")
    text = rfc.read_text()
    for feature in (
        "$ORIGIN com.\n",
        "$TTL 172800",
        "(\n",
        "; serial",
        "\n\tNS\t",
        "IN 172800 ",
        "2d ",
        ".com.\tNS",
    ):
        assert feature in text, feature
    assert re.search(r"^\$ORIGIN [a-z0-9-]+\.com\.$", text, re.M), "no $ORIGIN switch"
    a = dns.zone.from_file(str(czds), origin="com.", relativize=False, check_origin=True)
    b = dns.zone.from_file(str(rfc), origin="com.", relativize=False, check_origin=True)
    assert a == b
    assert sum(len(rds) for node in a.nodes.values() for rds in node) == stats.records
    assert (
        stats_rfc.records == stats.records and stats_rfc.ns == stats.ns and stats_rfc.ds == stats.ds
    )
    ds = b.get_rdataset(
        next(n for n, node in b.nodes.items() if node.get_rdataset(1, dns.rdatatype.DS)), "DS"
    )
    assert ds is not None and ds.ttl == 86400
    glue = next(n for n, node in b.nodes.items() if node.get_rdataset(1, dns.rdatatype.A))
    assert b.get_rdataset(glue, "A").ttl == 172800


def test_gzip_output_is_the_same_text_and_deterministic(tmp_path: Path) -> None:
    plain, gz1, gz2 = tmp_path / "z", tmp_path / "z1.gz", tmp_path / "z2.gz"
    s_plain = generate_zone(plain, 2000, seed=9)
    s_gz = generate_zone(gz1, 2000, seed=9)
    generate_zone(gz2, 2000, seed=9)
    assert gz1.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz1.read_bytes()) == plain.read_bytes()
    assert gz1.read_bytes() == gz2.read_bytes()
    assert s_gz.text_bytes == s_plain.bytes and s_gz.bytes == gz1.stat().st_size < s_plain.bytes / 3


def test_label_space_is_a_bijection() -> None:
    space = LabelSpace(1000, seed=2)
    assert sorted(space.permute(i) for i in range(space.size)) == list(range(space.size))
    big = LabelSpace(300_000, seed=2)
    cores = [big.core(i) for i in range(300_000)]
    assert len(set(cores)) == len(cores)
    assert big.size >= 1.2 * 300_000


def test_other_origins(tmp_path: Path) -> None:
    for origin in ("net.", "example.co.uk."):
        path = tmp_path / f"{origin}zone"
        stats = generate_zone(path, 1000, seed=1, origin=origin.upper())
        assert stats.origin == origin
        recs = _records(path)
        assert all(r[0].endswith("." + origin) or r[0] == origin for r in recs)
        apex_ns = [r[4] for r in recs if r[0] == origin and r[3] == "NS"]
        assert len(apex_ns) == 13 and not any(t.endswith("." + origin) for t in apex_ns)
        _checkzone(origin, path)
    with pytest.raises(ValueError):
        generate_zone(tmp_path / "root.zone", 10, origin=".")
    with pytest.raises(ValueError):
        generate_zone(tmp_path / "bad.zone", 10, style="bind")
    assert not (tmp_path / "bad.zone").exists() and not (tmp_path / "root.zone").exists()
    assert sorted(os.listdir(tmp_path)) == ["example.co.uk.zone", "net.zone"]


def test_command_line_prints_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zone.gz"
    assert main(["--delegations", "1200", "--seed", "4", "--style", "rfc1035", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["delegations"] == 1200 and report["style"] == "rfc1035"
    assert report["bytes"] == out.stat().st_size and report["records"] > 1200 * 3
    zone = dns.zone.from_text(
        gzip.decompress(out.read_bytes()).decode(), origin="com.", relativize=False
    )
    assert zone.origin == dns.name.from_text("com.")
    assert sum(len(rds) for node in zone.nodes.values() for rds in node) == report["records"]


@pytest.mark.slow
def test_million_delegations_fast_and_unique(tmp_path: Path) -> None:
    """Benchmark-sized zone: rate near the 300 k records/s goal, labels still unique."""
    path = tmp_path / "1m.zone"
    stats = generate_zone(path, 1_000_000, seed=1)
    assert stats.records / stats.seconds > 250_000, stats
    owners = set()
    with open(path) as fh:
        for line in fh:
            if "\tNS\t" in line:
                owners.add(line.split("\t", 1)[0])
    assert len(owners) == 1_000_001
    assert 2.2 <= stats.ns / stats.delegations <= 2.4
