"""The slice plan: which slice owns a name.

A zone is cut into N ranges over the label right below the origin. Slice ``i``
owns every name whose lower-cased first label ``L`` (octets, compared as in
DNSSEC canonical order: shorter prefix first) satisfies
``bounds[i] <= L < bounds[i + 1]``, with ``bounds[0] = b""`` and no upper bound
for the last slice. The apex has no such label: it belongs to slice 0 for
bookkeeping, and every slice carries and answers it. This module is pure and
is shared by split, the engine, replay and the playbooks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import dns.name

from zoneslice.errors import SliceError

LOOKUP_RULE = (
    "slice i owns a name when the lower-cased label directly below the origin, "
    "compared octet by octet (a proper prefix sorts first, as in DNSSEC canonical order), "
    "is >= bounds[i] and < bounds[i+1]; bounds[0] is empty and the last slice has no upper "
    "bound; the apex is carried and answered by every slice; names outside the zone belong "
    "to no slice"
)


def label_text(label: bytes) -> str:
    """Presentation form of one label (escaped as in a master file)."""
    if not label:
        return ""
    return dns.name.Name([label]).to_text(omit_final_dot=True)


def label_from_text(text: str) -> bytes:
    """Inverse of :func:`label_text`, lower-cased."""
    if text == "":
        return b""
    labels = dns.name.from_text(text, origin=None).labels
    if len(labels) != 1:
        raise SliceError(f"slice bound {text!r} is not a single label")
    return labels[0].lower()


class SlicePlan:
    """N label ranges under one origin."""

    def __init__(self, origin: dns.name.Name | str, bounds: Sequence[bytes]) -> None:
        if isinstance(origin, str):
            origin = dns.name.from_text(origin)
        self.origin: dns.name.Name = origin.canonicalize()
        bounds = [b.lower() for b in bounds]
        if not bounds or bounds[0] != b"":
            bounds = [b""] + bounds
        for a, b in zip(bounds, bounds[1:], strict=False):
            if not a < b:
                raise SliceError(f"slice bounds are not strictly increasing: {a!r} >= {b!r}")
        self.bounds: list[bytes] = bounds
        self._depth = len(self.origin.labels)

    @property
    def parts(self) -> int:
        return len(self.bounds)

    def range_of(self, index: int) -> tuple[bytes, bytes | None]:
        """``(lo, hi)``: inclusive lower and exclusive upper bound (None: no upper bound)."""
        if not 0 <= index < self.parts:
            raise SliceError(f"no slice {index}: the plan has {self.parts}")
        hi = self.bounds[index + 1] if index + 1 < self.parts else None
        return self.bounds[index], hi

    def display(self, index: int) -> str:
        lo, hi = self.range_of(index)
        return f"[{label_text(lo) or '(start)'}, {label_text(hi) if hi is not None else '(end)'})"

    def first_label(self, name: dns.name.Name | str) -> bytes | None:
        """The lower-cased label right below the origin; b"" for the apex; None outside the zone."""
        if isinstance(name, str):
            name = dns.name.from_text(name)
        labels = name.labels
        if len(labels) < self._depth:
            return None
        if len(labels) == self._depth:
            return b"" if name == self.origin else None
        if not name.is_subdomain(self.origin):
            return None
        return labels[-self._depth - 1].lower()

    def slice_for_label(self, label: bytes) -> int:
        """The slice owning names whose first label below the origin is ``label``."""
        return bisect.bisect_right(self.bounds, label.lower()) - 1

    def slice_for(self, name: dns.name.Name | str) -> int | None:
        """The slice owning ``name`` (0 for the apex), or None when it is outside the zone."""
        label = self.first_label(name)
        if label is None:
            return None
        return self.slice_for_label(label)

    def owns(self, index: int, name: dns.name.Name | str) -> bool:
        """True when slice ``index`` may answer for ``name`` (its range, or the apex)."""
        label = self.first_label(name)
        if label is None:
            return False
        return label == b"" or self.slice_for_label(label) == index

    def bounds_text(self) -> list[str]:
        return [label_text(b) for b in self.bounds]

    @classmethod
    def from_bounds_text(cls, origin: str, bounds: Sequence[str]) -> SlicePlan:
        return cls(origin, [label_from_text(b) for b in bounds])

    def __repr__(self) -> str:
        return f"SlicePlan({self.origin}, {self.bounds_text()!r})"
