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
import multiprocessing as mp
import os
import resource
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dns.name

from zoneslice.errors import SliceError, ZoneFileError
from zoneslice.manifest import Manifest, SliceInfo, write_manifest
from zoneslice.slicing import SlicePlan, label_text
from zoneslice.store import models
from zoneslice.store.db import open_engine
from zoneslice.store.keys import first_label_bounds, key_labels, label_prefix, subtree_end
from zoneslice.zonefile import ZoneReader, chunk_bounds, key_to_text

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
    # Append-only while loading; the key index is built in one sort afterwards.
    conn.execute(
        "CREATE TABLE st (rkey BLOB, rdtype INTEGER, covers INTEGER, rdata BLOB, ttl INTEGER,"
        " tkey BLOB, line INTEGER)"
    )
    return conn


def _index_staging(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX st_key ON st (rkey, rdtype, covers)")


def _first_label_prefix(rkey: bytes) -> bytes:
    """Up to _HIST_CHARS escaped octets of the first label, never cutting an escape."""
    end = rkey.find(b"\x00")
    p = rkey[: min(end, _HIST_CHARS)]
    if p.endswith(b"\x01"):
        p = rkey[: min(end, _HIST_CHARS + 1)]
    return p


def _unescape(prefix: bytes) -> bytes:
    return key_labels(prefix + b"\x00")[0] if prefix else b""


_MAX_WORKERS = 2
_PARALLEL_MIN_BYTES = 32 << 20
# Memory-mapped reads of staging, capped so that memory does not grow with the zone.
_STAGING_MMAP = 128 << 20


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _load_into(
    reader: ZoneReader,
    conn: sqlite3.Connection,
    hist: dict[bytes, int],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Stream ``reader`` into staging table ``st`` and count owned records per label prefix."""
    insert = "INSERT INTO st VALUES (?,?,?,?,?,?,?)"
    batch: list[tuple] = []
    append = batch.append
    raw_hist: dict[bytes, int] = {}
    last = (None, None, None, None)
    conn.execute("BEGIN")
    for rec in reader:
        rkey, rdtype, covers, _, ttl = rec[:5]
        if rkey == last[0] and rdtype == last[1] and covers == last[2] and ttl != last[3]:
            # RFC 2181 5.2: one TTL per RRset; like BIND, the first record's TTL wins.
            rec = rec[:4] + (last[3],) + rec[5:]
            reader.ttl_normalised += 1
        else:
            last = (rkey, rdtype, covers, ttl)
        append(rec)
        if rkey and rdtype != 50 and not (rdtype == 46 and covers == 50):
            p = rkey[:_HIST_CHARS + 1]
            raw_hist[p] = raw_hist.get(p, 0) + 1
        if len(batch) >= _BATCH:
            conn.executemany(insert, batch)
            batch.clear()
            if progress is not None:
                progress(reader.records, reader.bytes_position())
    if batch:
        conn.executemany(insert, batch)
    conn.execute("COMMIT")
    for p, n in raw_hist.items():
        q = _first_label_prefix(p + b"\x00")
        hist[q] = hist.get(q, 0) + n


def _parse_chunk(zonefile, origin, window, first_line, initial, staging_path, send, counter) -> None:
    """Worker: parse one byte range of the master file into its own staging database."""
    try:
        reader = ZoneReader(zonefile, origin, window=window, first_line=first_line, initial=initial)
        conn = _staging(staging_path)
        hist: dict[bytes, int] = {}

        def progress(records: int, position: int) -> None:
            counter[0], counter[1] = records, position

        _load_into(reader, conn, hist, progress)
        counter[0], counter[1] = reader.records, window[1]
        _index_staging(conn)
        conn.close()
        send.send(("ok", {
            "records": reader.records, "hist": hist, "soa_serial": reader.soa_serial,
            "soa_minimum": reader.soa_minimum, "dependent": reader.dependent,
            "ttl_normalised": reader.ttl_normalised,
            "directive_after_records": reader.directive_after_records,
        }))
    except BaseException as exc:  # reported to the parent, which falls back to one parser
        try:
            send.send(("error", exc))
        except Exception:
            send.send(("error", SliceError(str(exc))))
    finally:
        send.close()


def _attach_staging(conn: sqlite3.Connection, staging: list[Path]) -> None:
    """Make the staging databases visible as one view ``st``."""
    arms = []
    for i, path in enumerate(staging):
        conn.execute(f"ATTACH DATABASE ? AS s{i}", (str(path),))
        conn.execute(f"PRAGMA s{i}.mmap_size = {_STAGING_MMAP}")
        arms.append(f"SELECT * FROM s{i}.st")
    conn.execute("CREATE TEMP VIEW st AS " + " UNION ALL ".join(arms))


def _build_slice_job(args: tuple) -> SliceInfo:
    return _Splitter.build_slice(*args)


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

    def load(self, tmp: Path) -> tuple[ZoneReader, list[Path]]:
        """Parse into staging databases: one per core for large plain files, else one."""
        workers = min(os.cpu_count() or 1, _MAX_WORKERS)
        size = self.zonefile.stat().st_size
        if workers > 1 and size >= _PARALLEL_MIN_BYTES and not _is_gzip(self.zonefile):
            done = self._load_parallel(tmp, workers)
            if done is not None:
                return done
            for p in tmp.glob("staging-*.db"):
                p.unlink()
        path = tmp / "staging-0.db"
        conn = _staging(path)
        try:
            reader = ZoneReader(self.zonefile, self.origin)
            total = size

            def progress(records: int, position: int) -> None:
                if self.progress is not None:
                    self.progress(records, position, total)

            _load_into(reader, conn, self.hist, progress)
            _index_staging(conn)
        finally:
            conn.close()
        if self.progress is not None:
            self.progress(reader.records, total, total)
        self.owned_total = sum(self.hist.values())
        return reader, [path]

    def _load_parallel(self, tmp: Path, workers: int) -> tuple[ZoneReader, list[Path]] | None:
        """Parse byte ranges in parallel; None when a range turned out to depend on an earlier one."""
        head = ZoneReader(self.zonefile, self.origin)
        for _ in head:
            break
        if head.zone_origin is None or head.state is None:
            return None
        initial = (head.state.origin, head.state.ttl)
        chunks = chunk_bounds(self.zonefile, workers)
        ctx = mp.get_context("fork")
        counters = [ctx.Array("q", 2, lock=False) for _ in chunks]
        procs = []
        for i, (start, end, first_line) in enumerate(chunks):
            recv, send = ctx.Pipe(duplex=False)
            args = (
                self.zonefile, head.zone_origin, (start, end), first_line,
                initial if i else None, tmp / f"staging-{i}.db", send, counters[i],
            )
            proc = ctx.Process(target=_parse_chunk, args=args, daemon=True)
            proc.start()
            send.close()
            procs.append((proc, recv))
        total = self.zonefile.stat().st_size
        results: list = [None] * len(procs)
        try:
            pending = set(range(len(procs)))
            while pending:
                for i in list(pending):
                    proc, recv = procs[i]
                    if recv.poll(0.2):
                        results[i] = recv.recv()
                        pending.discard(i)
                    elif not proc.is_alive() and not recv.poll(0):
                        results[i] = ("error", SliceError(f"parser process {i} died"))
                        pending.discard(i)
                if self.progress is not None:
                    self.progress(
                        sum(c[0] for c in counters),
                        sum(max(0, c[1] - ch[0]) for c, ch in zip(counters, chunks, strict=True)),
                        total,
                    )
        finally:
            for proc, recv in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                recv.close()
        if any(r[0] != "ok" for r in results):
            return None
        infos = [r[1] for r in results]
        if any(info["dependent"] for info in infos[1:]):
            return None
        if any(info["directive_after_records"] for info in infos[:-1]):
            return None
        if sum(1 for info in infos if info["soa_serial"] is not None) > 1:
            return None
        for info in infos:
            for k, v in info["hist"].items():
                self.hist[k] = self.hist.get(k, 0) + v
        reader = head
        reader.records = sum(info["records"] for info in infos)
        soa = next((info for info in infos if info["soa_serial"] is not None), infos[0])
        reader.soa_serial = soa["soa_serial"]
        reader.soa_minimum = soa["soa_minimum"]
        reader.ttl_normalised = sum(info["ttl_normalised"] for info in infos)
        self.owned_total = sum(self.hist.values())
        if self.progress is not None:
            self.progress(reader.records, total, total)
        return reader, [tmp / f"staging-{i}.db" for i in range(len(chunks))]

    # -- phase 2: whole-zone checks -------------------------------------------

    def check(self, conn: sqlite3.Connection, reader: ZoneReader) -> None:
        fname = str(self.zonefile)
        if reader.records == 0:
            raise ZoneFileError(fname, None, "the file holds no records")
        if reader.soa_serial is None:
            raise ZoneFileError(fname, None, f"no SOA record at the apex {reader.zone_origin}")
        if conn.execute("SELECT 1 FROM st WHERE rkey = x'' AND rdtype = 2").fetchone() is None:
            raise ZoneFileError(fname, None, f"no NS records at the apex {reader.zone_origin}")
        self.ttl_fixed = reader.ttl_normalised

    @staticmethod
    def check_slice(conn: sqlite3.Connection, zonefile: str) -> int:
        """Per-name rules, checked on each slice in parallel: CNAME alone, one CNAME/DNAME,
        one TTL per RRset (RFC 2181 5.2: like BIND, the first record's TTL wins).
        Returns how many RRsets had their TTL normalised."""

        def line_of(rkey: bytes, rdtype: int) -> int | None:
            row = conn.execute(
                "SELECT min(line) FROM st WHERE rkey = ? AND rdtype = ?", (rkey, rdtype)
            ).fetchone()
            return row[0] if row else None

        row = conn.execute(
            "SELECT c.rkey, o.rdtype FROM rr c JOIN rr o"
            " ON o.rkey = c.rkey AND o.rdtype NOT IN (5, 46, 47)"
            f" WHERE c.rdtype = 5 AND c.origin = {models.OWNED} LIMIT 1"
        ).fetchone()
        if row is not None:
            import dns.rdatatype

            raise ZoneFileError(
                zonefile,
                line_of(row[0], 5),
                f"CNAME at {key_to_text(row[0])} beside other data"
                f" ({dns.rdatatype.to_text(row[1])} at line {line_of(row[0], row[1])})",
            )
        row = conn.execute(
            f"SELECT rkey, rdtype FROM rr WHERE rdtype IN (5, 39) AND origin = {models.OWNED}"
            " GROUP BY rkey, rdtype HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if row is not None:
            import dns.rdatatype

            raise ZoneFileError(
                zonefile,
                line_of(row[0], row[1]),
                f"more than one {dns.rdatatype.to_text(row[1])} at {key_to_text(row[0])}",
            )
        mixed = conn.execute(
            "SELECT rkey, rdtype, covers FROM rr GROUP BY rkey, rdtype, covers"
            " HAVING min(ttl) != max(ttl)"
        ).fetchall()
        for rkey, rdtype, covers in mixed:
            conn.execute(
                "UPDATE rr SET ttl = (SELECT ttl FROM st WHERE rkey = ? AND rdtype = ?"
                " AND covers = ? ORDER BY line LIMIT 1) WHERE rkey = ? AND rdtype = ? AND covers = ?",
                (rkey, rdtype, covers, rkey, rdtype, covers),
            )
        return len(mixed)

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
        tol = 0.025 * size
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
        for a, b in zip([b""] + labels, labels + [None], strict=True):
            lo_key, hi_key = first_label_bounds(a, b)
            empty = b is not None and not a < b
            if not empty:
                # A bound placed at the first owned label (tiny zones) leaves a range with no name.
                sql = "SELECT 1 FROM st WHERE rkey >= ?" + (" AND rkey < ?" if hi_key is not None else "")
                args = (lo_key,) if hi_key is None else (lo_key, hi_key)
                empty = conn.execute(f"{sql} AND NOT {_NSEC3_SQL} LIMIT 1", args).fetchone() is None
            if empty:
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

    @staticmethod
    def build_slice(
        staging: list[Path],
        plan: SlicePlan,
        index: int,
        path: Path,
        serial: int,
        dnssec: str | None,
        zonefile: str,
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
        _attach_staging(conn, staging)
        conn.execute("BEGIN")
        range_sql = "rkey >= ?" + (" AND rkey < ?" if hi_key is not None else "")
        range_args: tuple = (lo_key,) + ((hi_key,) if hi_key is not None else ())
        cols = "rkey, rdtype, covers, rdata, ttl"
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.OWNED} FROM st"
            f" WHERE (rkey = x'' OR ({range_sql})) AND NOT {_NSEC3_SQL} ORDER BY rkey",
            range_args,
        )
        t_range = "tkey >= ?" + (" AND tkey < ?" if hi_key is not None else "")
        # Sibling glue: addresses of NS/MX/SRV targets owned by another slice.
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_GLUE} FROM st"
            " WHERE rdtype IN (1, 28) AND rkey IN (SELECT tkey FROM st"
            f"  WHERE (rkey = x'' OR ({range_sql})) AND rdtype IN (2, 15, 33)"
            f"  AND tkey IS NOT NULL AND NOT ({t_range}))",
            range_args + range_args,
        )
        _Splitter._copy_redirect_targets(conn, lo_key, hi_key, cols)
        wild = label_prefix(b"*") + b"\x00"
        # The apex wildcard answers for names in every slice.
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_TARGET} FROM st"
            " WHERE rkey >= ? AND rkey < ?",
            (wild, subtree_end(wild)),
        )
        _Splitter._copy_additional_context(conn, cols)
        if dnssec == "nsec":
            for key in (lo_key, label_prefix(b"*") + b"\x00"):
                _Splitter._copy_nsec_before(conn, key, cols)
        if dnssec == "nsec3":
            conn.execute(
                f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_NSEC3} FROM st"
                f" WHERE {_NSEC3_SQL}"
            )
        conn.execute("COMMIT")
        conn.execute("CREATE INDEX ix_rr_type ON rr (rdtype, rkey)")
        ttl_fixed = _Splitter.check_slice(conn, zonefile)
        conn.execute("DROP VIEW st")
        for i in range(len(staging)):
            conn.execute(f"DETACH DATABASE s{i}")
        counts = dict(conn.execute("SELECT origin, count(*) FROM rr GROUP BY origin").fetchall())
        apex = conn.execute("SELECT count(*) FROM rr WHERE rkey = x''").fetchone()[0]
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
            records_owned=counts.get(models.OWNED, 0) - apex,
            records_apex=apex,
            ttl_normalised=ttl_fixed,
            records_copied=copied,
            records_total=sum(counts.values()),
            bytes=path.stat().st_size,
            sha256=digest,
        )

    @staticmethod
    def _copy_redirect_targets(
        conn: sqlite3.Connection, lo_key: bytes, hi_key: bytes | None, cols: str
    ) -> None:
        """For CNAME/DNAME targets owned by another slice: the whole subtree of the target's
        first label (NODATA, NXDOMAIN, wildcard, referral and DNAME answers at the target
        all need it), the NSEC before it and the sibling glue of its NS/MX/SRV RRsets,
        followed through further redirections to a bounded depth."""

        def outside(key: bytes) -> bool:
            return key != b"" and not (key >= lo_key and (hi_key is None or key < hi_key))

        frontier = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT st.tkey FROM rr JOIN st USING (rkey, rdtype, covers, rdata)"
                " WHERE rr.rdtype IN (5, 39) AND st.tkey IS NOT NULL"
            )
        ]
        seen: set[bytes] = set()
        for _ in range(_CNAME_DEPTH):
            labels = {t[: t.find(b"\x00") + 1] for t in frontier if outside(t)} - seen
            if not labels:
                return
            seen |= labels
            frontier = []
            for lab in sorted(labels):
                sub = (lab, subtree_end(lab))
                conn.execute(
                    f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_TARGET} FROM st"
                    " WHERE rkey >= ? AND rkey < ?",
                    sub,
                )
                _Splitter._copy_nsec_before(conn, lab, cols)
                frontier += [
                    r[0]
                    for r in conn.execute(
                        "SELECT tkey FROM st WHERE rkey >= ? AND rkey < ? AND rdtype IN (5, 39)"
                        " AND tkey IS NOT NULL",
                        sub,
                    )
                ]
                conn.execute(
                    f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_GLUE} FROM st"
                    " WHERE rdtype IN (1, 28) AND rkey IN (SELECT tkey FROM st WHERE rkey >= ?"
                    " AND rkey < ? AND rdtype IN (2, 15, 33) AND tkey IS NOT NULL)",
                    sub,
                )

    @staticmethod
    def _copy_additional_context(conn: sqlite3.Connection, cols: str) -> None:
        """What answers about copied glue need: its RRSIGs (signed targets go into the
        additional section with them) and the NS RRsets of cuts above it (no additional
        data for MX/SRV targets below a cut)."""
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_GLUE} FROM st WHERE rdtype = 46"
            f" AND covers IN (1, 28) AND rkey IN (SELECT rkey FROM rr WHERE origin = {models.COPY_GLUE})"
        )
        ancestors: set[bytes] = set()
        for (key,) in conn.execute(
            f"SELECT DISTINCT rkey FROM rr WHERE origin = {models.COPY_GLUE}"
        ).fetchall():
            end = key.find(b"\x00")
            while 0 <= end < len(key) - 1:
                ancestors.add(key[: end + 1])
                end = key.find(b"\x00", end + 1)
        conn.executemany(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_GLUE} FROM st"
            " WHERE rkey = ? AND rdtype = 2",
            ((a,) for a in sorted(ancestors)),
        )

    @staticmethod
    def _copy_nsec_before(conn: sqlite3.Connection, key: bytes, cols: str) -> None:
        """The NSEC (and its RRSIG) whose owner is the greatest NSEC owner below ``key``."""
        row = conn.execute(
            "SELECT rkey FROM st WHERE rkey < ? AND rdtype = 47 ORDER BY rkey DESC LIMIT 1", (key,)
        ).fetchone()
        if row is None:
            return
        conn.execute(
            f"INSERT OR IGNORE INTO rr SELECT {cols}, {models.COPY_NSEC} FROM st"
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
            reader, staging = self.load(tmp)
            conn = sqlite3.connect(":memory:", isolation_level=None)
            try:
                _attach_staging(conn, staging)
                self.check(conn, reader)
                origin = reader.zone_origin
                dnssec = self._dnssec_mode(conn)
                bounds = self.boundaries(conn)
            finally:
                conn.close()
            plan = SlicePlan(origin, bounds)
            jobs = [
                (staging, plan, i, tmp / f"slice-{i}.db", reader.soa_serial, dnssec, str(self.zonefile))
                for i in range(self.parts)
            ]
            workers = min(self.parts, os.cpu_count() or 1, _MAX_WORKERS)
            if workers > 1 and self.owned_total >= 200_000:
                ctx = mp.get_context("fork")
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    slices = list(pool.map(_build_slice_job, jobs))
            else:
                slices = [_build_slice_job(job) for job in jobs]
            for path in staging:
                path.unlink()
            manifest = Manifest(
                origin=origin.to_text(),
                serial=reader.soa_serial,
                parts=self.parts,
                by=self.by,
                dnssec=dnssec,
                source={
                    "path": str(self.zonefile),
                    "bytes": self.zonefile.stat().st_size,
                    "ttl_normalised_rrsets": self.ttl_fixed + sum(s.ttl_normalised for s in slices),
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
            peak_rss_mib=max(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            / 1024,
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
