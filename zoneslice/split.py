"""split: a master file -> N slice databases + manifest.json.

The zone is streamed once (one parser per core on byte ranges of a plain file)
into append-only staging tables: one per first octet of the name key, one for
the apex, one for the NSEC3 chain, and the in-zone names that records point to.
Memory stays bounded whatever the zone's size. Slice boundaries are chosen from
a bounded histogram of first-label prefixes (refined with range queries where
one prefix is too coarse). Each slice is then built in three steps, slices in
parallel: (1) its own records, the apex and the NSEC3 chain, read from only the
staging tables its range can hold, in one sorted ``INSERT ... SELECT``;
(2) the copies slice equivalence needs (sibling glue, CNAME targets, the apex
wildcard, the NSEC covering the names just before its range), read from the
other slices' own records once all of them exist; (3) the copies in, per-name
checks, counts and meta. Everything is built in a temporary directory and
renamed into place at the end, so a failure leaves no half-written slice and
no manifest behind.
"""

from __future__ import annotations

import bisect
import hashlib
import multiprocessing as mp
import operator
import os
import resource
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
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


_STAGE_COLS = "rkey BLOB, rdtype INTEGER, covers INTEGER, rdata BLOB, ttl INTEGER, line INTEGER"
_APEX_TABLE = "apex"
_NSEC3_TABLE = "n3"
_RR_COLS = "rkey, rdtype, covers, rdata, ttl"
# Most arms of one compound SELECT (SQLite allows 500).
_MAX_ARMS = 240


def _bucket_table(octet: int) -> str:
    return f"b{octet:02x}"


def _pragmas(conn: sqlite3.Connection, cache_kib: int, exclusive: bool = True) -> None:
    """For files that are thrown away on failure: no journal, no sync."""
    for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{cache_kib}", "temp_store=FILE"):
        conn.execute(f"PRAGMA {pragma}")
    if exclusive:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")


def _staging(path: Path) -> sqlite3.Connection:
    """A staging database: append-only tables, one per first octet of the key (so each slice
    reads only the tables its range can hold), one for the apex and one for the NSEC3 chain
    (which every slice carries), and the in-zone names that records point to."""
    conn = sqlite3.connect(path, isolation_level=None)
    _pragmas(conn, 65536)
    for table in (_APEX_TABLE, _NSEC3_TABLE):
        conn.execute(f"CREATE TABLE {table} ({_STAGE_COLS})")
    conn.execute("CREATE TABLE ref (rkey BLOB, rdtype INTEGER, tkey BLOB, line INTEGER)")
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


_MAX_WORKERS = 2
_PARALLEL_MIN_BYTES = 32 << 20
# Slice builds run one process more than there are cores: three slices then share two
# cores instead of the third one running alone after the first two.
_BUILD_WORKERS = 3


