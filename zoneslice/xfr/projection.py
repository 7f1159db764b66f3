"""Which records each slice of an N-part plan holds, computed from the whole zone.

The primary keeps the whole zone (a ``split --parts 1`` database); every slice
server holds one slice of an N-part plan. This module applies split's membership
rules (:mod:`zoneslice.split`, build_slice) to the whole-zone rows, row by row,
so that the same rules give both a slice's full content (:func:`slice_records`,
for AXFR) and the effect of one commit on each slice (:class:`Projector`, for
IXFR). A row of slice ``i`` gets the ``origin`` of the first split step that
would have inserted it (split uses ``INSERT OR IGNORE``, so the first wins):

1. owned: the apex and every name in the slice's range (NSEC3 chain aside);
2. sibling glue: A/AAAA of NS/MX/SRV targets outside the range named by owned records;
3. CNAME/DNAME targets owned elsewhere, label by label in split's order: the
   target label's subtree, the NSEC before it, the glue its NS/MX/SRV name;
4. the apex wildcard's subtree;
5. RRSIGs of copied glue, and the NS RRsets of cuts above copied glue;
6. the NSEC before the slice's range and before ``*.origin`` (NSEC zones);
7. the whole NSEC3 chain (NSEC3 zones).

The projection of a commit is computed inside the update's transaction: the
rows the batch touched are put back as they were (undo), the membership of
every name whose membership can change is read, the batch is redone and read
again; the difference per slice goes to :func:`zoneslice.journal.append_slice`.
NS/MX/SRV targets are indexed in table ``xfr_ref`` (kept in the same
transactions) so that "which slices point at this glue" is one lookup.
"""

from __future__ import annotations

import bisect
import functools
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.name

from zoneslice import journal
from zoneslice.slicing import SlicePlan
from zoneslice.store import models
from zoneslice.store.keys import (
    first_label_bounds,
    label_prefix,
    labels_key,
    name_key,
    subtree_end,
)

T_A, T_NS, T_CNAME, T_SOA, T_MX, T_AAAA, T_SRV, T_DNAME = 1, 2, 5, 6, 15, 28, 33, 39
T_RRSIG, T_NSEC, T_NSEC3, T_NSEC3PARAM = 46, 47, 50, 51
REF_TYPES = (T_NS, T_MX, T_SRV)
REDIRECT_TYPES = (T_CNAME, T_DNAME)
_TARGET_OFFSET = {T_NS: 0, T_CNAME: 0, T_DNAME: 0, T_MX: 2, T_SRV: 6}
WILD = label_prefix(b"*") + b"\x00"
WILD_END = subtree_end(WILD)
CNAME_DEPTH = 8
META_PLAN = "xfr_plan"
META_REF_SERIAL = "xfr_ref_serial"

OWNED = models.OWNED
GLUE = models.COPY_GLUE
NSEC = models.COPY_NSEC
NSEC3 = models.COPY_NSEC3
TARGET = models.COPY_TARGET

Row = journal.Row
Rec = tuple[int, int, bytes, int]
"""(rdtype, covers, rdata, ttl) of a row at a known key."""

_REF_DDL = (
    "CREATE TABLE IF NOT EXISTS xfr_ref (tkey BLOB, rkey BLOB, rdtype INTEGER, rdata BLOB,"
    " PRIMARY KEY (tkey, rkey, rdtype, rdata)) WITHOUT ROWID"
)


def target_key(rdtype: int, rdata: bytes, origin: dns.name.Name) -> bytes | None:
    """Key of the in-zone name an NS/MX/SRV/CNAME/DNAME record points at (None: out of zone)."""
    off = _TARGET_OFFSET.get(rdtype)
    if off is None:
        return None
    return _wire_name_key(rdata[off:], origin)


@functools.lru_cache(maxsize=65536)
def _wire_name_key(wire: bytes, origin: dns.name.Name) -> bytes | None:
    """``name_key`` of the uncompressed wire name at the start of ``wire`` (None: outside)."""
    labels: list[bytes] = []
    pos = 0
    try:
        while True:
            ln = wire[pos]
            if ln == 0:
                break
            if ln > 63:
                return None
            labels.append(wire[pos + 1 : pos + 1 + ln])
            pos += ln + 1
    except IndexError:
        return None
    depth = len(origin.labels) - 1
    if len(labels) < depth:
        return None
    tail = labels[len(labels) - depth :] if depth else []
    if [lb.lower() for lb in tail] != [lb.lower() for lb in origin.labels[:-1]]:
        return None
    return labels_key(labels[: len(labels) - depth][::-1])


