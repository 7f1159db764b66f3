"""Slice equivalence of `split` on generated zones: plain, NSEC-signed, NSEC3 opt-out signed.

The expected content of every slice is rebuilt independently from a dnspython parse of the
input and the manifest's bounds: every input record is OWNED by exactly the slice that
SlicePlan.slice_for names (the apex by every slice, the NSEC3 chain by none), and the only
copies are the documented ones (sibling glue, the NSEC before the slice and before
``*.origin``, the whole NSEC3 chain). Then the manifest's counts, names, checksums and
lookup rule are checked against the files.
"""

from __future__ import annotations

import bisect
import hashlib
import shutil
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from datasets.gen_zone import generate_zone
from datasets.sign import sign_zone
from zoneslice.manifest import load_manifest
from zoneslice.slicing import label_text
from zoneslice.split import split_zone
from zoneslice.store import models
from zoneslice.store.keys import key_labels, name_key

DELEGATIONS = 3000
ORIGIN = "com."
_A, _NS, _CNAME, _MX, _AAAA, _SRV, _RRSIG, _NSEC, _NSEC3 = 1, 2, 5, 15, 28, 33, 46, 47, 50
_KIND = {
    models.COPY_GLUE: "glue",
    models.COPY_NSEC: "nsec",
    models.COPY_NSEC3: "nsec3",
    models.COPY_TARGET: "cname_target",
}


class ZoneFacts:
    """The input zone as dnspython reads it, indexed for computing expected slices."""

    def __init__(self, path: Path) -> None:
        zone = dns.zone.from_file(str(path), origin=ORIGIN, relativize=False)
        self.origin: dns.name.Name = zone.origin
        self.records: dict[tuple, int] = {}  # (key, type, covers, rdata) -> ttl
        self.names: dict[bytes, dns.name.Name] = {}
        self.targets: list[tuple[bytes, dns.name.Name]] = []  # (owner key, NS/MX/SRV target)
        self.addresses: dict[bytes, set[tuple]] = defaultdict(set)
        self.by_key: dict[bytes, set[tuple]] = defaultdict(set)
        self.nsec_owners: list[dns.name.Name] = []
        self.serial = zone.get_soa().serial
        for name, node in zone.nodes.items():
            key = name_key(name, self.origin)
            self.names[key] = name
            for rds in node.rdatasets:
                for rd in rds:
                    rec = (key, int(rds.rdtype), int(rds.covers), rd.to_wire())
                    self.records[rec] = rds.ttl
                    self.by_key[key].add(rec)
                    if rds.rdtype in (_NS, _MX, _SRV):
                        target = rd.exchange if rds.rdtype == _MX else rd.target
                        self.targets.append((key, target))
                    if rds.rdtype in (_A, _AAAA):
                        self.addresses[key].add(rec)
                if rds.rdtype == _NSEC:
                    self.nsec_owners.append(name)
        self.nsec_owners.sort()  # dnspython orders names canonically (RFC 4034 6.1)
        self.nsec3 = {r for r in self.records if _is_nsec3(r)}
        self.apex = {r for r in self.records if r[0] == b""}
        self.nsec_rows: dict[bytes, set[tuple]] = defaultdict(set)
        for r in self.records:
            if r[1] == _NSEC or (r[1] == _RRSIG and r[2] == _NSEC):
                self.nsec_rows[r[0]].add(r)

    def nsec_rows_before(self, name: dns.name.Name) -> set[tuple]:
        """The NSEC and its RRSIG at the greatest NSEC owner canonically before ``name``."""
        i = bisect.bisect_left(self.nsec_owners, name)
        if i == 0:
            return set()
        return self.nsec_rows[name_key(self.nsec_owners[i - 1], self.origin)]


def _is_nsec3(rec: tuple) -> bool:
    return rec[1] == _NSEC3 or (rec[1] == _RRSIG and rec[2] == _NSEC3)


def _rule_bounds(bounds_text: list[str]) -> list[bytes]:
    return [b"" if not t else dns.name.from_text(t, origin=None).labels[0].lower() for t in bounds_text]


