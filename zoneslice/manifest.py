"""manifest.json: the description of a split zone that every other stage reads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoneslice.errors import ManifestError, SliceError
from zoneslice.slicing import LOOKUP_RULE, SlicePlan

FORMAT = "zoneslice-manifest/1"
FILENAME = "manifest.json"


@dataclass
class SliceInfo:
    """One slice as the manifest records it."""

    index: int
    file: str
    lo: str
    hi: str | None
    display: str
    first: str | None
    last: str | None
    names: int
    records_owned: int
    records_copied: dict[str, int]
    records_total: int
    bytes: int
    sha256: str
    records_apex: int = 0
    ttl_normalised: int = 0


@dataclass
class Manifest:
    """All slices of one zone, and the rule that says which slice owns a name."""

    origin: str
    serial: int
    parts: int
    by: str
    dnssec: str | None
    source: dict[str, Any]
    bounds: list[str]
    slices: list[SliceInfo]
    records_in: int
    directory: Path | None = field(default=None, compare=False)

    @property
    def plan(self) -> SlicePlan:
        return SlicePlan.from_bounds_text(self.origin, self.bounds)

    def slice_path(self, index: int) -> Path:
        if not 0 <= index < len(self.slices):
            raise SliceError(f"no slice {index}: the manifest has {len(self.slices)}")
        base = self.directory or Path(".")
        return base / self.slices[index].file

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "origin": self.origin,
            "serial": self.serial,
            "parts": self.parts,
            "by": self.by,
            "dnssec": self.dnssec,
            "source": self.source,
            "records_in": self.records_in,
            "lookup": {"rule": LOOKUP_RULE, "bounds": self.bounds},
            "slices": [asdict(s) for s in self.slices],
        }


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    """Write atomically (temporary file, fsync, rename)."""
    path = directory / FILENAME
    tmp = directory / (FILENAME + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest.to_json(), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest (or the manifest.json inside a slice directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{p}: no such manifest") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{p}: not a readable manifest: {exc}") from None
    if data.get("format") != FORMAT:
        raise ManifestError(f"{p}: format is {data.get('format')!r}, expected {FORMAT!r}")
    try:
        slices = [SliceInfo(**s) for s in data["slices"]]
        m = Manifest(
            origin=data["origin"],
            serial=int(data["serial"]),
            parts=int(data["parts"]),
            by=data["by"],
            dnssec=data.get("dnssec"),
            source=data.get("source", {}),
            bounds=list(data["lookup"]["bounds"]),
            slices=slices,
            records_in=int(data.get("records_in", 0)),
            directory=p.parent,
        )
        m.plan  # noqa: B018 - validates origin and bounds
    except (KeyError, TypeError, ValueError, SliceError) as exc:
        raise ManifestError(f"{p}: malformed manifest: {exc}") from None
    return m