def covers_of(rdtype: int, rdata: bytes) -> int:
    return int.from_bytes(rdata[:2], "big") if rdtype == T_RRSIG and len(rdata) >= 2 else 0


def ancestors(key: bytes) -> list[bytes]:
    """Proper ancestors of ``key`` below the apex (split's "cuts above" walk)."""
    out = []
    end = key.find(b"\x00")
    while 0 <= end < len(key) - 1:
        out.append(key[: end + 1])
        end = key.find(b"\x00", end + 1)
    return out


def _is_nsec3_row(rdtype: int, covers: int) -> bool:
    return rdtype == T_NSEC3 or (rdtype == T_RRSIG and covers == T_NSEC3)


def _is_nsec_row(rdtype: int, covers: int) -> bool:
    return rdtype == T_NSEC or (rdtype == T_RRSIG and covers == T_NSEC)


def dnssec_mode(conn: sqlite3.Connection) -> str:
    """"nsec3", "nsec" or "" from the apex, as split decides."""
    types = {r[0] for r in conn.execute("SELECT rdtype FROM rr WHERE rkey = x''")}
    return "nsec3" if T_NSEC3PARAM in types else "nsec" if T_NSEC in types else ""


def nsec_before(conn: sqlite3.Connection, key: bytes) -> bytes | None:
    row = conn.execute(
        "SELECT rkey FROM rr WHERE rdtype = 47 AND rkey < ? ORDER BY rkey DESC LIMIT 1", (key,)
    ).fetchone()
    return row[0] if row else None


def zone_origin(conn: sqlite3.Connection) -> dns.name.Name:
    return dns.name.from_text(
        conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()[0]
    )


def _owned_sql(lo: bytes, hi: bytes | None) -> tuple[str, tuple]:
    """WHERE clause (and arguments) of the rows a slice owns by key: the apex and its range."""
    if hi is None:
        return "(rkey = x'' OR rkey >= ?)", (lo,)
    return "(rkey = x'' OR (rkey >= ? AND rkey < ?))", (lo, hi)


def plan_los(plan: SlicePlan) -> list[bytes]:
    """Each slice's lowest key (as :class:`SliceView` bounds it), in slice order."""
    return [first_label_bounds(*plan.range_of(i))[0] for i in range(plan.parts)]


REF_FEW = 16
_REF_FEW = f"SELECT rkey FROM xfr_ref WHERE tkey = ? LIMIT {REF_FEW}"
_REF_NEXT = "SELECT rkey FROM xfr_ref WHERE tkey = ? AND rkey >= ? ORDER BY rkey LIMIT 1"


_Changed = tuple[set[bytes], set[bytes], set[bytes]]
"""What a batch changed: owner keys, reference targets (NS/MX/SRV), and the keys above
a changed address record (whose :meth:`_State.addr_below` may differ)."""