def _rule_slice(bounds: list[bytes], origin: dns.name.Name, name: dns.name.Name) -> int | None:
    """The manifest's lookup rule, implemented from its text (not from SlicePlan)."""
    if not name.is_subdomain(origin):
        return None
    if name == origin:
        return 0
    label = name.labels[len(name.labels) - len(origin.labels) - 1].lower()
    owner = 0
    for i, b in enumerate(bounds):
        if b <= label:
            owner = i
    return owner


def _rows(path: Path) -> dict[tuple, tuple[int, int]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT rkey, rdtype, covers, rdata, ttl, origin FROM rr").fetchall()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    out = {(k, t, c, d): (ttl, o) for k, t, c, d, ttl, o in rows}
    assert len(out) == len(rows)
    out[("meta",)] = meta  # type: ignore[assignment]
    return out


def check_split(facts: ZoneFacts, out: Path, *, parts: int, by: str, dnssec: str | None) -> None:
    """Every slice holds exactly what slice equivalence needs, and the manifest says so."""
    m = load_manifest(out)
    plan = m.plan
    origin = facts.origin
    assert plan.origin == origin
    assert (m.parts, m.by, m.dnssec, m.serial) == (parts, by, dnssec, facts.serial)
    assert len(m.slices) == parts and [s.index for s in m.slices] == list(range(parts))
    assert sorted(p.name for p in out.iterdir()) == sorted([s.file for s in m.slices] + ["manifest.json"])
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []
    if dnssec != "nsec3":
        assert not facts.nsec3
    assert not any(r[1] == _CNAME for r in facts.records), "generated zones have no CNAME"

    slice_of = {key: plan.slice_for(name) for key, name in facts.names.items()}
    owner_of: dict[tuple, int | None] = {}
    for rec in facts.records:
        if rec[0] == b"" or _is_nsec3(rec):
            owner_of[rec] = None
        else:
            owner_of[rec] = slice_of[rec[0]]
            assert owner_of[rec] is not None
    owned_by: dict[int, set[tuple]] = defaultdict(set)
    for rec, i in owner_of.items():
        if i is not None:
            owned_by[i].add(rec)

    total_owned = 0
    for info in m.slices:
        i = info.index
        path = out / info.file
        rows = _rows(path)
        meta = rows.pop(("meta",))
        expected: dict[tuple, int] = {r: models.OWNED for r in facts.apex | owned_by[i]}
        # Sibling glue: addresses of in-zone NS/MX/SRV targets owned elsewhere, for referrals
        # (and MX/SRV additionals) made from this slice.
        for owner_key, target in facts.targets:
            if owner_key != b"" and slice_of[owner_key] != i:
                continue
            if not target.is_subdomain(origin) or plan.slice_for(target) == i:
                continue
            for rec in facts.addresses.get(name_key(target, origin), ()):
                expected.setdefault(rec, models.COPY_GLUE)
        # The context answers about that glue need: its RRSIGs, and the NS RRsets of the
        # cuts above it (NSD adds no address for a target below a cut).
        glue_keys = {rec[0] for rec, o in expected.items() if o == models.COPY_GLUE}
        for key in glue_keys:
            for rec in facts.by_key.get(key, ()):
                if rec[1] == _RRSIG and rec[2] in (_A, _AAAA):
                    expected.setdefault(rec, models.COPY_GLUE)
            labels = key_labels(key)
            for depth in range(1, len(labels)):
                ancestor = name_key(dns.name.Name(tuple(labels[:depth][::-1]) + origin.labels), origin)
                for rec in facts.by_key.get(ancestor, ()):
                    if rec[1] == _NS:
                        expected.setdefault(rec, models.COPY_GLUE)
        if dnssec == "nsec":
            lo, _hi = plan.range_of(i)
            first_possible = dns.name.Name((lo,) + origin.labels) if lo else origin
            for rec in facts.nsec_rows_before(first_possible) | facts.nsec_rows_before(
                dns.name.Name((b"*",) + origin.labels)
            ):
                expected.setdefault(rec, models.COPY_NSEC)
        if dnssec == "nsec3":
            for rec in facts.nsec3:
                expected[rec] = models.COPY_NSEC3
        got = {rec: o for rec, (_ttl, o) in rows.items()}
        missing = expected.keys() - got.keys()
        extra = got.keys() - expected.keys()
        assert not missing, f"slice {i} lacks {len(missing)} rows, e.g. {sorted(missing)[:3]}"
        assert not extra, f"slice {i} has {len(extra)} unexpected rows, e.g. {sorted(extra)[:3]}"
        wrong = {r: (got[r], expected[r]) for r in expected if got[r] != expected[r]}
        assert not wrong, f"slice {i}: wrong origin codes, e.g. {list(wrong.items())[:3]}"
        assert all(rows[r][0] == facts.records[r] for r in rows), f"slice {i}: TTL changed"

        kinds = Counter(_KIND[o] for o in got.values() if o != models.OWNED)
        assert info.records_copied == dict(kinds)
        assert info.records_apex == len(facts.apex)
        assert info.records_owned == len(owned_by[i])
        assert info.records_total == len(rows)
        owned_keys = {r[0] for r in owned_by[i]}
        assert info.names == len(owned_keys | {b""})
        labels = sorted({key_labels(k)[0] for k in owned_keys})
        assert (info.first, info.last) == (
            (label_text(labels[0]), label_text(labels[-1])) if labels else (None, None)
        )
        lo, hi = plan.range_of(i)
        assert (info.lo, info.hi) == (label_text(lo), label_text(hi) if hi is not None else None)
        assert info.display == plan.display(i)
        assert all(lo <= lb and (hi is None or lb < hi) for lb in labels)
        assert info.bytes == path.stat().st_size
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert meta["origin"] == origin.to_text() and meta["index"] == str(i)
        assert meta["serial"] == str(facts.serial) and meta["dnssec"] == (dnssec or "")
        assert meta["schema_version"] == str(models.SCHEMA_VERSION)
        total_owned += info.records_owned

    assert total_owned + len(facts.apex) + len(facts.nsec3) == len(facts.records)
    assert m.records_in == len(facts.records)  # generated zones hold no duplicate records

    probes = list(facts.names.values()) + [
        dns.name.from_text(t, origin)
        for t in ("zzzz-nothing", "0", "a", "-x", "\\000", "UPPER.case", "deep.below.aa")
    ] + [dns.name.from_text("example.net."), dns.name.root, origin]
    bounds = _rule_bounds(m.bounds)
    for name in probes:
        assert _rule_slice(bounds, origin, name) == plan.slice_for(name), name


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("split-signed")
    plain = d / "plain.zone"
    generate_zone(plain, DELEGATIONS, seed=11, origin=ORIGIN)
    out = {"plain": plain}
    for mode in ("nsec", "nsec3"):
        out[mode] = sign_zone(plain, d / f"{mode}.zone", ORIGIN, mode=mode)
    return out


@pytest.fixture(scope="module")
def facts(zones: dict[str, Path]) -> dict[str, ZoneFacts]:
    return {kind: ZoneFacts(path) for kind, path in zones.items()}


@pytest.mark.parametrize("kind", ["plain", "nsec", "nsec3"])
@pytest.mark.parametrize(("parts", "by"), [(1, "records"), (3, "records"), (5, "records"), (4, "letter")])
def test_every_record_in_its_slice_plus_documented_copies(
    zones: dict[str, Path], facts: dict[str, ZoneFacts], tmp_path: Path, kind: str, parts: int, by: str
) -> None:
    out = tmp_path / "slices"
    result = split_zone(zones[kind], parts, out, by=by)
    f = facts[kind]
    assert result.manifest.records_in == len(f.records)
    check_split(f, out, parts=parts, by=by, dnssec=None if kind == "plain" else kind)
    # The zones really exercise every kind of copy (else the checks above prove little).
    copied = [s.records_copied for s in result.manifest.slices]
    if parts > 1:
        assert sum(c.get("glue", 0) for c in copied) > 0
    if kind == "nsec":
        assert all(c.get("nsec", 0) >= 2 for c in copied[1:])  # NSEC + RRSIG before each range
    if kind == "nsec3":
        assert len(f.nsec3) > 0 and all(c.get("nsec3") == len(f.nsec3) for c in copied)


def test_resplit_replaces_previous_split(zones: dict[str, Path], facts: dict[str, ZoneFacts], tmp_path: Path) -> None:
    out = tmp_path / "slices"
    split_zone(zones["nsec3"], 5, out)
    split_zone(zones["plain"], 3, out)
    check_split(facts["plain"], out, parts=3, by="records", dnssec=None)
    shutil.rmtree(out)
