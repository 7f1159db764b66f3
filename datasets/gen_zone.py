"""Deterministic, streaming generator of .com-like TLD zones.

Benchmarks need 5-20 M-record zones with the shape of the real COM zone
(a CZDS dump cannot be committed), so the zone is written straight to disk as
text, one delegation at a time, from a seeded :class:`random.Random`; memory
stays bounded by a few small pools whatever the size.

Labels are unique without remembering them: delegation ``i`` gets the label
space element ``perm(i)``, where ``perm`` is a seeded Feistel permutation and
the label space is an enumerated union of cells (first character, number of
syllables), each decoded by mixed radix into an uniquely parseable string of
consonant/vowel runs. Cell sizes follow a .com-like first-letter skew.

Command line::

    python -m datasets.gen_zone --delegations 100000 --seed 7 out.zone.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_SERIAL = 1767225600
NS_TTL = 172800
DS_TTL = 86400
SOA_TTL = 900
STYLES = ("czds", "rfc1035")

# fmt: off
# First-character weights (per mille) of registered .com labels.
FIRST_CHAR_WEIGHTS: dict[str, float] = {
    "s": 103, "c": 74, "m": 66, "b": 61, "p": 60, "a": 57, "t": 56, "d": 48,
    "h": 41, "g": 39, "l": 39, "f": 36, "r": 35, "i": 31, "e": 28, "w": 27,
    "n": 26, "o": 20, "k": 19, "v": 16, "j": 14, "u": 10, "y": 7, "z": 6,
    "q": 4, "x": 3,
    "1": 3.5, "2": 2.5, "3": 2, "4": 2, "5": 1.5, "6": 1, "7": 1.5, "8": 1.5, "9": 1.5,
    "0": 0.5,
}

# Label units. Onsets and consonants contain no vowel, vowels no consonant
# ("y" counts as a consonant), so a label splits back into its units by runs.
ONSETS: dict[str, tuple[str, ...]] = {
    "b": ("b", "bl", "br"), "c": ("c", "ch", "cl", "cr"), "d": ("d", "dr"),
    "f": ("f", "fl", "fr"), "g": ("g", "gl", "gr"), "h": ("h",), "j": ("j",),
    "k": ("k", "kl", "kr"), "l": ("l",), "m": ("m",), "n": ("n",),
    "p": ("p", "ph", "pl", "pr"), "q": ("q",), "r": ("r", "rh"),
    "s": ("s", "sc", "sh", "sk", "sl", "sm", "sn", "sp", "st", "str", "sw"),
    "t": ("t", "th", "tr", "tw"), "v": ("v",), "w": ("w", "wh", "wr"), "x": ("x",),
    "y": ("y",), "z": ("z",),
}
VOWEL_STARTS: dict[str, tuple[str, ...]] = {
    "a": ("a", "ai", "au"), "e": ("e", "ea", "ee"), "i": ("i",),
    "o": ("o", "oa", "oo", "ou"), "u": ("u",),
}
VOWELS = ("a", "e", "i", "o", "u")
DIPHTHONGS = ("ea", "oo", "ai", "ou", "io", "ee")
CONSONANTS = (
    "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
    "x", "j", "y", "ll", "ss", "tt", "nd", "nt", "st", "rt", "rn", "ck", "ch", "sh", "th",
    "ph", "tr", "br", "gr", "pl", "cr", "ng", "mb", "rs", "lk", "rd",
)
FINALS = (
    "", "n", "r", "s", "t", "x", "ck", "ng", "nt", "rd", "st", "m", "l", "y", "z", "d",
    "k", "p", "ll", "ss", "sh", "ch", "th", "ts", "rs", "nd",
)
DIGITS = tuple("0123456789")

APEX_NS_LETTERS = "abcdefghijklm"
OUT_OF_ZONE_SUFFIXES = (
    ("net.", 50), ("org.", 14), ("com.", 10), ("info.", 5), ("biz.", 3), ("co.uk.", 5),
    ("de.", 5), ("io.", 4), ("eu.", 2), ("ca.", 2),
)
NS_PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("ns1", "ns2", "ns3", "ns4", "ns5", "ns6"), 0.70),
    (("dns1", "dns2", "dns3", "dns4", "dns5", "dns6"), 0.13),
    (("ns", "ns2", "ns3", "ns4", "ns5", "ns6"), 0.06),
    (("a.ns", "b.ns", "c.ns", "d.ns", "e.ns", "f.ns"), 0.05),
    (("ns01", "ns02", "ns03", "ns04", "ns05", "ns06"), 0.06),
)
HOSTER_TAILS = ("-dns", "-host", "-hosting", "-web", "-net", "-server", "-cloud", "")
PUBLIC_V4_FIRST_OCTETS = tuple(
    o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203)
)
V6_PREFIXES = (
    "2001:", "2400:", "2404:", "2600:", "2602:", "2604:", "2606:", "2607:", "2620:",
    "2a00:", "2a01:", "2a02:", "2a03:", "2a05:", "2a06:", "2a10:", "2803:", "2c0f:",
)
# fmt: on


@dataclass(frozen=True)
class Shape:
    """The knobs that make the zone look like COM; defaults match its 2020s shape."""

    p_self_glued: float = 0.32
    """Share of delegations whose name servers are below themselves (with glue)."""
    p_in_zone_hoster: float = 0.22
    """Share served by a hoster that is itself a delegation of the zone (sibling glue)."""
    p_aaaa: float = 0.15
    """Share of glued delegations whose name servers also get AAAA glue."""
    p_ds: float = 0.06
    """Share of delegations with a DS RRset."""
    p_second_ds: float = 0.12
    """Share of DS RRsets with a second DS (key roll-over)."""
    p_ds_alg13: float = 0.62
    """Share of DS for ECDSAP256SHA256 (13); the rest are RSASHA256 (8)."""
    self_ns_counts: tuple[tuple[int, float], ...] = (
        (2, 0.80),
        (3, 0.10),
        (4, 0.07),
        (5, 0.02),
        (6, 0.01),
    )
    """NS per delegation with in-bailiwick name servers."""
    hoster_ns_counts: tuple[tuple[int, float], ...] = ((2, 0.78), (3, 0.07), (4, 0.15))
    """NS per hosting provider; the three largest of each pool always have 2, like the real ones."""
    syllable_counts: tuple[tuple[int, float], ...] = (
        (1, 0.08),
        (2, 0.30),
        (3, 0.34),
        (4, 0.17),
        (5, 0.07),
        (6, 0.04),
    )
    """Syllables per label core (about 2.5 characters each)."""
    p_digit_tail: float = 0.07
    """Share of letter labels with trailing digits (shop24)."""
    p_hyphen_word: float = 0.07
    """Share of labels with a hyphenated second word (best-deals)."""
    p_digit_word: float = 0.55
    """Share of digit-first labels followed by a word (365days)."""
    label_space_factor: float = 2.0
    """Label space size / delegations: how densely short names are taken."""
    first_char_weights: dict[str, float] = field(default_factory=lambda: dict(FIRST_CHAR_WEIGHTS))


DEFAULT_SHAPE = Shape()


@dataclass
class ZoneStats:
    """What :func:`generate_zone` wrote."""

    path: str
    origin: str
    style: str
    seed: int
    serial: int
    delegations: int = 0
    records: int = 0
    ns: int = 0
    glue_a: int = 0
    glue_aaaa: int = 0
    ds: int = 0
    glued_delegations: int = 0
    ds_delegations: int = 0
    in_bailiwick_ns: int = 0
    sibling_ns: int = 0
    out_of_zone_ns: int = 0
    in_zone_hosters: int = 0
    text_bytes: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _syllables(onsets: tuple[str, ...]) -> tuple[str, ...]:
    """Consonant run + vowel run; diphthongs only after the first few onsets, so rarer."""
    return tuple(c + v for c in onsets for v in VOWELS) + tuple(
        c + v for c in onsets[:12] for v in DIPHTHONGS
    )


_SPREAD = 1_000_000_007
"""Prime multiplier (coprime with every cell capacity) spreading offsets over a cell."""


class LabelSpace:
    """Bijection from delegation index to a unique, .com-looking label core.

    Cells are (first character, syllables), sized by the shape's weights and
    capped by how many strings a cell can spell. An offset in a cell is spread
    over the cell's capacity (``* _SPREAD + seeded offset, mod capacity``, a
    bijection) and decoded by mixed radix over the cell's unit tables. A label
    splits back into its units by runs of consonants and vowels (or digits),
    so distinct cells and distinct offsets give distinct strings.
    """

    def __init__(self, delegations: int, seed: int, shape: Shape = DEFAULT_SHAPE) -> None:
        weights = shape.first_char_weights
        total_w = sum(weights.values())
        cv = _syllables(CONSONANTS)
        target = max(4096.0, shape.label_space_factor * delegations)
        while True:
            cells: list[tuple[int, tuple[tuple[str, ...], ...]]] = []
            for ch, w in sorted(weights.items()):
                for k, pk in shape.syllable_counts:
                    tables = self._tables(ch, k, cv)
                    cap = math.prod(len(t) for t in tables)
                    size = min(cap, round(target * w / total_w * pk))
                    if size > 0:
                        cells.append((size, tables))
            space = sum(s for s, _ in cells)
            if space >= 1.2 * delegations + 64:
                break
            target *= 1.5
        side = math.isqrt(space - 1) + 1
        big = max(range(len(cells)), key=lambda c: math.prod(len(t) for t in cells[c][1]))
        cells[big] = (cells[big][0] + side * side - space, cells[big][1])
        self.size = side * side
        self.side = side
        krng = random.Random(f"zoneslice-labels-{seed}")
        self._starts: list[int] = []
        self._cells: list[tuple[int, int, int, tuple[tuple[str, ...], ...]]] = []
        pos = 0
        for size, tables in cells:
            cap = math.prod(len(t) for t in tables)
            self._starts.append(pos)
            self._cells.append((pos, cap, int(krng.random() * cap), tables))
            pos += size
        self._rounds = [[int(krng.random() * side) for _ in range(side)] for _ in range(4)]

    @staticmethod
    def _tables(ch: str, k: int, cv: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        if ch.isdigit():
            return ((ch,),) + (DIGITS,) * k
        if ch in VOWEL_STARTS:
            return (VOWEL_STARTS[ch],) + (cv,) * k + (FINALS,)
        onset_vowel = _syllables(ONSETS[ch])
        return (onset_vowel,) + (cv,) * (k - 1) + (FINALS,)

    def permute(self, i: int) -> int:
        """Position in the label space of delegation ``i`` (a bijection on [0, size))."""
        side = self.side
        r0, r1, r2, r3 = self._rounds
        left, right = divmod(i, side)
        left, right = right, (left + r0[right]) % side
        left, right = right, (left + r1[right]) % side
        left, right = right, (left + r2[right]) % side
        left, right = right, (left + r3[right]) % side
        return left * side + right

    def core(self, i: int) -> str:
        """The unique label core of delegation ``i``."""
        x = self.permute(i)
        start, cap, offset, tables = self._cells[bisect_right(self._starts, x) - 1]
        r = ((x - start) * _SPREAD + offset) % cap
        parts = []
        for table in tables:
            r, d = divmod(r, len(table))
            parts.append(table[d])
        return "".join(parts)


def _weighted_table(weights: list[float], size: int = 1 << 14) -> list[int]:
    """Lookup table for O(1) weighted picks: ``table[int(random() * size)]``."""
    total = sum(weights)
    table: list[int] = []
    acc = 0.0
    for idx, w in enumerate(weights):
        acc += w
        upto = round(acc / total * size)
        table.extend([idx] * (upto - len(table)))
    table.extend([len(weights) - 1] * (size - len(table)))
    return table


def _under(name: str, origin: str) -> bool:
    return name == origin or name.endswith("." + origin)


def _word(rnd: Callable[[], float], syllables: int) -> str:
    onsets = ONSETS[CONSONANTS[int(rnd() * 17)]]
    parts = [onsets[int(rnd() * len(onsets))], VOWELS[int(rnd() * 5)]]
    for _ in range(syllables - 1):
        parts.append(CONSONANTS[int(rnd() * 20)])
        parts.append(VOWELS[int(rnd() * 5)])
    parts.append(FINALS[int(rnd() * len(FINALS))])
    return "".join(parts)


def _ipv4(rnd: Callable[[], float]) -> str:
    b = int(rnd() * 16777216)
    o = PUBLIC_V4_FIRST_OCTETS[int(rnd() * len(PUBLIC_V4_FIRST_OCTETS))]
    return f"{o}.{b >> 16}.{(b >> 8) & 255}.{(b & 255) or 1}"


def _ipv6(rnd: Callable[[], float]) -> str:
    p = V6_PREFIXES[int(rnd() * len(V6_PREFIXES))]
    b = int(rnd() * 281474976710656)
    return f"{p}{b >> 32:x}:{(b >> 16) & 0xFFFF:x}::{(b & 0xFFFF) or 1:x}"


# One delegation: (label, NS targets, DS rdatas, glue (host, A, AAAA | None)).
# In-zone names (label, targets, hosts) are relative to the origin; out-of-zone
# targets are absolute (end with a dot).
Delegation = tuple[str, list[str], list[str], list[tuple[str, str, str | None]]]


def _n_hosters(delegations: int) -> int:
    return min(max(2, min(20000, delegations // 200)), max(1, delegations // 2))


def iter_delegations(
    delegations: int, seed: int, origin: str, shape: Shape = DEFAULT_SHAPE
) -> Iterator[Delegation]:
    """The zone's delegations in file order, as plain tuples (see ``Delegation``)."""
    space = LabelSpace(delegations, seed, shape)
    prng = random.Random(f"zoneslice-pools-{seed}")
    prnd = prng.random

    n_hosters = _n_hosters(delegations)
    hoster_ns_table = _weighted_table([w for _, w in shape.hoster_ns_counts])
    hoster_ns_values = [c for c, _ in shape.hoster_ns_counts]
    pattern_table = _weighted_table([w for _, w in NS_PATTERNS])
    patterns = [p for p, _ in NS_PATTERNS]

    hosters: list[tuple[str, list[str]]] = []
    for h in range(n_hosters):
        core = space.core(h)
        tail = HOSTER_TAILS[int(prnd() * len(HOSTER_TAILS))]
        if not tail:
            tail = "-dns" if core[0] <= "9" else str(1 + int(prnd() * 999))
        label = core + tail
        count = hoster_ns_values[hoster_ns_table[int(prnd() * 16384)]] if h >= 3 else 2
        pat = patterns[pattern_table[int(prnd() * 16384)]]
        hosters.append((label, [f"{pat[j]}.{label}" for j in range(count)]))
    in_zone_pick = _weighted_table([1.0 / (r + 1) for r in range(n_hosters)], 1 << 16)

    suffixes = [
        (s, w) for s, w in OUT_OF_ZONE_SUFFIXES if not _under(s, origin) and not _under(origin, s)
    ]
    suffixes = suffixes or [("invalid-tld-" + origin.replace(".", "-").strip("-") + ".", 1)]
    suffix_table = _weighted_table([w for _, w in suffixes])
    n_outside = max(4, min(50000, delegations // 100))
    outside: list[list[str]] = []
    for h in range(n_outside):
        count = hoster_ns_values[hoster_ns_table[int(prnd() * 16384)]] if h >= 3 else 2
        if count == 4 and prnd() < 0.5:
            num = int(prnd() * 2048)
            outside.append(
                [
                    f"ns-{num + 512 * j}.{_word(prnd, 1)}dns-{int(prnd() * 64):02d}.{suffixes[suffix_table[int(prnd() * 16384)]][0]}"
                    for j in range(4)
                ]
            )
            continue
        suffix = suffixes[suffix_table[int(prnd() * 16384)]][0]
        base = _word(prnd, 1 + int(prnd() * 3)) + (str(h) if prnd() < 0.3 else "")
        pat = patterns[pattern_table[int(prnd() * 16384)]]
        outside.append([f"{pat[j]}.{base}.{suffix}" for j in range(count)])
    outside_pick = _weighted_table([1.0 / (r + 1) ** 0.9 for r in range(n_outside)], 1 << 16)

    self_table = _weighted_table([w for _, w in shape.self_ns_counts])
    self_values = [c for c, _ in shape.self_ns_counts]
    rng = random.Random(seed)
    rnd = rng.random
    core = space.core
    p_self = shape.p_self_glued
    p_in = p_self + shape.p_in_zone_hoster
    p_aaaa, p_ds, p_ds2, p_13 = shape.p_aaaa, shape.p_ds, shape.p_second_ds, shape.p_ds_alg13
    p_digits, p_hyphen = shape.p_digit_tail, shape.p_digit_tail + shape.p_hyphen_word
    p_dword = shape.p_digit_word
    ds_key = f"zoneslice-ds-{seed}-".encode()
    sha256 = hashlib.sha256
    ipv4, ipv6 = _ipv4, _ipv6

    for i in range(delegations):
        if i < n_hosters:
            label, targets = hosters[i]
            kind = 0
        else:
            label = core(i)
            u = rnd()
            if label[0] <= "9":
                if u < p_dword:
                    label += _word(rnd, 1 + int(rnd() * 2))
                elif u < p_dword + 0.1:
                    label += "-" + _word(rnd, 1 + int(rnd() * 2))
            elif u < p_digits:
                label += str(int(10 ** (1 + rnd() * 3)))
            elif u < p_hyphen:
                label += "-" + _word(rnd, 1 + int(rnd() * 2))
            u = rnd()
            if u < p_self:
                kind = 0
                pat = patterns[pattern_table[int(rnd() * 16384)]]
                targets = [
                    f"{pat[j]}.{label}" for j in range(self_values[self_table[int(rnd() * 16384)]])
                ]
            elif u < p_in:
                kind = 1
                targets = hosters[in_zone_pick[int(rnd() * 65536)]][1]
            else:
                kind = 2
                targets = outside[outside_pick[int(rnd() * 65536)]]
        ds: list[str] = []
        if rnd() < p_ds:
            n_ds = 2 if rnd() < p_ds2 else 1
            for j in range(n_ds):
                alg = 13 if rnd() < p_13 else 8
                digest = sha256(ds_key + f"{i}-{j}".encode()).hexdigest().upper()
                ds.append(f"{int(rnd() * 65536)} {alg} 2 {digest}")
        glue: list[tuple[str, str, str | None]] = []
        if kind == 0:
            six = rnd() < p_aaaa
            for t in targets:
                glue.append((t, ipv4(rnd), ipv6(rnd) if six else None))
        yield label, targets, ds, glue


class _Sink:
    """Buffered writer to a plain or gzip file; counts text bytes."""

    def __init__(self, path: Path, gzip_level: int | None) -> None:
        self.raw = open(path, "wb")
        self.out = (
            self.raw
            if gzip_level is None
            else gzip.GzipFile(
                filename="", mode="wb", fileobj=self.raw, mtime=0, compresslevel=gzip_level
            )
        )
        self.text_bytes = 0

    def write(self, text: str) -> None:
        data = text.encode("ascii")
        self.text_bytes += len(data)
        self.out.write(data)

    def close(self) -> None:
        if self.out is not self.raw:
            self.out.close()
        self.raw.close()


def _apex_ns(origin: str) -> list[str]:
    for parent in ("net.", "com.", "org."):
        if not _under(parent, origin) and not _under(origin, parent):
            return [f"{c}.gtld-servers.{parent}" for c in APEX_NS_LETTERS]
    return [f"{c}.gtld-servers.invalid." for c in APEX_NS_LETTERS]


def _soa_rdata(origin: str, serial: int) -> tuple[str, str, int, int, int, int]:
    mname = _apex_ns(origin)[0]
    return mname, "nstld.verisign-grs.com.", 1800, 900, 604800, 86400


def _write_czds(
    sink: _Sink, origin: str, serial: int, dels: Iterator[Delegation], st: ZoneStats
) -> None:
    mname, rname, refresh, retry, expire, minimum = _soa_rdata(origin, serial)
    head = [
        f"{origin}\t{SOA_TTL}\tIN\tSOA\t{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}\n"
    ]
    head += [f"{origin}\t{NS_TTL}\tIN\tNS\t{t}\n" for t in _apex_ns(origin)]
    sink.write("".join(head))
    st.records += len(head)
    dot = "." + origin
    buf: list[str] = []
    records = ns = glue_a = glue_aaaa = ds_n = glued = ds_dels = 0
    for label, targets, ds, glue in dels:
        owner = label + dot
        for t in targets:
            buf.append(f"{owner}\t172800\tIN\tNS\t{t if t[-1] == '.' else t + dot}\n")
        ns += len(targets)
        if ds:
            ds_dels += 1
            ds_n += len(ds)
            for d in ds:
                buf.append(f"{owner}\t86400\tIN\tDS\t{d}\n")
        if glue:
            glued += 1
            for host, a, aaaa in glue:
                h = host + dot
                buf.append(f"{h}\t172800\tIN\tA\t{a}\n")
                if aaaa is not None:
                    buf.append(f"{h}\t172800\tIN\tAAAA\t{aaaa}\n")
                    glue_aaaa += 1
            glue_a += len(glue)
        if len(buf) >= 8192:
            records += len(buf)
            sink.write("".join(buf))
            buf.clear()
    records += len(buf)
    sink.write("".join(buf))
    st.records += records
    st.ns, st.glue_a, st.glue_aaaa, st.ds = ns, glue_a, glue_aaaa, ds_n
    st.glued_delegations, st.ds_delegations = glued, ds_dels


def _write_rfc1035(
    sink: _Sink, origin: str, serial: int, seed: int, dels: Iterator[Delegation], st: ZoneStats
) -> None:
    """Same records as czds, in the many spellings RFC 1035 and BIND allow."""
    mname, rname, refresh, retry, expire, minimum = _soa_rdata(origin, serial)
    frng = random.Random(f"zoneslice-format-{seed}")
    f = frng.random
    out = [
        f"; zoneslice synthetic zone {origin} (seed {seed})\n",
        f"$ORIGIN {origin}\n",
        f"$TTL {NS_TTL}\n",
        f"@\t{SOA_TTL}\tIN\tSOA\t{mname} {rname} (\n"
        f"\t\t\t\t{serial}\t; serial\n"
        f"\t\t\t\t{refresh}\t\t; refresh\n"
        f"\t\t\t\t{retry}\t\t; retry\n"
        f"\t\t\t\t{expire}\t\t; expire\n"
        f"\t\t\t\t{minimum} )\t\t; minimum\n",
    ]
    for j, t in enumerate(_apex_ns(origin)):
        out.append(f"\t\t\tNS\t{t}\n" if j else f"\t\t\tIN NS\t{t} ; apex\n")
    out.append("\n")
    sink.write("".join(out))
    st.records += 1 + len(_apex_ns(origin))
    dot = "." + origin
    ttl_forms = (
        "",
        "",
        "",
        "",
        "",
        "172800 ",
        "IN ",
        "172800 IN ",
        "IN 172800 ",
        "2d ",
        "2D IN ",
        "48h ",
    )
    ds_forms = ("86400 ", "86400 IN ", "IN 86400 ", "1d ", "1D IN ")
    buf: list[str] = []
    ns = glue_a = glue_aaaa = ds_n = glued = ds_dels = 0
    for n, (label, targets, ds, glue) in enumerate(dels):
        if n % 997 == 0:
            buf.append(f"; -- delegation {n}\n")
        owner = label + dot if f() < 0.05 else label
        first = True
        for t in targets:
            tf = ttl_forms[int(f() * len(ttl_forms))]
            typ = "ns" if f() < 0.03 else "NS"
            tgt = t if t[-1] == "." else (t + dot if f() < 0.1 else t)
            buf.append(f"{owner if first else ''}\t{tf}{typ}\t{tgt}\n")
            first = False
        ns += len(targets)
        if ds:
            ds_dels += 1
            ds_n += len(ds)
            for d in ds:
                tf = ds_forms[int(f() * len(ds_forms))]
                if f() < 0.3:
                    tag, alg, dt, digest = d.split()
                    d = f"{tag} {alg} {dt} (\n\t\t\t\t{digest[:32]}\n\t\t\t\t{digest[32:].lower()} ) ; split"
                buf.append(f"\t{tf}DS\t{d}\n")
        if glue:
            glued += 1
            via_origin = f() < 0.02
            if via_origin:
                buf.append(f"$ORIGIN {label}{dot}\n")
            for host, a, aaaa in glue:
                tf = ttl_forms[int(f() * len(ttl_forms))]
                h = host[: -len(label) - 1] if via_origin else host
                buf.append(f"{h}\t{tf}A\t{a}\n")
                if aaaa is not None:
                    buf.append(f"\t{ttl_forms[int(f() * len(ttl_forms))]}AAAA\t{aaaa}\n")
                    glue_aaaa += 1
            glue_a += len(glue)
            if via_origin:
                buf.append(f"$ORIGIN {origin}\n")
        if len(buf) >= 8192:
            sink.write("".join(buf))
            buf.clear()
    sink.write("".join(buf))
    st.records += ns + ds_n + glue_a + glue_aaaa
    st.ns, st.glue_a, st.glue_aaaa, st.ds = ns, glue_a, glue_aaaa, ds_n
    st.glued_delegations, st.ds_delegations = glued, ds_dels


def _counting(dels: Iterator[Delegation], st: ZoneStats, n_hosters: int) -> Iterator[Delegation]:
    n = inb = sib = outz = 0
    for d in dels:
        n += 1
        targets, glue = d[1], d[3]
        if glue:
            inb += len(targets)
        elif targets[0][-1] == ".":
            outz += len(targets)
        else:
            sib += len(targets)
        yield d
    st.delegations = n
    st.in_bailiwick_ns, st.sibling_ns, st.out_of_zone_ns = inb, sib, outz
    st.in_zone_hosters = n_hosters


def _normalize_origin(origin: str) -> str:
    origin = origin.strip().lower()
    if not origin.endswith("."):
        origin += "."
    if origin == "." or ".." in origin:
        raise ValueError(f"origin must be a non-root domain name, not {origin!r}")
    return origin


def generate_zone(
    path: str | os.PathLike[str],
    delegations: int,
    seed: int = 1,
    origin: str = "com.",
    serial: int = DEFAULT_SERIAL,
    style: str = "czds",
    shape: Shape = DEFAULT_SHAPE,
    compresslevel: int = 6,
) -> ZoneStats:
    """Write a .com-like zone to ``path`` (gzip if it ends in ``.gz``), atomically.

    Same arguments give the same bytes; the zone is streamed, never held in memory.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if delegations < 1:
        raise ValueError("need at least one delegation")
    origin = _normalize_origin(origin)
    path = Path(path)
    st = ZoneStats(path=str(path), origin=origin, style=style, seed=seed, serial=serial)
    t0 = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(
        prefix=path.name + ".",
        suffix=".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        sink = _Sink(tmp, compresslevel if path.name.endswith(".gz") else None)
        dels = _counting(
            iter_delegations(delegations, seed, origin, shape), st, _n_hosters(delegations)
        )
        if style == "czds":
            _write_czds(sink, origin, serial, dels, st)
        else:
            _write_rfc1035(sink, origin, serial, seed, dels, st)
        sink.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st.text_bytes = sink.text_bytes
    st.bytes = path.stat().st_size
    st.seconds = round(time.perf_counter() - t0, 3)
    return st


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.gen_zone``: generate (and optionally sign), print stats as JSON."""
    ap = argparse.ArgumentParser(
        prog="python -m datasets.gen_zone", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--delegations", "-n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--origin", default="com.")
    ap.add_argument("--serial", type=int, default=DEFAULT_SERIAL)
    ap.add_argument("--style", choices=STYLES, default="czds")
    ap.add_argument("--sign", choices=("nsec", "nsec3"))
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.sign is None:
        st = generate_zone(
            args.out, args.delegations, args.seed, args.origin, args.serial, args.style
        )
        print(json.dumps(st.to_dict(), indent=2))
        return 0
    from datasets.sign import sign_zone

    with tempfile.TemporaryDirectory(prefix="zoneslice-gen-", dir=args.out.parent) as tmpdir:
        unsigned = Path(tmpdir) / "unsigned.zone"
        st = generate_zone(
            unsigned, args.delegations, args.seed, args.origin, args.serial, args.style
        )
        t0 = time.perf_counter()
        sign_zone(unsigned, args.out, st.origin, args.sign, seed=args.seed)
        report = st.to_dict()
        report.update(
            path=str(args.out),
            bytes=args.out.stat().st_size,
            signed=args.sign,
            sign_seconds=round(time.perf_counter() - t0, 3),
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