class _State:
    """Cached reads of the database in its current state (drop on every change).

    ``los`` (:func:`plan_los`) lets :meth:`ref_slices` answer "which slices point at
    this name" with one index seek per slice: a popular name server is the NS target
    of thousands of delegations, too many to list on every commit.
    """

    def __init__(self, conn: sqlite3.Connection, los: list[bytes] | None = None) -> None:
        self.conn = conn
        self.los = los or [b"\x00\x00"]
        self._rows: dict[bytes, list[Rec]] = {}
        self._refs: dict[bytes, tuple[bool, frozenset[int]]] = {}
        self._below: dict[bytes, list[bytes]] = {}
        self.glue_memo: dict[int, dict[bytes, bool]] = {}

    def carried(
        self, conn: sqlite3.Connection, origin: dns.name.Name,
        changesets: list[journal.Changeset], changed: _Changed,
    ) -> _State:
        """The state after ``changesets`` (``changed``: what they touch), built from this
        one's reads: rows the batch left alone are kept, changed owners get the journal's
        exact deletions and additions (not the apex, whose SOA the journal leaves out: it
        is in ``changed`` and read again), so that the "after" pass queries little."""
        out = _State(conn, self.los)
        rows, refs, below = changed
        out._rows = {k: v for k, v in self._rows.items() if k not in rows}
        derived: dict[bytes, dict[tuple[int, int, bytes], int]] = {}
        for cs in changesets:
            for gone, recs in ((True, cs.deleted), (False, cs.added)):
                for name, rdtype, ttl, rdata in recs:
                    k = name_key(name, origin)
                    if not k:
                        continue
                    now = derived.get(k)
                    if now is None:
                        if k not in self._rows:
                            continue
                        now = derived[k] = {(t, c, rd): tl for t, c, rd, tl in self._rows[k]}
                    pk = (rdtype, covers_of(rdtype, rdata), rdata)
                    if gone:
                        now.pop(pk, None)
                    else:
                        now[pk] = ttl
        for k, now in derived.items():
            out._rows[k] = [(t, c, rd, tl) for (t, c, rd), tl in sorted(now.items())]
        out._refs = {k: v for k, v in self._refs.items() if k not in refs}
        out._below = {k: v for k, v in self._below.items() if k not in below}
        return out

    def seed(self, rows: Mapping[bytes, Iterable[Rec]]) -> None:
        """Rows known to be the database's at these keys (in its order, as a read gives)."""
        for key, recs in rows.items():
            self._rows.setdefault(key, sorted(recs))

    def rows(self, key: bytes) -> list[Rec]:
        got = self._rows.get(key)
        if got is None:
            got = self._rows[key] = self.conn.execute(
                "SELECT rdtype, covers, rdata, ttl FROM rr WHERE rkey = ?", (key,)
            ).fetchall()
        return got

    def slice_of(self, key: bytes) -> int:
        """The slice whose key range holds ``key`` (-1: none; the apex is everyone's)."""
        return bisect.bisect_right(self.los, key) - 1

    def ref_slices(self, tkey: bytes) -> tuple[bool, frozenset[int]]:
        """Whether the apex has NS/MX/SRV records naming ``tkey``, and the slices whose
        ranges hold such owners (needs ``xfr_ref``)."""
        got = self._refs.get(tkey)
        if got is None:
            execute = self.conn.execute
            los = self.los
            few = execute(_REF_FEW, (tkey,)).fetchall()
            if len(few) < REF_FEW:
                found_few = {bisect.bisect_right(los, r[0]) - 1 for r in few if r[0]}
                got = self._refs[tkey] = (
                    any(not r[0] for r in few), frozenset(i for i in found_few if i >= 0)
                )
                return got
            apex = False
            found: set[int] = set()
            row = execute(_REF_NEXT, (tkey, b"")).fetchone()
            while row is not None:
                rkey = row[0]
                if rkey == b"":
                    apex = True
                    nxt = b"\x00"
                else:
                    i = bisect.bisect_right(los, rkey) - 1
                    if i >= 0:
                        found.add(i)
                    if i + 1 >= len(los):
                        break
                    nxt = los[i + 1]
                row = execute(_REF_NEXT, (tkey, nxt)).fetchone()
            got = self._refs[tkey] = (apex, frozenset(found))
        return got

    def addr_below(self, key: bytes) -> list[bytes]:
        """Keys strictly below ``key`` holding A or AAAA records."""
        got = self._below.get(key)
        if got is None:
            got = self._below[key] = [
                r[0]
                for r in self.conn.execute(
                    "SELECT DISTINCT rkey FROM rr WHERE rkey > ? AND rkey < ? AND rdtype IN (1, 28)",
                    (key, subtree_end(key)),
                )
            ]
        return got


@dataclass
class _Event:
    """One CNAME/DNAME target label copied into a slice (split's _copy_redirect_targets)."""

    lab: bytes
    end: bytes
    nsec: bytes | None
    glue: set[bytes]
    keys: set[bytes] = field(default_factory=set)


