"""What the benchmark commands share: a timestamped log line and the cached test zone."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_slices(workdir: Path, delegations: int, seed: int, parts: int) -> tuple[Path, Path]:
    """Zone file and slice directory, reused when already built with the same parameters."""
    from datasets.gen_zone import generate_zone
    from zoneslice.split import split_zone

    d = workdir / f"zone-{delegations}-{seed}"
    zone, slices = d / "zone.txt", d / f"slices-{parts}"
    if not (slices / "manifest.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        if not zone.exists():
            t = time.monotonic()
            st = generate_zone(zone, delegations=delegations, seed=seed)
            log(f"zone: {st.records} records in {time.monotonic() - t:.1f} s")
        shutil.rmtree(slices, ignore_errors=True)
        t = time.monotonic()
        split_zone(zone, parts, slices)
        log(f"split in {parts}: {time.monotonic() - t:.1f} s")
    return zone, slices
