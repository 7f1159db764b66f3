"""split: a master file -> N slice databases + manifest.json.

The zone is streamed once into a staging SQLite table ordered by name key
(canonical order), so memory stays bounded whatever the zone's size. Slice
boundaries are then chosen from a bounded histogram of first-label prefixes
(refined with range queries where one prefix is too coarse), and each slice is
copied out of staging with ``INSERT ... SELECT`` plus the copies slice
equivalence needs: the apex, sibling glue, CNAME targets, the NSEC covering the
names just before the slice's range and the NSEC3 chain. Everything is built in
a temporary directory and renamed into place at the end, so a failure leaves
no half-written slice and no manifest behind.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.name

from zoneslice.errors import SliceError, ZoneFileError
from zoneslice.manifest import Manifest, SliceInfo, write_manifest
from zoneslice.slicing import SlicePlan, label_text
from zoneslice.store import models
from zoneslice.store.db import open_engine
from zoneslice.store.keys import first_label_bounds, key_labels, label_prefix
from zoneslice.zonefile import ZoneReader, key_to_text

ProgressFn = Callable[[int, int, int], None]
"""progress(records_read, bytes_read, bytes_total)"""

_BATCH = 20000
_HIST_CHARS = 3
_NSEC3_SQL = "(rdtype = 50 OR (rdtype = 46 AND covers = 50))"
_COPY_KINDS = {
    models.COPY_GLUE: "glue",
    models.COPY_NSEC: "nsec",
    models.COPY_NSEC3: "nsec3",
    models.COPY_TARGET: "cname_target",
}
_CNAME_DEPTH = 8


@dataclass
class SplitResult:
    manifest: Manifest
    manifest_path: Path
    directory: Path
    seconds: float
    records_per_second: float
    peak_rss_mib: float


def default_out_dir(zonefile: Path) -> Path:
    name = zonefile.name
    for suffix in (".gz", ".zone", ".db", ".txt"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return zonefile.parent / f"{name}.slices"


def _staging(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode=OFF",
        "synchronous=OFF",
        "cache_size=-262144",
        "temp_store=FILE",
        "locking_mode=EXCLUSIVE",
    ):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "CREATE TABLE st (rkey BLOB, rdtype INTEGER, covers INTEGER, rdata BLOB, ttl INTEGER,"
        " tkey BLOB, line INTEGER, PRIMARY KEY (rkey, rdtype, covers, rdata)) WITHOUT ROWID"
    )
    return conn


def _first_label_prefix(rkey: bytes) -> bytes:
    """Up to _HIST_CHARS escaped octets of the first label, never cutting an escape."""
    end = rkey.find(b"\x00")
    p = rkey[: min(end, _HIST_CHARS)]
    if p.endswith(b"\x01"):
        p = rkey[: min(end, _HIST_CHARS + 1)]
    return p


def _unescape(prefix: bytes) -> bytes:
    return key_labels(prefix + b"\x00")[0] if prefix else b""


class _Splitter:
    def __init__(
        self,
        zonefile: Path,
        parts: int,
        out_dir: Path,
        by: str,
        origin: str | None,
        progress: ProgressFn | None,
    ) -> None:
        if parts < 1:
            raise SliceError(f"--parts must be at least 1, not {parts}")
        if by not in ("records", "letter"):
            raise SliceError(f"--by must be 'records' or 'letter', not {by!r}")
        self.zonefile = zonefile
        self.parts = parts
        self.out_dir = out_dir
        self.by = by
        self.origin = origin
        self.progress = progress
        self.hist: dict[bytes, int] = {}
        self.owned_total = 0

    # -- phase 1: stream into staging -----------------------------------------

    def load(self, conn: sqlite3.Connection) -> ZoneReader:
        reader = ZoneReader(self.zonefile, self.origin)
        total = self.zonefile.stat().st_size
        insert = "INSERT OR IGNORE INTO st VALUES (?,?,?,?,?,?,?)"
        hist = self.hist
        batch: list[tuple] = []
        append = batch.append
        conn.execute("BEGIN")
        raw = None
        for rec in reader:
            append(rec)
            rkey = rec[0]
            if rkey and rec[1] != 50 and not (rec[1] == 46 and rec[2] == 50):
                p = _first_label_prefix(rkey)
                hist[p] = hist.get(p, 0) + 1
            if len(batch) >= _BATCH:
                conn.executemany(insert, batch)
                batch.clear()
                if self.progress is not None:
                    raw = raw or _raw_position(reader)
                    self.progress(reader.records, raw(), total)
        if batch:
            conn.executemany(insert, batch)
        conn.execute("COMMIT")
        if self.progress is not None:
            self.progress(reader.records, total, total)
        self.owned_total = sum(hist.values())
        return reader

    # -- phase 2: whole-zone checks -------------------------------------------

    def check(self, conn: sqlite3.Connection, reader: ZoneReader) -> None:
        fname = str(self.zonefile)
        if reader.records == 0:
            raise ZoneFileError(fname, None, "the file holds no records")
        if reader.soa_serial is None:
            raise ZoneFileError(fname, None, f"no SOA record at the apex {reader.zone_origin}")
        if conn.execute("SELECT 1 FROM st WHERE rkey = x'' AND rdtype = 2").fetchone() is None:
            raise ZoneFileError(fname, None, f"no NS records at the apex {reader.zone_origin}")
        row = conn.execute(
            "SELECT c.rkey, c.line, o.rdtype, o.line FROM st c JOIN st o"
            " ON o.rkey = c.rkey AND o.rdtype NOT IN (5, 46, 47)"
            " WHERE c.rdtype = 5 LIMIT 1"
        ).fetchone()
        if row is not None:
            import dns.rdatatype

            raise ZoneFileError(
                fname,
                row[1],
                f"CNAME at {key_to_text(row[0])} beside other data"
                f" ({dns.rdatatype.to_text(row[2])} at line {row[3]})",
            )
        row = conn.execute(
            "SELECT rkey, max(line) FROM st WHERE rdtype IN (5, 39)"
            " GROUP BY rkey, rdtype HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if row is not None:
            raise ZoneFileError(fname, row[1], f"more than one CNAME or DNAME at {key_to_text(row[0])}")
        # RFC 2181 5.2: one TTL per RRset; like BIND, the first record's TTL wins.
        mixed = conn.execute(
            "SELECT rkey, rdtype, covers FROM st GROUP BY rkey, rdtype, covers"
            " HAVING min(ttl) != max(ttl)"
        ).fetchall()
        for rkey, rdtype, covers in mixed:
            conn.execute(
                "UPDATE st SET ttl = (SELECT ttl FROM st WHERE rkey=? AND rdtype=? AND covers=?"
                " ORDER BY line LIMIT 1) WHERE rkey=? AND rdtype=? AND covers=?",
                (rkey, rdtype, covers, rkey, rdtype, covers),
            )
        self.ttl_fixed = len(mixed)

    # -- phase 3: boundaries --------------------------------------------------

    def boundaries(self, conn: sqlite3.Connection) -> list[bytes]:
        """Lower bounds (first-label prefixes) of slices 1..N-1."""
        if self.parts == 1:
            return []
        buckets = sorted(self.hist.items())
        if self.by == "letter":
            return self._letter_bounds(buckets)
        total = self.owned_total
        size = total / self.parts
        tol = 0.05 * size
        # Candidate boundaries: every bucket start and every shorter prefix of it, with the
        # number of owned records sorting before it.
        cands: dict[bytes, int] = {}
        cum = 0
        for prefix, count in buckets:
            for j in range(1, len(prefix) + 1):
                if prefix[j - 1 : j] == b"\x01":
                    continue
                cands.setdefault(prefix[:j], cum)
            cum += count
        cand_list = sorted(cands.items(), key=lambda kv: (kv[1], len(kv[0])))
        bounds: list[bytes] = []
        for k in range(1, self.parts):
            target = k * size
            best = None
            for prefix, before in cand_list:
                if abs(before - target) <= tol and (not bounds or prefix > bounds[-1]):
                    if best is None or len(prefix) < len(best[0]):
                        best = (prefix, before)
            if best is None:
                best = (self._refine(conn, buckets, int(target)), None)
            bounds.append(best[0])
        labels = [_unescape(b) for b in bounds]
        for a, b in zip([b""] + labels, labels, strict=False):
            if not a < b:
                raise SliceError(
                    f"cannot cut the zone into {self.parts} non-empty ranges"
                    f" ({self.owned_total} records)"
                )
        return labels

    def _refine(self, conn: sqlite3.Connection, buckets: list, target: int) -> bytes:
        """Exact boundary inside a bucket too coarse for the tolerance: the target-th owned record's label."""
        cum = 0
        for prefix, count in buckets:
            if cum + count > target:
                skip = target - cum
                row = conn.execute(
                    "SELECT rkey FROM st WHERE rkey >= ? AND NOT " + _NSEC3_SQL +
                    " ORDER BY rkey LIMIT 1 OFFSET ?",
                    (prefix, skip),
                ).fetchone()
                if row is None:
                    break
                label_key = row[0][: row[0].find(b"\x00")]
                prev = conn.execute(
                    "SELECT rkey FROM st WHERE rkey < ? AND rkey > x'' ORDER BY rkey DESC LIMIT 1",
                    (label_key,),
                ).fetchone()
                prev_label = prev[0][: prev[0].find(b"\x00")] if prev else b""
                for j in range(1, len(label_key) + 1):
                    if label_key[:j] > prev_label and label_key[j - 1 : j] != b"\x01":
                        return label_key[:j]
                return label_key
            cum += count
        raise SliceError(f"cannot place a slice boundary at record {target}")

    def _letter_bounds(self, buckets: list) -> list[bytes]:
        letters: dict[bytes, int] = {}
        for prefix, count in buckets:
            first = prefix[:2] if prefix[:1] == b"\x01" else prefix[:1]
            letters[first] = letters.get(first, 0) + count
        items = sorted(letters.items())
        if len(items) < self.parts:
            raise SliceError(
                f"--by letter: only {len(items)} distinct first characters for {self.parts} parts"
            )
        cums = []
        cum = 0
        for letter, count in items:
            cums.append((letter, cum))
            cum += count
        size = cum / self.parts
        bounds: list[bytes] = []
        lo_idx = 1
        for k in range(1, self.parts):
            hi_idx = len(cums) - (self.parts - k)
            idx = min(range(lo_idx, hi_idx + 1), key=lambda i: abs(cums[i][1] - k * size))
            bounds.append(cums[idx][0])
            lo_idx = idx + 1
        return [_unescape(b) for b in bounds]

    # -- phase 4: slices ------------------------------------------------------

    def build_slice(
        self,
        staging_path: Path,
        plan: SlicePlan,
        index: int,
        path: Path,
        serial: int,
        dnssec: str | None,
    ) -> SliceInfo:
        engine = open_engine(path, create=True)
        engine.dispose()
        lo, hi = plan.range_of(index)
        lo_key, hi_key = first_label_bounds(lo, hi)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-131072")
        conn.execute("DROP INDEX IF EXISTS ix_rr_type")
        conn.execute("ATTACH DATABASE ? AS s", (str(staging_path),))
        conn.execute("BEGIN")
        range_sql = "rkey >= ?" + (" AND rkey < ?" if hi_key is not None else "")
        range_args: tuple = (lo_key,) + ((hi_key,) if hi_key is not None else ())
        cols = "rkey, rdtype, covers, rdata, ttl"
        conn.execute(
            f"INSERT INTO rr SELECT {cols}, {models.OWNED} FROM s.st"
            f" WHERE (rkey = x'' OR ({range_sql})) AND NOT {_NSEC3_SQL} ORDER BY rkey",
            range_args,
        )
        t_range = "tkey >= ?" + (" AND tkey < ?" if hi_key is not None else "")
        # Sibling glue: addresses of NS/MX/SRV targets owned by another slice.
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_GLUE} FROM s.st"
            " WHERE rdtype IN (1, 28) AND rkey IN (SELECT tkey FROM s.st"
            f"  WHERE (rkey = x'' OR ({range_sql})) AND rdtype IN (2, 15, 33)"
            f"  AND tkey IS NOT NULL AND NOT ({t_range}))",
            range_args + range_args,
        )
        self._copy_cname_targets(conn, lo_key, hi_key, cols)
        if dnssec == "nsec":
            for key in (lo_key, label_prefix(b"*") + b"\x00"):
                self._copy_nsec_before(conn, key, cols)
        if dnssec == "nsec3":
            conn.execute(
                f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_NSEC3} FROM s.st"
                f" WHERE {_NSEC3_SQL}"
            )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE s")
        conn.execute("CREATE INDEX ix_rr_type ON rr (rdtype, rkey)")
        counts = dict(conn.execute("SELECT origin, count(*) FROM rr GROUP BY origin").fetchall())
        names = conn.execute(
            f"SELECT count(DISTINCT rkey) FROM rr WHERE origin = {models.OWNED}"
        ).fetchone()[0]
        first = conn.execute(
            "SELECT min(rkey), max(rkey) FROM rr WHERE rkey > x'' AND origin = ?"
            " AND NOT " + _NSEC3_SQL,
            (models.OWNED,),
        ).fetchone()
        meta = {
            "schema_version": str(models.SCHEMA_VERSION),
            "origin": plan.origin.to_text(),
            "index": str(index),
            "parts": str(plan.parts),
            "lo": label_text(lo),
            "hi": label_text(hi) if hi is not None else "",
            "bounds": " ".join(plan.bounds_text()[1:]),
            "serial": str(serial),
            "dnssec": dnssec or "",
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        copied = {
            name: counts.get(kind, 0) for kind, name in _COPY_KINDS.items() if counts.get(kind)
        }
        first_label = (
            label_text(key_labels(first[0])[0]) if first and first[0] is not None else None
        )
        last_label = label_text(key_labels(first[1])[0]) if first and first[1] is not None else None
        return SliceInfo(
            index=index,
            file=path.name,
            lo=label_text(lo),
            hi=label_text(hi) if hi is not None else None,
            display=plan.display(index),
            first=first_label,
            last=last_label,
            names=names,
            records_owned=counts.get(models.OWNED, 0),
            records_copied=copied,
            records_total=sum(counts.values()),
            bytes=path.stat().st_size,
            sha256=digest,
        )

    def _copy_cname_targets(
        self, conn: sqlite3.Connection, lo_key: bytes, hi_key: bytes | None, cols: str
    ) -> None:
        """Whole nodes of in-zone CNAME targets owned elsewhere, followed to a bounded depth."""
        outside = "NOT (tkey >= ?" + (" AND tkey < ?" if hi_key is not None else "") + ")"
        args: tuple = (lo_key,) + ((hi_key,) if hi_key is not None else ())
        seen: set[bytes] = set()
        frontier = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT s.st.tkey FROM rr JOIN s.st USING (rkey, rdtype, covers, rdata)"
                f" WHERE rr.rdtype = 5 AND s.st.tkey IS NOT NULL AND {outside}",
                args,
            )
        ]
        for _ in range(_CNAME_DEPTH):
            frontier = [k for k in frontier if k not in seen and k != b""]
            if not frontier:
                return
            seen.update(frontier)
            nxt: list[bytes] = []
            for key in frontier:
                conn.execute(
                    f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_TARGET} FROM s.st"
                    " WHERE rkey = ?",
                    (key,),
                )
                self._copy_nsec_before(conn, key + b"\x00", cols)
                nxt.extend(
                    r[0]
                    for r in conn.execute(
                        "SELECT tkey FROM s.st WHERE rkey = ? AND rdtype = 5 AND tkey IS NOT NULL",
                        (key,),
                    )
                )
            frontier = nxt

    @staticmethod
    def _copy_nsec_before(conn: sqlite3.Connection, key: bytes, cols: str) -> None:
        """The NSEC (and its RRSIG) whose owner is the greatest NSEC owner below ``key``."""
        row = conn.execute(
            "SELECT rkey FROM s.st WHERE rkey < ? AND rdtype = 47 ORDER BY rkey DESC LIMIT 1", (key,)
        ).fetchone()
        if row is None:
            return
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_NSEC} FROM s.st"
            " WHERE rkey = ? AND (rdtype = 47 OR (rdtype = 46 AND covers = 47))",
            (row[0],),
        )

    # -- driver ---------------------------------------------------------------

    def run(self) -> SplitResult:
        start = time.monotonic()
        out = self.out_dir
        parent = out.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            staging_path = tmp / "staging.db"
            conn = _staging(staging_path)
            try:
                reader = self.load(conn)
                self.check(conn, reader)
                origin = reader.zone_origin
                dnssec = self._dnssec_mode(conn)
                bounds = self.boundaries(conn)
            finally:
                conn.close()
            plan = SlicePlan(origin, bounds)
            slices = [
                self.build_slice(
                    staging_path, plan, i, tmp / f"slice-{i}.db", reader.soa_serial, dnssec
                )
                for i in range(self.parts)
            ]
            staging_path.unlink()
            manifest = Manifest(
                origin=origin.to_text(),
                serial=reader.soa_serial,
                parts=self.parts,
                by=self.by,
                dnssec=dnssec,
                source={
                    "path": str(self.zonefile),
                    "bytes": self.zonefile.stat().st_size,
                    "ttl_normalised_rrsets": self.ttl_fixed,
                },
                bounds=plan.bounds_text(),
                slices=slices,
                records_in=reader.records,
                directory=out,
            )
            write_manifest(manifest, tmp)
            _fsync_dir(tmp)
            self._install(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.monotonic() - start
        return SplitResult(
            manifest=manifest,
            manifest_path=out / "manifest.json",
            directory=out,
            seconds=seconds,
            records_per_second=reader.records / seconds if seconds else 0.0,
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )

    @staticmethod
    def _dnssec_mode(conn: sqlite3.Connection) -> str | None:
        if conn.execute("SELECT 1 FROM st WHERE rkey = x'' AND rdtype = 51").fetchone():
            return "nsec3"
        if conn.execute("SELECT 1 FROM st WHERE rkey = x'' AND rdtype = 47").fetchone():
            return "nsec"
        return None

    @staticmethod
    def _install(tmp: Path, out: Path) -> None:
        """Replace ``out`` by ``tmp``; an existing directory is kept until the new one is in place."""
        old = None
        if out.exists():
            if not out.is_dir():
                raise SliceError(f"{out} exists and is not a directory")
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_position(reader: ZoneReader) -> Callable[[], int]:
    return lambda: reader.bytes_position()


def split_zone(
    zonefile: str | os.PathLike[str],
    parts: int,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    by: str = "records",
    origin: str | None = None,
    progress: ProgressFn | None = None,
) -> SplitResult:
    """Split ``zonefile`` into ``parts`` slice databases plus manifest.json in ``out_dir``."""
    zf = Path(zonefile)
    if not zf.exists():
        raise ZoneFileError(str(zf), None, "no such file")
    out = Path(out_dir) if out_dir is not None else default_out_dir(zf)
    if origin is not None:
        origin = dns.name.from_text(origin).to_text()
    return _Splitter(zf, parts, out, by, origin, progress).run()