class SliceView:
    """Membership rules of one slice, evaluated against the database's current state."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        plan: SlicePlan,
        index: int,
        mode: str,
        state: _State,
        *,
        sibling: set[bytes] | None = None,
    ) -> None:
        self.index = index
        self.mode = mode
        self.state = state
        self.origin = plan.origin
        self.lo, self.hi = first_label_bounds(*plan.range_of(index))
        self._sibling = sibling
        self.events = self._redirect_events(conn)
        self.nsec_keys: set[bytes] = set()
        if mode == "nsec":
            for k in (self.lo, WILD):
                nk = nsec_before(conn, k)
                if nk is not None:
                    self.nsec_keys.add(nk)
        self.event_glue: set[bytes] = set().union(*(e.glue for e in self.events))

    def owned_sql(self) -> tuple[str, tuple]:
        return _owned_sql(self.lo, self.hi)

    def in_range(self, key: bytes) -> bool:
        return key >= self.lo and (self.hi is None or key < self.hi)

    def owned(self, key: bytes) -> bool:
        return key == b"" or self.in_range(key)

    def _redirect_events(self, conn: sqlite3.Connection) -> list[_Event]:
        where, args = self.owned_sql()
        frontier = [
            target_key(t, rd, self.origin)
            for t, rd in conn.execute(
                f"SELECT rdtype, rdata FROM rr WHERE rdtype IN (5, 39) AND {where}", args
            )
        ]
        seen: set[bytes] = set()
        events: list[_Event] = []
        for _ in range(CNAME_DEPTH):
            labels = {
                t[: t.find(b"\x00") + 1] for t in frontier if t and not self.in_range(t)
            } - seen
            if not labels:
                break
            seen |= labels
            frontier = []
            for lab in sorted(labels):
                end = subtree_end(lab)
                ev = _Event(lab, end, nsec_before(conn, lab), set())
                for rkey, rdtype, rdata in conn.execute(
                    "SELECT rkey, rdtype, rdata FROM rr WHERE rkey >= ? AND rkey < ?", (lab, end)
                ):
                    ev.keys.add(rkey)
                    if rdtype in REDIRECT_TYPES:
                        frontier.append(target_key(rdtype, rdata, self.origin))
                    elif rdtype in REF_TYPES:
                        t = target_key(rdtype, rdata, self.origin)
                        if t is not None:
                            ev.glue.add(t)
                events.append(ev)
        return events

    def signature(self) -> tuple:
        """What the non-local rules depend on (to see whether a commit changed them)."""
        return (
            self.mode,
            tuple((e.lab, e.nsec, frozenset(e.glue), frozenset(e.keys)) for e in self.events),
            frozenset(self.nsec_keys),
        )

    def related_keys(self) -> set[bytes]:
        """Every key whose membership the non-local rules decide."""
        keys = set(self.nsec_keys)
        for e in self.events:
            keys |= e.keys | e.glue
            if e.nsec is not None:
                keys.add(e.nsec)
        return keys

    # -- the rules, row by row

    def sibling(self, key: bytes) -> bool:
        if self.in_range(key):
            return False
        if self._sibling is not None:
            return key in self._sibling
        apex, found = self.state.ref_slices(key)
        return apex or self.index in found

    def _copied(self, key: bytes, is_addr: bool, is_nsec: bool) -> int | None:
        """Steps 2-4 for a row outside the slice's own data."""
        if is_addr and self.sibling(key):
            return GLUE
        for e in self.events:
            if e.lab <= key < e.end:
                return TARGET
            if is_nsec and key == e.nsec:
                return NSEC
            if is_addr and key in e.glue:
                return GLUE
        if WILD <= key < WILD_END:
            return TARGET
        return None

    def glue_at(self, key: bytes) -> bool:
        """Whether the slice holds address records at ``key`` as glue (step 5's input)."""
        memo = self.state.glue_memo.setdefault(self.index, {})
        got = memo.get(key)
        if got is None:
            got = memo[key] = (
                not self.owned(key)
                and any(r[0] in (T_A, T_AAAA) for r in self.state.rows(key))
                and self._copied(key, True, False) == GLUE
            )
        return got

    def origin_of(self, key: bytes, rdtype: int, covers: int) -> int | None:
        """Why slice holds this row (a models origin), or None when it does not."""
        nsec3_row = _is_nsec3_row(rdtype, covers)
        if not nsec3_row and self.owned(key):
            return OWNED
        is_nsec = _is_nsec_row(rdtype, covers)
        got = self._copied(key, rdtype in (T_A, T_AAAA), is_nsec)
        if got is not None:
            return got
        if rdtype == T_RRSIG and covers in (T_A, T_AAAA) and self.glue_at(key):
            return GLUE
        if rdtype == T_NS and key and any(self.glue_at(k) for k in self.state.addr_below(key)):
            return GLUE
        if self.mode == "nsec" and is_nsec and key in self.nsec_keys:
            return NSEC
        if self.mode == "nsec3" and nsec3_row:
            return NSEC3
        return None

    def rows_at(self, key: bytes) -> list[Row]:
        out = []
        for rdtype, covers, rdata, ttl in self.state.rows(key):
            o = self.origin_of(key, rdtype, covers)
            if o is not None:
                out.append((key, rdtype, covers, rdata, ttl, o))
        return out


