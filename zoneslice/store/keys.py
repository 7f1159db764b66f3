"""Name keys: byte strings whose octet order is DNSSEC canonical order.

A key is the owner's labels below the origin, top label first, each label
lower-cased, escaped (0x00 -> 01 01, 0x01 -> 01 02) and ended by 0x00. So a
name's key is a prefix of every descendant's key, a shorter label sorts before
a longer one it prefixes, and ``ORDER BY rkey`` walks the zone in canonical
order: the apex (empty key) first, then each subtree in order. Predecessor
lookups (NSEC), closest-encloser and "has descendants" (empty non-terminal)
checks become range queries on one index.
"""

from __future__ import annotations

import dns.name

_ESC = {0: b"\x01\x01", 1: b"\x01\x02"}
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def label_prefix(label: bytes) -> bytes:
    """The escaped, lower-cased label without its terminator (for range bounds)."""
    label = label.translate(_LOWER)
    if b"\x00" in label or b"\x01" in label:
        return b"".join(_ESC.get(c, bytes((c,))) for c in label)
    return label


def labels_key(labels_top_first: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Key of the labels below the origin, given top label first."""
    if not labels_top_first:
        return b""
    joined = b"\x00".join(labels_top_first)
    if b"\x01" not in joined and joined.count(0) == len(labels_top_first) - 1:
        return joined.translate(_LOWER) + b"\x00"  # nothing to escape: one pass
    return b"".join(label_prefix(lb) + b"\x00" for lb in labels_top_first)


def name_key(name: dns.name.Name, origin: dns.name.Name) -> bytes:
    """Key of ``name``, which must be at or below ``origin``."""
    rel = name.labels[: len(name.labels) - len(origin.labels)]
    return labels_key(rel[::-1])


def key_labels(key: bytes) -> list[bytes]:
    """The labels (top first) of a key, lower-cased."""
    out: list[bytes] = []
    cur = bytearray()
    i = 0
    n = len(key)
    while i < n:
        c = key[i]
        if c == 0:
            out.append(bytes(cur))
            cur.clear()
        elif c == 1:
            i += 1
            cur.append(key[i] - 1)
        else:
            cur.append(c)
        i += 1
    return out


def key_name(key: bytes, origin: dns.name.Name) -> dns.name.Name:
    """The (lower-cased) name of a key."""
    return dns.name.Name(tuple(key_labels(key)[::-1]) + origin.labels)


def subtree_end(key: bytes) -> bytes:
    """Exclusive upper bound of ``key`` and all its descendants (for the apex: None-like b"\\xff")."""
    if not key:
        return b"\xff" * 2
    return key[:-1] + b"\x01"


def first_label_bounds(lo: bytes, hi: bytes | None) -> tuple[bytes, bytes | None]:
    """Key range ``[lo_key, hi_key)`` of all names whose first label is in ``[lo, hi)``."""
    lo_key = label_prefix(lo) if lo else b"\x00\x00"  # above the apex (b"") when lo is empty
    return lo_key, (label_prefix(hi) if hi is not None else None)
