"""SlicePlan (which slice owns a name) and the name keys whose byte order it relies on."""

from __future__ import annotations

import random

import dns.name
import pytest

from zoneslice.errors import SliceError
from zoneslice.slicing import LOOKUP_RULE, SlicePlan, label_from_text, label_text
from zoneslice.store.keys import (
    first_label_bounds,
    key_labels,
    key_name,
    label_prefix,
    name_key,
    subtree_end,
)

COM = dns.name.from_text("com.")


def test_slice_for_ranges_over_the_first_label() -> None:
    plan = SlicePlan("com.", [b"g", b"o"])
    assert plan.parts == 3
    cases = {
        "com.": 0, "COM.": 0, "a.com.": 0, "f.com.": 0, "fzzzz.com.": 0, "g.com.": 1,
        "G.com.": 1, "gaa.com.": 1, "www.gaa.com.": 1, "nzz.com.": 1, "o.com.": 2, "zzz.com.": 2,
        "0.com.": 0, "-x.com.": 0, "\\000.com.": 0, "\\255.com.": 2, "a.b.c.Z.com.": 2,
    }  # fmt: skip
    for name, want in cases.items():
        assert plan.slice_for(name) == want, name
        assert plan.slice_for(dns.name.from_text(name)) == want, name
    for outside in ("net.", "com.net.", "xcom.", "."):
        assert plan.slice_for(outside) is None, outside
        assert not plan.owns(0, outside)


def test_proper_prefix_sorts_first() -> None:
    plan = SlicePlan("com.", [b"ab"])
    assert plan.slice_for("a.com.") == 0
    assert plan.slice_for("aaz.com.") == 0
    assert plan.slice_for("ab.com.") == 1
    assert plan.slice_for("ab-.com.") == 1
    assert plan.slice_for("abc.com.") == 1


def test_owns_apex_in_every_slice_and_ranges_otherwise() -> None:
    plan = SlicePlan("example.", [b"m"])
    assert plan.owns(0, "example.") and plan.owns(1, "EXAMPLE.")
    assert plan.owns(0, "a.example.") and not plan.owns(1, "a.example.")
    assert plan.owns(1, "x.y.z.example.") and not plan.owns(0, "x.y.z.example.")


def test_range_of_display_and_bounds_text_round_trip() -> None:
    bounds = [b"d", b"m\x00", b"q.r", b"s"]
    plan = SlicePlan("Example.Org.", bounds)
    assert plan.origin == dns.name.from_text("example.org.")
    assert plan.range_of(0) == (b"", b"d") and plan.range_of(4) == (b"s", None)
    assert plan.display(0) == "[(start), d)" and plan.display(4) == "[s, (end))"
    again = SlicePlan.from_bounds_text("example.org.", plan.bounds_text())
    assert again.bounds == plan.bounds
    assert plan.bounds_text() == ["", "d", "m\\000", "q\\.r", "s"]
    with pytest.raises(SliceError):
        plan.range_of(5)
    with pytest.raises(SliceError):
        plan.range_of(-1)


def test_bounds_must_increase() -> None:
    for bad in ([b"b", b"a"], [b"a", b"a"], [b"A", b"a"]):
        with pytest.raises(SliceError, match="strictly increasing"):
            SlicePlan("com.", bad)
    assert SlicePlan("com.", [b"", b"B"]).bounds == [b"", b"b"]


def test_label_text_round_trip() -> None:
    for label in (b"a", b"a.b", b"\x00", b"\x01", b"sp ace", b'q"t', b"caf\xe9", b"*", b"-"):
        assert label_from_text(label_text(label)) == label.lower()
    assert label_from_text("ABC") == b"abc" and label_text(b"") == "" and label_from_text("") == b""
    with pytest.raises(SliceError, match="single label"):
        label_from_text("a.b")


def test_root_zone_plan() -> None:
    plan = SlicePlan(".", [b"m"])
    assert plan.slice_for(".") == 0
    assert plan.slice_for("com.") == 0 and plan.slice_for("www.net.") == 1


def test_lookup_rule_text_states_the_rule() -> None:
    for words in ("lower-cased label directly below the origin", "bounds[i]", "apex", "outside the zone"):
        assert words in LOOKUP_RULE


# -- keys: byte order == DNSSEC canonical order (RFC 4034 6.1) --------------------------------------


def _random_names(rnd: random.Random, n: int) -> list[dns.name.Name]:
    alphabet = [b"a", b"B", b"z", b"0", b"-", b"_", b"\x00", b"\x01", b"\x02", b"\xff", b"*", b"."]
    names = []
    for _ in range(n):
        labels = [
            b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4)))
            for _ in range(rnd.randint(0, 3))
        ]
        names.append(dns.name.Name(labels + list(COM.labels)))
    return names


def test_key_order_is_canonical_order() -> None:
    names = _random_names(random.Random(1), 3000)
    by_key = sorted(names, key=lambda n: name_key(n, COM))
    by_dnspython = sorted(names)  # dnspython compares names in DNSSEC canonical order
    assert [name_key(n, COM) for n in by_key] == [name_key(n, COM) for n in by_dnspython]


def test_key_round_trip_and_subtree() -> None:
    rnd = random.Random(2)
    names = _random_names(rnd, 300)
    keys = {name_key(n, COM) for n in names}
    for n in names:
        k = name_key(n, COM)
        assert key_name(k, COM) == n and key_labels(k) == [lb.lower() for lb in reversed(n.labels[:-2])]
        if not k:
            continue  # the apex's end is a sentinel (b"\xff\xff"), not a bound for every label
        end = subtree_end(k)
        below = {name_key(m, COM) for m in names if m.is_subdomain(n)}
        assert below == {x for x in keys if k <= x < end}, n
    assert name_key(COM, COM) == b""


def test_first_label_bounds_select_the_slice_range() -> None:
    names = _random_names(random.Random(3), 3000)
    plan = SlicePlan("com.", [b"\x00\x01", b"0", b"b", b"b\x00", b"z"])
    for i in range(plan.parts):
        lo_key, hi_key = first_label_bounds(*plan.range_of(i))
        for n in names:
            k = name_key(n, COM)
            inside = k >= lo_key and (hi_key is None or k < hi_key)
            assert inside == (k != b"" and plan.slice_for(n) == i), (i, n)
    assert label_prefix(b"A\x00\x01b") == b"a\x01\x01\x01\x02b"


def test_labels_key_one_pass_equals_label_by_label() -> None:
    """The one-pass path (no byte to escape) and the escaping path give the same keys."""
    from zoneslice.store.keys import labels_key

    rnd = random.Random(3)
    alphabet = b"aZ-09\x00\x01\x02\xff."
    for _ in range(3000):
        labels = [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6)))
                  for _ in range(rnd.randint(0, 4))]
        slow = b"".join(label_prefix(lb) + b"\x00" for lb in labels)
        assert labels_key(labels) == slow, labels