def slice_records(conn: sqlite3.Connection, plan: SlicePlan, index: int) -> list[Row]:
    """Every row slice ``index`` of ``plan`` holds, from the whole-zone database ``conn``,
    sorted as the slice table is (rkey, rdtype, covers, rdata)."""
    mode = dnssec_mode(conn)
    state = _State(conn, plan_los(plan))
    lo, hi = first_label_bounds(*plan.range_of(index))
    where, args = _owned_sql(lo, hi)
    origin = plan.origin
    sibling: set[bytes] = set()
    for rdtype, rdata in conn.execute(
        f"SELECT rdtype, rdata FROM rr WHERE rdtype IN (2, 15, 33) AND {where}", args
    ):
        t = target_key(rdtype, rdata, origin)
        if t is not None and not (t >= lo and (hi is None or t < hi)):
            sibling.add(t)
    view = SliceView(conn, plan, index, mode, state, sibling=sibling)
    out: list[Row] = []
    candidates: set[bytes] = set()
    for rkey, rdtype, covers, rdata, ttl in conn.execute(
        f"SELECT rkey, rdtype, covers, rdata, ttl FROM rr WHERE {where}", args
    ):
        if _is_nsec3_row(rdtype, covers):
            candidates.add(rkey)
        else:
            out.append((rkey, rdtype, covers, rdata, ttl, OWNED))
    glue_keys = sibling | view.event_glue
    candidates |= glue_keys | view.related_keys()
    for k in glue_keys:
        candidates.update(ancestors(k))
    candidates.update(
        r[0] for r in conn.execute("SELECT DISTINCT rkey FROM rr WHERE rkey >= ? AND rkey < ?",
                                   (WILD, WILD_END))  # fmt: skip
    )
    if mode == "nsec3":
        candidates.update(
            r[0] for r in conn.execute(
                "SELECT DISTINCT rkey FROM rr WHERE rdtype = 50 OR (rdtype = 46 AND covers = 50)"
            )
        )  # fmt: skip
    for key in candidates:
        if view.owned(key):
            out += [r for r in view.rows_at(key) if r[5] != OWNED]
        else:
            out += view.rows_at(key)
    out.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return out


# ---------------------------------------------------------------- incremental


def plan_text(plan: SlicePlan) -> str:
    return json.dumps({"origin": plan.origin.to_text(), "bounds": plan.bounds_text()})


def plan_from_text(text: str) -> SlicePlan:
    d = json.loads(text)
    return SlicePlan.from_bounds_text(d["origin"], d["bounds"])