def _adapt_bytes() -> None:
    """Bind bytes parameters without the sqlite3 module's failing ``__adapt__`` lookup (an
    AttributeError built and dropped per parameter, a tenth of the staging cost): an
    identity adapter, so what is stored does not change."""
    if (bytes, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(bytes, bytes.__bytes__)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


# Rows per INSERT statement while staging: binding one multi-row VALUES costs about half as
# much per row as one statement per row.
_ROWS_PER_INSERT = 50
_STAGE_FIELDS = operator.itemgetter(0, 1, 2, 3, 4, 6)
_REF_FIELDS = operator.itemgetter(0, 1, 5, 6)


def _insert(conn: sqlite3.Connection, table: str, rows: list, fields, width: int, final: bool) -> None:
    """Insert ``rows`` in statements of _ROWS_PER_INSERT rows; the rest waits for the next
    call unless ``final``."""
    k = _ROWS_PER_INSERT
    full = len(rows) - len(rows) % k
    if full:
        one = "(" + ",".join("?" * width) + ")"
        conn.executemany(
            f"INSERT INTO {table} VALUES " + ",".join([one] * k),
            (tuple(chain.from_iterable(map(fields, rows[i : i + k]))) for i in range(0, full, k)),
        )
    if final and full < len(rows):
        conn.executemany(
            f"INSERT INTO {table} VALUES (" + ",".join("?" * width) + ")",
            map(fields, rows[full:]),
        )
        full = len(rows)
    del rows[:full]


def _flush(
    conn: sqlite3.Connection,
    buckets: list[list],
    created: set[int],
    apex: list,
    n3: list,
    refs: list,
    final: bool = False,
) -> None:
    for octet, rows in enumerate(buckets):
        if len(rows) >= _ROWS_PER_INSERT or (final and rows):
            table = _bucket_table(octet)
            if octet not in created:
                conn.execute(f"CREATE TABLE {table} ({_STAGE_COLS})")
                created.add(octet)
            _insert(conn, table, rows, _STAGE_FIELDS, 6, final)
    _insert(conn, _APEX_TABLE, apex, _STAGE_FIELDS, 6, final)
    _insert(conn, _NSEC3_TABLE, n3, _STAGE_FIELDS, 6, final)
    _insert(conn, "ref", refs, _REF_FIELDS, 4, final)


def _load_into(
    reader: ZoneReader,
    conn: sqlite3.Connection,
    hist: dict[bytes, int],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Stream ``reader`` into the staging tables and count owned records per label prefix.

    References kept (``ref``): those from the apex, CNAME/DNAME targets, and NS/MX/SRV
    targets under another first label; a target under the owner's own first label is
    in the same slice as the owner, so it never needs a copy.
    """
    buckets: list[list] = [[] for _ in range(256)]
    apex: list = []
    n3: list = []
    refs: list = []
    created: set[int] = set()
    raw_hist: dict[bytes, int] = {}
    last_key = last_type = last_covers = last_ttl = None
    pending = 0
    conn.execute("BEGIN")
    for rec in reader:
        rkey, rdtype, covers, rdata, ttl, tkey, line = rec
        if rkey == last_key and rdtype == last_type and covers == last_covers:
            if ttl != last_ttl:
                # RFC 2181 5.2: one TTL per RRset; like BIND, the first record's TTL wins.
                rec = (rkey, rdtype, covers, rdata, last_ttl, tkey, line)
                reader.ttl_normalised += 1
        else:
            last_key, last_type, last_covers, last_ttl = rkey, rdtype, covers, ttl
        if rdtype == 50 or (rdtype == 46 and covers == 50):
            n3.append(rec)
        elif rkey:
            buckets[rkey[0]].append(rec)
            p = rkey[: _HIST_CHARS + 1]
            raw_hist[p] = raw_hist.get(p, 0) + 1
        else:
            apex.append(rec)
        if tkey is not None and (
            not rkey
            or rdtype == 5
            or rdtype == 39
            or not tkey.startswith(rkey[: rkey.find(b"\x00") + 1])
        ):
            refs.append(rec)
        pending += 1
        if pending >= _BATCH:
            _flush(conn, buckets, created, apex, n3, refs)
            pending = 0
            if progress is not None:
                progress(reader.records, reader.bytes_position())
    _flush(conn, buckets, created, apex, n3, refs, final=True)
    conn.execute("COMMIT")
    conn.execute("CREATE INDEX ref_key ON ref (rkey)")
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


class _Stage:
    """The staging databases, attached to one connection as s0, s1, ..."""

    def __init__(self, conn: sqlite3.Connection, paths: list[Path]) -> None:
        self.conn = conn
        self.tables: list[set[str]] = []
        for i, path in enumerate(paths):
            conn.execute(f"ATTACH DATABASE ? AS s{i}", (str(path),))
            names = conn.execute(f"SELECT name FROM s{i}.sqlite_master WHERE type = 'table'")
            self.tables.append({r[0] for r in names})

    def detach(self) -> None:
        for i in range(len(self.tables)):
            self.conn.execute(f"DETACH DATABASE s{i}")

    def each(self, table: str) -> list[str]:
        """``table`` in every staging database that has it."""
        return [f"s{i}.{table}" for i, names in enumerate(self.tables) if table in names]

    def buckets(self, lo_key: bytes, hi_key: bytes | None) -> list[tuple[int, str, bool]]:
        """``(octet, table, partly outside)`` of the key tables that can hold keys in
        ``[lo_key, hi_key)``."""
        top = hi_key[0] if hi_key is not None else 255
        out = []
        for octet in range(lo_key[0], top + 1):
            edge = octet == lo_key[0] or (hi_key is not None and octet == top)
            out += [(octet, t, edge) for t in self.each(_bucket_table(octet))]
        return out

    def tables_for(self, rkey: bytes, rdtype: int, covers: int | None = None) -> list[str]:
        """Where the staged records of one owner and type are."""
        names = self.each(_APEX_TABLE if not rkey else _bucket_table(rkey[0]))
        if rdtype == 50 or (rdtype == 46 and covers in (None, 50)):
            names += self.each(_NSEC3_TABLE)
        return names

    def line_of(self, rkey: bytes, rdtype: int) -> int | None:
        lines = [
            self.conn.execute(
                f"SELECT min(line) FROM {t} WHERE rkey = ? AND rdtype = ?", (rkey, rdtype)
            ).fetchone()[0]
            for t in self.tables_for(rkey, rdtype)
        ]
        lines = [n for n in lines if n is not None]
        return min(lines) if lines else None

    def any(self, tables: list[str], where: str, args: tuple = ()) -> bool:
        return any(
            self.conn.execute(f"SELECT 1 FROM {t} WHERE {where} LIMIT 1", args).fetchone()
            for t in tables
        )

    def refs(self, where: str, args: dict | tuple = ()) -> set[bytes]:
        out: set[bytes] = set()
        for t in self.each("ref"):
            out.update(r[0] for r in self.conn.execute(f"SELECT tkey FROM {t} WHERE {where}", args))
        return out


def _range_sql(hi_key: bytes | None) -> str:
    return "rkey >= :lo" + (" AND rkey < :hi" if hi_key is not None else "")


class _Zone:
    """The whole zone, read through the slices once they hold their own records: a key's
    records are in the slice that owns it (the NSEC3 chain is in every slice)."""

    def __init__(self, paths: list[Path], los: list[bytes]) -> None:
        self.paths = paths
        self.los = los
        self.conns: dict[int, sqlite3.Connection] = {}

    def _conn(self, j: int) -> sqlite3.Connection:
        conn = self.conns.get(j)
        if conn is None:
            conn = sqlite3.connect(self.paths[j].resolve().as_uri() + "?mode=ro", uri=True)
            self.conns[j] = conn
        return conn

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def owner(self, key: bytes) -> int:
        return max(0, bisect.bisect_right(self.los, key) - 1)

    def rows_at(self, keys: Iterable[bytes], where: str) -> Iterator[tuple]:
        """Records at ``keys`` (best in ascending order: one query per 500 keys of a slice)."""
        batch: list[bytes] = []
        owner = 0
        for key in keys:
            j = self.owner(key)
            if batch and (j != owner or len(batch) >= 500):
                yield from self._at(owner, batch, where)
                batch = []
            owner = j
            batch.append(key)
        if batch:
            yield from self._at(owner, batch, where)

    def _at(self, j: int, keys: list[bytes], where: str) -> Iterator[tuple]:
        return self._conn(j).execute(
            f"SELECT {_RR_COLS} FROM rr WHERE rkey IN ({','.join('?' * len(keys))})"
            f" AND origin IN ({models.OWNED}, {models.COPY_NSEC3}) AND ({where})",
            keys,
        )

    def range_rows(self, lo: bytes, hi: bytes) -> Iterator[tuple]:
        j = self.owner(lo)
        while j < len(self.los) and (j == self.owner(lo) or self.los[j] < hi):
            yield from self._conn(j).execute(
                f"SELECT {_RR_COLS} FROM rr WHERE rkey >= ? AND rkey < ?"
                f" AND origin IN ({models.OWNED}, {models.COPY_NSEC3})",
                (lo, hi),
            )
            j += 1

    def nsec_before(self, key: bytes) -> bytes | None:
        """The greatest NSEC owner below ``key``."""
        for j in range(self.owner(key), -1, -1):
            row = self._conn(j).execute(
                "SELECT rkey FROM rr WHERE rdtype = 47 AND rkey < ? AND rkey > x''"
                f" AND origin = {models.OWNED} ORDER BY rkey DESC LIMIT 1",
                (key,),
            ).fetchone()
            if row is not None:
                return row[0]
        if self._conn(0).execute("SELECT 1 FROM rr WHERE rkey = x'' AND rdtype = 47").fetchone():
            return b""
        return None


def _build_slice_job(args: tuple) -> object:
    step, rest = args[0], args[1:]
    return getattr(_Splitter, step)(*rest)


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

    def check(self, stage: _Stage, reader: ZoneReader) -> None:
        fname = str(self.zonefile)
        if reader.records == 0:
            raise ZoneFileError(fname, None, "the file holds no records")
        if reader.soa_serial is None:
            raise ZoneFileError(fname, None, f"no SOA record at the apex {reader.zone_origin}")
        if not stage.any(stage.each(_APEX_TABLE), "rdtype = 2"):
            raise ZoneFileError(fname, None, f"no NS records at the apex {reader.zone_origin}")
        self.ttl_fixed = reader.ttl_normalised

    @staticmethod
    def check_slice(conn: sqlite3.Connection, stage: _Stage, zonefile: str) -> int:
        """Per-name rules, checked on each slice in parallel: CNAME alone, one CNAME/DNAME,
        one TTL per RRset (RFC 2181 5.2: like BIND, the first record's TTL wins).
        Returns how many RRsets had their TTL normalised."""
        row = conn.execute(
            "SELECT c.rkey, o.rdtype FROM rr c JOIN rr o"
            " ON o.rkey = c.rkey AND o.rdtype NOT IN (5, 46, 47)"
            f" WHERE c.rdtype = 5 AND c.origin = {models.OWNED} LIMIT 1"
        ).fetchone()
        if row is not None:
            import dns.rdatatype

            raise ZoneFileError(
                zonefile,
                stage.line_of(row[0], 5),
                f"CNAME at {key_to_text(row[0])} beside other data"
                f" ({dns.rdatatype.to_text(row[1])} at line {stage.line_of(row[0], row[1])})",
            )
        row = conn.execute(
            f"SELECT rkey, rdtype FROM rr WHERE rdtype IN (5, 39) AND origin = {models.OWNED}"
            " GROUP BY rkey, rdtype HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if row is not None:
            import dns.rdatatype

            raise ZoneFileError(
                zonefile,
                stage.line_of(row[0], row[1]),
                f"more than one {dns.rdatatype.to_text(row[1])} at {key_to_text(row[0])}",
            )
        mixed = conn.execute(
            "SELECT rkey, rdtype, covers FROM rr GROUP BY rkey, rdtype, covers"
            " HAVING min(ttl) != max(ttl)"
        ).fetchall()
        if not mixed:
            return 0
        conn.execute(
            "CREATE TEMP TABLE mixed (rkey BLOB, rdtype INTEGER, covers INTEGER,"
            " PRIMARY KEY (rkey, rdtype, covers)) WITHOUT ROWID"
        )
        conn.executemany("INSERT INTO temp.mixed VALUES (?, ?, ?)", mixed)
        tables = sorted({t for k, t_, c in mixed for t in stage.tables_for(k, t_, c)})
        first: dict[tuple, tuple[int, int]] = {}
        for table in tables:
            for rkey, rdtype, covers, ttl, line in conn.execute(
                f"SELECT s.rkey, s.rdtype, s.covers, s.ttl, s.line FROM {table} AS s"
                " JOIN temp.mixed AS m USING (rkey, rdtype, covers)"
            ):
                key = (rkey, rdtype, covers)
                if key not in first or line < first[key][0]:
                    first[key] = (line, ttl)
        conn.executemany(
            "UPDATE rr SET ttl = ? WHERE rkey = ? AND rdtype = ? AND covers = ?",
            ((first[k][1], *k) for k in map(tuple, mixed) if k in first),
        )
        conn.execute("DROP TABLE temp.mixed")
        return len(mixed)

    # -- phase 3: boundaries --------------------------------------------------

    def boundaries(self, stage: _Stage) -> list[bytes]:
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
                best = (self._refine(stage, buckets, int(target)), None)
            bounds.append(best[0])
        labels = [_unescape(b) for b in bounds]
        for a, b in zip([b""] + labels, labels + [None], strict=True):
            lo_key, hi_key = first_label_bounds(a, b)
            empty = b is not None and not a < b
            if not empty:
                # A bound placed at the first owned label (tiny zones) leaves a range with no name.
                args = {"lo": lo_key, "hi": hi_key}
                empty = not any(
                    stage.conn.execute(
                        f"SELECT 1 FROM {t}" + (f" WHERE {_range_sql(hi_key)}" if edge else "")
                        + " LIMIT 1",
                        args,
                    ).fetchone()
                    for _o, t, edge in stage.buckets(lo_key, hi_key)
                )
            if empty:
                raise SliceError(
                    f"cannot cut the zone into {self.parts} non-empty ranges"
                    f" ({self.owned_total} records)"
                )
        return labels

    def _refine(self, stage: _Stage, buckets: list, target: int) -> bytes:
        """Exact boundary inside a bucket too coarse for the tolerance: the target-th owned record's label."""
        cum = 0
        for prefix, count in buckets:
            if cum + count > target:
                skip = target - cum
                # The first ``count`` owned keys from ``prefix`` on start with it: all in one table.
                arms = " UNION ALL ".join(
                    f"SELECT rkey FROM {t} WHERE rkey >= :p" for t in stage.each(_bucket_table(prefix[0]))
                )
                row = stage.conn.execute(
                    f"SELECT rkey FROM ({arms}) ORDER BY rkey LIMIT 1 OFFSET :skip",
                    {"p": prefix, "skip": skip},
                ).fetchone()
                if row is None:
                    break
                label_key = row[0][: row[0].find(b"\x00")]
                tables = stage.each(_NSEC3_TABLE)
                for octet in range(1, label_key[0] + 1):
                    tables += stage.each(_bucket_table(octet))
                prevs = [
                    stage.conn.execute(
                        f"SELECT max(rkey) FROM {t} WHERE rkey < ? AND rkey > x''", (label_key,)
                    ).fetchone()[0]
                    for t in tables
                ]
                prevs = [p for p in prevs if p is not None]
                prev = max(prevs) if prevs else None
                prev_label = prev[: prev.find(b"\x00")] if prev else b""
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
    def build_owned(staging: list[Path], plan: SlicePlan, index: int, path: Path) -> None:
        """Step 1: the slice's own records, the apex and the NSEC3 chain, in one sorted
        insert (SQLite's external sort, so memory stays bounded); exact duplicates keep
        the first record's TTL."""
        engine = open_engine(path, create=True)
        engine.dispose()
        lo_key, hi_key = first_label_bounds(*plan.range_of(index))
        conn = sqlite3.connect(path, isolation_level=None)
        _pragmas(conn, 65536)
        conn.execute("DROP INDEX IF EXISTS ix_rr_type")
        stage = _Stage(conn, staging)
        cols = "rkey, rdtype, covers, rdata, ttl, line"
        fixed = [f"SELECT {cols}, {models.OWNED} AS o FROM {t}" for t in stage.each(_APEX_TABLE)]
        fixed += [f"SELECT {cols}, {models.COPY_NSEC3} AS o FROM {t}" for t in stage.each(_NSEC3_TABLE)]
        groups: list[list[str]] = [fixed]
        last = None
        for octet, table, edge in stage.buckets(lo_key, hi_key):
            arm = f"SELECT {cols}, {models.OWNED} AS o FROM {table}"
            if edge:
                arm += f" WHERE {_range_sql(hi_key)}"
            # Records of one key are all in one octet's tables: a statement never splits them.
            if octet != last and len(groups[-1]) >= _MAX_ARMS:
                groups.append([])
            groups[-1].append(arm)
            last = octet
        conn.execute("BEGIN")
        for arms in groups:
            if arms:
                conn.execute(
                    f"INSERT OR IGNORE INTO rr SELECT {_RR_COLS}, o FROM"
                    f" ({' UNION ALL '.join(arms)}) ORDER BY rkey, rdtype, covers, rdata, line",
                    {"lo": lo_key, "hi": hi_key},
                )
        conn.execute("COMMIT")
        conn.execute("CREATE INDEX ix_rr_type ON rr (rdtype, rkey)")
        stage.detach()
        conn.close()

    @staticmethod
    def build_copies(
        staging: list[Path],
        plan: SlicePlan,
        index: int,
        slice_paths: list[Path],
        copies_path: Path,
        dnssec: str | None,
    ) -> None:
        """Step 2: what the slice needs from other slices (sibling glue, CNAME targets, the
        apex wildcard, NSEC), read from their own records into ``copies_path``. In the order
        of precedence: a record first copied for one reason keeps that reason."""
        los = [first_label_bounds(*plan.range_of(j))[0] for j in range(plan.parts)]
        lo_key, hi_key = first_label_bounds(*plan.range_of(index))

        def inside(key: bytes) -> bool:
            return key != b"" and key >= lo_key and (hi_key is None or key < hi_key)

        def owned(rkey: bytes, rdtype: int, covers: int) -> bool:
            return (not rkey or inside(rkey)) and not (rdtype == 50 or (rdtype == 46 and covers == 50))

        conn = sqlite3.connect(copies_path, isolation_level=None)
        _pragmas(conn, 16384)
        conn.execute(
            "CREATE TABLE cp (rkey BLOB, rdtype INTEGER, covers INTEGER, rdata BLOB, ttl INTEGER,"
            " origin INTEGER, PRIMARY KEY (rkey, rdtype, covers, rdata)) WITHOUT ROWID"
        )
        stage = _Stage(conn, staging)
        zone = _Zone(slice_paths, los)

        def add(rows: Iterator[tuple], origin: int) -> None:
            conn.executemany(
                f"INSERT OR IGNORE INTO cp VALUES (?, ?, ?, ?, ?, {origin})",
                (r for r in rows if not owned(r[0], r[1], r[2])),
            )

        def nsec_before(key: bytes) -> None:
            prev = zone.nsec_before(key)
            if prev is not None:
                add(zone.rows_at([prev], "rdtype = 47 OR (rdtype = 46 AND covers = 47)"), models.COPY_NSEC)

        mine = {"lo": lo_key, "hi": hi_key}
        in_slice = f"(rkey = x'' OR ({_range_sql(hi_key)}))"
        conn.execute("BEGIN")
        try:
            # Sibling glue: addresses of NS/MX/SRV targets owned by another slice (the
            # targets go through a table on disk: there can be as many as delegations).
            conn.execute("CREATE TEMP TABLE glue (tkey BLOB PRIMARY KEY) WITHOUT ROWID")
            for t in stage.each("ref"):
                conn.execute(
                    f"INSERT OR IGNORE INTO temp.glue SELECT tkey FROM {t}"
                    f" WHERE rdtype IN (2, 15, 33) AND {in_slice}",
                    mine,
                )
            outside = "NOT (tkey >= :lo" + (" AND tkey < :hi)" if hi_key is not None else ")")
            targets = conn.execute(f"SELECT tkey FROM temp.glue WHERE {outside} ORDER BY tkey", mine)
            add(zone.rows_at((r[0] for r in targets), "rdtype IN (1, 28)"), models.COPY_GLUE)
            _Splitter._copy_redirect_targets(
                stage, zone, stage.refs(f"rdtype IN (5, 39) AND {in_slice}", mine),
                inside, add, nsec_before,
            )
            # The apex wildcard answers for names in every slice.
            wild = label_prefix(b"*") + b"\x00"
            add(zone.range_rows(wild, subtree_end(wild)), models.COPY_TARGET)
            # What answers about copied glue need: its RRSIGs (signed targets go into the
            # additional section with them) and the NS RRsets of cuts above it (no additional
            # data for MX/SRV targets below a cut).
            glue_sql = f"SELECT DISTINCT rkey FROM cp WHERE origin = {models.COPY_GLUE}"
            keys = [r[0] for r in conn.execute(glue_sql).fetchall()]
            add(zone.rows_at(keys, "rdtype = 46 AND covers IN (1, 28)"), models.COPY_GLUE)
            ancestors: set[bytes] = set()
            for (key,) in conn.execute(glue_sql).fetchall():
                end = key.find(b"\x00")
                while 0 <= end < len(key) - 1:
                    ancestors.add(key[: end + 1])
                    end = key.find(b"\x00", end + 1)
            add(zone.rows_at(sorted(ancestors), "rdtype = 2"), models.COPY_GLUE)
            if dnssec == "nsec":
                for key in (lo_key, wild):
                    nsec_before(key)
            conn.execute("COMMIT")
        finally:
            zone.close()
        stage.detach()
        conn.close()

    @staticmethod
    def _copy_redirect_targets(stage: _Stage, zone: _Zone, frontier, inside, add, nsec_before) -> None:
        """For CNAME/DNAME targets owned by another slice: the whole subtree of the target's
        first label (NODATA, NXDOMAIN, wildcard, referral and DNAME answers at the target
        all need it), the NSEC before it and the sibling glue of its NS/MX/SRV RRsets,
        followed through further redirections to a bounded depth."""
        seen: set[bytes] = set()
        for _ in range(_CNAME_DEPTH):
            labels = {t[: t.find(b"\x00") + 1] for t in frontier if t and not inside(t)} - seen
            if not labels:
                return
            seen |= labels
            frontier = set()
            for lab in sorted(labels):
                sub = {"lo": lab, "hi": subtree_end(lab)}
                add(zone.range_rows(lab, sub["hi"]), models.COPY_TARGET)
                nsec_before(lab)
                sub_sql = "rkey >= :lo AND rkey < :hi AND rdtype IN "
                frontier |= stage.refs(sub_sql + "(5, 39)", sub)
                targets = stage.refs(sub_sql + "(2, 15, 33)", sub)
                add(zone.rows_at(sorted(targets), "rdtype IN (1, 28)"), models.COPY_GLUE)

    @staticmethod
    def finish_slice(
        staging: list[Path],
        plan: SlicePlan,
        index: int,
        path: Path,
        copies_path: Path,
        serial: int,
        dnssec: str | None,
        zonefile: str,
    ) -> SliceInfo:
        """Step 3: copies in, per-name checks, counts, meta; then WAL, fsync and checksum."""
        lo, hi = plan.range_of(index)
        conn = sqlite3.connect(path, isolation_level=None)
        _pragmas(conn, 65536, exclusive=False)
        conn.execute("ATTACH DATABASE ? AS c", (str(copies_path),))
        conn.execute("BEGIN")
        # A copy replaces only an NSEC3 chain row (never an owned one): the copy came first.
        conn.execute("INSERT OR REPLACE INTO rr SELECT * FROM c.cp")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE c")
        stage = _Stage(conn, staging)
        ttl_fixed = _Splitter.check_slice(conn, stage, zonefile)
        stage.detach()
        counts = dict(conn.execute("SELECT origin, count(*) FROM rr GROUP BY origin").fetchall())
        apex = conn.execute("SELECT count(*) FROM rr WHERE rkey = x''").fetchone()[0]
        names = conn.execute(
            f"SELECT count(DISTINCT rkey) FROM rr WHERE origin = {models.OWNED}"
        ).fetchone()[0]
        # Walks of the key order from either end (a min()/max() with these terms scans all).
        ends = [
            conn.execute(
                f"SELECT rkey FROM rr WHERE rkey > x'' AND origin = {models.OWNED}"
                f" AND NOT {_NSEC3_SQL} ORDER BY rkey {order} LIMIT 1"
            ).fetchone()
            for order in ("ASC", "DESC")
        ]
        first = tuple(e[0] if e else None for e in ends)
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
                stage = _Stage(conn, staging)
                self.check(stage, reader)
                origin = reader.zone_origin
                dnssec = self._dnssec_mode(stage)
                bounds = self.boundaries(stage)
            finally:
                conn.close()
            plan = SlicePlan(origin, bounds)
            paths = [tmp / f"slice-{i}.db" for i in range(self.parts)]
            copies = [tmp / f"copies-{i}.db" for i in range(self.parts)]
            steps = [
                [("build_owned", staging, plan, i, paths[i]) for i in range(self.parts)],
                [("build_copies", staging, plan, i, paths, copies[i], dnssec) for i in range(self.parts)],
                [
                    ("finish_slice", staging, plan, i, paths[i], copies[i], reader.soa_serial, dnssec,
                     str(self.zonefile))
                    for i in range(self.parts)
                ],
            ]
            workers = min(self.parts, _BUILD_WORKERS)
            if workers > 1 and (os.cpu_count() or 1) > 1 and self.owned_total >= 200_000:
                ctx = mp.get_context("fork")
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    for jobs in steps:
                        slices = list(pool.map(_build_slice_job, jobs))
            else:
                for jobs in steps:
                    slices = [_build_slice_job(job) for job in jobs]
            for path in staging + copies:
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
    def _dnssec_mode(stage: _Stage) -> str | None:
        if stage.any(stage.each(_APEX_TABLE), "rdtype = 51"):
            return "nsec3"
        if stage.any(stage.each(_APEX_TABLE), "rdtype = 47"):
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
    _adapt_bytes()
    if origin is not None:
        origin = dns.name.from_text(origin).to_text()
    return _Splitter(zf, parts, out, by, origin, progress).run()