def stored_plan(conn: sqlite3.Connection) -> SlicePlan | None:
    """The plan a primary database projects for (None: no projection)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_PLAN,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return plan_from_text(row[0]) if row else None


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def rebuild_refs(conn: sqlite3.Connection, origin: dns.name.Name) -> None:
    conn.execute(_REF_DDL)
    conn.execute("DELETE FROM xfr_ref")
    rows = []
    for rkey, rdtype, rdata in conn.execute(
        "SELECT rkey, rdtype, rdata FROM rr WHERE rdtype IN (2, 15, 33)"
    ):
        t = target_key(rdtype, rdata, origin)
        if t is not None:
            rows.append((t, rkey, rdtype, rdata))
    conn.executemany("INSERT OR IGNORE INTO xfr_ref VALUES (?, ?, ?, ?)", rows)


class Projector:
    """Projects each commit of the whole zone onto every slice of ``plan``.

    ``install(conn)`` once (records the plan in meta, where the transfer code
    finds it; resets the slice journal when the plan changed), then pass
    ``in_transaction`` as :class:`~zoneslice.updates.queue.UpdateQueue`'s hook. Every
    256 batches the slice journal is trimmed to the newest ``keep`` entries per slice
    (older slice servers then get AXFR form).
    """

    def __init__(self, plan: SlicePlan, *, keep: int = 10_000) -> None:
        self.plan = plan
        self.keep = keep
        self.counters = {"batches": 0, "resets": 0, "rows": 0}
        self._los = plan_los(plan)
        self._reader_conn: sqlite3.Connection | None = None
        self._reader_for: sqlite3.Connection | None = None
        self._tables_in: sqlite3.Connection | None = None
        self._views: dict[int, SliceView] | None = None
        self._whole = False

    def install(self, conn: sqlite3.Connection) -> None:
        """Record the plan and build the target index (own transaction unless one is open)."""
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN IMMEDIATE")
        try:
            journal.ensure_table(conn)
            journal.ensure_slice_table(conn)
            conn.execute(_REF_DDL)
            origin = zone_origin(conn)
            if origin != self.plan.origin:
                raise ValueError(f"plan is for {self.plan.origin}, the database holds {origin}")
            self._whole = _meta(conn, "parts") == "1"
            text = plan_text(self.plan)
            if _meta(conn, META_PLAN) != text:
                journal.clear_slices(conn)
                _set_meta(conn, META_PLAN, text)
            serial = _meta(conn, "serial")
            if _meta(conn, META_REF_SERIAL) != serial:
                rebuild_refs(conn, origin)
                _set_meta(conn, META_REF_SERIAL, serial or "")
            if own:
                conn.execute("COMMIT")
        except BaseException:
            if own:
                conn.execute("ROLLBACK")
            raise
        self._views = None

    # -- the hook

    def in_transaction(
        self, conn: sqlite3.Connection, changesets: list[journal.Changeset],
        before: Mapping[bytes, Iterable[Rec]] | None = None,
    ) -> None:
        """Append one slice_journal entry per slice for this batch (inside its transaction).
        ``before``: owned rows at some keys before the batch, as the update code read
        them; a whole-zone database without NSEC3 (where every row is owned) takes them
        instead of reading them again."""
        if not changesets:
            return
        if self._tables_in is not conn:  # until they exist outside this transaction too
            had = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                " AND name IN ('xfr_ref', 'slice_journal')"
            ).fetchone()[0]
            conn.execute(_REF_DDL)
            journal.ensure_slice_table(conn)
            if had == 2:
                self._tables_in = conn
        refs_ok = _meta(conn, META_REF_SERIAL) == str(changesets[0].serial_from)
        soa_from, soa_to = changesets[0].soa_from, changesets[-1].soa_to
        reader = self._reader(conn) if refs_ok else None
        if reader is not None:
            self._project_with_reader(conn, reader, changesets, before if self._whole else None)
            return
        self._undo(conn, changesets)
        if not refs_ok:  # the database changed behind our back: rebuild what we keep
            rebuild_refs(conn, self.plan.origin)
            self._views = None
        keys, special, _changed = self._touched(changesets)
        views = self._views
        special = special or _events_touched(views, keys)
        extra: dict[int, set[bytes]] = {}
        if special or views is None:
            before_views = self._make_views(conn)
            self._redo(conn, changesets)
            after_views = self._make_views(conn)
            changed = _view_changes(before_views, after_views)
            if changed is None:
                self._reset_all(conn, soa_from, soa_to, changesets)
                self._views = None
                return
            extra = changed
            self._undo(conn, changesets)
        else:
            before_views = after_views = views
        _fresh(before_views, conn)
        before = self._members(before_views, keys, extra)
        self._redo(conn, changesets)
        _fresh(after_views, conn)
        after = self._members(after_views, keys, extra)
        self._views = None if special else after_views
        self._append(conn, changesets, before, after)

    def _append(
        self,
        conn: sqlite3.Connection,
        changesets: list[journal.Changeset],
        before: dict[int, set[Row]],
        after: dict[int, set[Row]],
    ) -> None:
        soa_from, soa_to = changesets[0].soa_from, changesets[-1].soa_to
        for i in range(self.plan.parts):
            b, a = before[i], after[i]
            deleted = sorted(b - a)
            added = sorted(a - b)
            self.counters["rows"] += len(deleted) + len(added)
            journal.append_slice(conn, journal.SliceChangeset(i, soa_from, soa_to, deleted, added))
        _set_meta(conn, META_REF_SERIAL, str(changesets[-1].serial_to))
        self.counters["batches"] += 1
        if self.counters["batches"] % 256 == 0:
            journal.trim_slices(conn, self.keep)

    def _reader(self, conn: sqlite3.Connection) -> sqlite3.Connection | None:
        """A read-only connection to the same (WAL) database: while ``conn``'s transaction
        is open it reads the state before the batch, so no undo/redo is needed (None:
        an in-memory or non-WAL database, where the undo/redo path runs)."""
        if self._reader_conn is not None and self._reader_for is conn:
            return self._reader_conn
        path = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if not path or str(mode).lower() != "wal":
            return None
        if self._reader_conn is not None:
            self._reader_conn.close()
        self._reader_conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        self._reader_for = conn
        return self._reader_conn

    def _project_with_reader(
        self, conn: sqlite3.Connection, reader: sqlite3.Connection,
        changesets: list[journal.Changeset], before_rows: Mapping[bytes, Iterable[Rec]] | None,
    ) -> None:
        """The projection with the "before" state read through ``reader`` (the last commit)
        and the "after" state through ``conn``; only ``xfr_ref`` is brought up to date."""
        keys, special, batch_changes = self._touched(changesets)
        for cs in changesets:
            self._refs(conn, cs.deleted, cs.added)
        views = self._views
        special = special or _events_touched(views, keys)
        extra: dict[int, set[bytes]] = {}
        reader.execute("BEGIN")
        try:
            if special or views is None:
                before_views = self._make_views(reader)
                after_views = self._make_views(conn)
                changed = _view_changes(before_views, after_views)
                if changed is None:
                    soa_from, soa_to = changesets[0].soa_from, changesets[-1].soa_to
                    self._reset_all(conn, soa_from, soa_to, changesets)
                    self._views = None
                    return
                extra = changed
            else:
                before_views = after_views = views
            _fresh(before_views, reader)
            v0 = next(iter(before_views.values()))
            if before_rows and v0.mode != "nsec3":  # NSEC3 rows are not owned, even here
                v0.state.seed(before_rows)
            before = self._members(before_views, keys, extra)
            carried = v0.state.carried(conn, self.plan.origin, changesets, batch_changes)
            for v in after_views.values():
                v.state = carried
            after = self._members(after_views, keys, extra)
        finally:
            reader.execute("COMMIT")
        self._views = None if special else after_views
        self._append(conn, changesets, before, after)

    def _ref_rows(self, rrs: Iterable[journal.RR]) -> list[tuple[bytes, bytes, int, bytes]]:
        """``xfr_ref`` rows (target, owner, type, rdata) of the NS/MX/SRV records in ``rrs``."""
        origin = self.plan.origin
        return [
            (t, name_key(name, origin), rdtype, rdata)
            for name, rdtype, _ttl, rdata in rrs
            if rdtype in REF_TYPES and (t := target_key(rdtype, rdata, origin)) is not None
        ]

    def _refs(
        self, conn: sqlite3.Connection, gone: Iterable[journal.RR], come: Iterable[journal.RR]
    ) -> None:
        drop = self._ref_rows(gone)
        if drop:
            conn.executemany(
                "DELETE FROM xfr_ref WHERE tkey = ? AND rkey = ? AND rdtype = ? AND rdata = ?", drop
            )
        add = self._ref_rows(come)
        if add:
            conn.executemany("INSERT OR IGNORE INTO xfr_ref VALUES (?, ?, ?, ?)", add)

    def _reset_all(
        self,
        conn: sqlite3.Connection,
        soa_from: bytes,
        soa_to: bytes,
        changesets: list[journal.Changeset],
    ) -> None:
        for i in range(self.plan.parts):
            journal.append_slice(conn, journal.SliceChangeset(i, soa_from, soa_to, reset=True))
        _set_meta(conn, META_REF_SERIAL, str(changesets[-1].serial_to))
        self.counters["resets"] += 1

    def _make_views(self, conn: sqlite3.Connection) -> dict[int, SliceView]:
        state = _State(conn, self._los)
        mode = dnssec_mode(conn)
        return {i: SliceView(conn, self.plan, i, mode, state) for i in range(self.plan.parts)}

    def _members(
        self, views: dict[int, SliceView], keys: set[bytes], extra: dict[int, set[bytes]]
    ) -> dict[int, set[Row]]:
        out: dict[int, set[Row]] = {}
        cands: dict[bytes, set[int] | None] = {}
        for i, v in views.items():
            ks = keys | extra.get(i, set())
            if i in extra:
                ks |= {a for k in extra[i] for a in ancestors(k)}
            rows: set[Row] = set()
            for k in ks:
                if k not in cands:
                    cands[k] = self._candidates(views, k)
                c = cands[k]
                if c is not None and i not in c:
                    continue
                rows.update(r for r in v.rows_at(k) if not (r[0] == b"" and r[1] == T_SOA))
            out[i] = rows
        return out

    def _candidates(self, views: dict[int, SliceView], key: bytes) -> set[int] | None:
        """The slices that can hold rows at ``key`` (None: maybe any). A slice not owning
        the key holds rows there only as glue of its own references (A/AAAA, their
        RRSIGs, the NS of cuts above such glue), through a redirect or the apex wildcard,
        or as NSEC/NSEC3 copies: everything but the references goes to "any". No rows: none."""
        v0 = next(iter(views.values()))
        if key == b"" or WILD <= key < WILD_END or any(v.events for v in views.values()):
            return None
        state = v0.state
        rows = state.rows(key)
        if not rows:
            return set()
        if v0.mode and any(_is_nsec_row(t, c) or _is_nsec3_row(t, c) for t, c, _, _ in rows):
            return None
        out = {state.slice_of(key)}
        refd = [key]
        if any(r[0] == T_NS for r in rows):
            refd += state.addr_below(key)
        for k in refd:
            apex, found = state.ref_slices(k)
            if apex:
                return None
            out |= found
        return out

    def _touched(
        self, changesets: list[journal.Changeset]
    ) -> tuple[set[bytes], bool, _Changed]:
        """Keys whose membership a batch may change, whether non-local rules may move, and
        what the batch changed (:meth:`_State.carried`)."""
        origin = self.plan.origin
        owners: set[bytes] = set()
        targets: set[bytes] = set()
        below: set[bytes] = set()
        special = False
        for cs in changesets:
            for name, rdtype, _ttl, rdata in cs.deleted + cs.added:
                k = name_key(name, origin)
                owners.add(k)
                if rdtype in REF_TYPES:
                    t = target_key(rdtype, rdata, origin)
                    if t is not None:
                        targets.add(t)
                elif rdtype in (T_A, T_AAAA) and k not in below:
                    below.add(b"")
                    below.update(ancestors(k))
                if rdtype in REDIRECT_TYPES or rdtype == T_NSEC or (
                    k == b"" and rdtype == T_NSEC3PARAM
                ):
                    special = True
        keys = owners | targets
        keys |= {a for k in list(keys) for a in ancestors(k)}
        # the apex's rows changed too: the serial moved, and the journal leaves the SOA out
        return keys, special, (owners | {b""}, targets, below)

    # -- moving the database between the states before and after the batch

    def _apply(
        self,
        conn: sqlite3.Connection,
        gone: Iterable[journal.RR],
        come: Iterable[journal.RR],
        refs: bool,
    ) -> None:
        origin = self.plan.origin
        for name, rdtype, _ttl, rdata in gone:
            k = name_key(name, origin)
            covers = covers_of(rdtype, rdata)
            conn.execute(
                "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND covers = ? AND rdata = ?",
                (k, rdtype, covers, rdata),
            )
            if refs and rdtype in REF_TYPES:
                t = target_key(rdtype, rdata, origin)
                if t is not None:
                    conn.execute(
                        "DELETE FROM xfr_ref WHERE tkey = ? AND rkey = ? AND rdtype = ? AND rdata = ?",
                        (t, k, rdtype, rdata),
                    )
        for name, rdtype, ttl, rdata in come:
            k = name_key(name, origin)
            conn.execute(
                "INSERT OR REPLACE INTO rr (rkey, rdtype, covers, rdata, ttl, origin)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (k, rdtype, covers_of(rdtype, rdata), rdata, ttl, OWNED),
            )
            if refs and rdtype in REF_TYPES:
                t = target_key(rdtype, rdata, origin)
                if t is not None:
                    conn.execute(
                        "INSERT OR IGNORE INTO xfr_ref VALUES (?, ?, ?, ?)", (t, k, rdtype, rdata)
                    )

    def _undo(self, conn: sqlite3.Connection, changesets: list[journal.Changeset]) -> None:
        """Back to the state before the batch; idempotent on ``xfr_ref``, which may
        already be there (the update itself does not maintain it)."""
        for cs in reversed(changesets):
            self._apply(conn, cs.added, cs.deleted, True)

    def _redo(self, conn: sqlite3.Connection, changesets: list[journal.Changeset]) -> None:
        for cs in changesets:
            self._apply(conn, cs.deleted, cs.added, True)


def _fresh(views: dict[int, SliceView], conn: sqlite3.Connection) -> None:
    """Point the views at a fresh read cache (the database just changed)."""
    old = next(iter(views.values())).state
    state = _State(conn, old.los)
    for v in views.values():
        v.state = state


def apply_slice_changes(
    conn: sqlite3.Connection, changes: Iterable[journal.SliceChangeset]
) -> None:
    """Apply projected entries to a slice database (inside the caller's transaction);
    the apex SOA keeps its TTL and takes each entry's new rdata."""
    for cs in changes:
        for rkey, rdtype, covers, rdata, _ttl, _o in cs.deleted:
            conn.execute(
                "DELETE FROM rr WHERE rkey = ? AND rdtype = ? AND covers = ? AND rdata = ?",
                (rkey, rdtype, covers, rdata),
            )
        conn.executemany("INSERT OR REPLACE INTO rr VALUES (?, ?, ?, ?, ?, ?)", cs.added)
        conn.execute("UPDATE rr SET rdata = ? WHERE rkey = x'' AND rdtype = 6", (cs.soa_to,))
        _set_meta(conn, "serial", str(cs.serial_to))


def _events_touched(views: dict[int, SliceView] | None, keys: Iterable[bytes]) -> bool:
    """Whether a touched key falls in a range of some slice's special events (then the
    cached views cannot be reused)."""
    if views is None:
        return False
    return any(e.lab <= k < e.end for v in views.values() for e in v.events for k in keys)


def _view_changes(
    before: dict[int, SliceView], after: dict[int, SliceView]
) -> dict[int, set[bytes]] | None:
    """Per slice, the keys related to views whose signature changed; None when the
    denial mode changed (every slice must then be reset)."""
    modes = {v.mode for v in before.values()} | {v.mode for v in after.values()}
    if len(modes) > 1:
        return None
    extra: dict[int, set[bytes]] = {}
    for i, b in before.items():
        a = after[i]
        if a.signature() != b.signature():
            extra[i] = b.related_keys() | a.related_keys()
    return extra
