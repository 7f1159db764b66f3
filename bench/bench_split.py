"""Benchmark: `zoneslice split` against `named-checkzone` loading the same zone, in one run.

Generates a .com-like zone of about --records records (default 5 M), then times
`named-checkzone -i local` (BIND's loader, Debian bind9-utils) and
`zoneslice split --parts N` on it, each as a separate process, and prints
records/s, peak RSS and the ratio. named-checkzone loads on one core, split uses
all of them, so a busy machine lowers the ratio: the 1-minute load average before
each run and the CPU seconds (user + system) of each are printed too. Run on an
otherwise idle machine:

    .venv/bin/python bench/bench_split.py [--records 5000000] [--parts 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECORDS_PER_DELEGATION = 3.25  # measured on datasets.gen_zone output


def timed(cmd: list[str]) -> tuple[float, float, float, float, str]:
    """Wall seconds, CPU seconds and peak RSS in MiB (of the process and its children),
    the load average before the run, stdout."""
    load = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode(errors='replace')[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, load, out.decode(errors="replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=5_000_000)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="zs-bench-split-"))
    work.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent
    zone = work / "com.zone"
    try:
        delegations = max(1000, int(args.records / RECORDS_PER_DELEGATION))
        gen = subprocess.run(
            [sys.executable, "-m", "datasets.gen_zone", "--delegations", str(delegations), str(zone)],
            check=True, capture_output=True, text=True,
        )
        records = json.loads(gen.stdout)["records"]
        size = zone.stat().st_size
        bind_s, bind_cpu, bind_rss, bind_load, _ = timed(["named-checkzone", "-i", "local", "-q", "com", str(zone)])
        zs_s, zs_cpu, zs_rss, zs_load, out = timed(
            [str(venv_bin / "zoneslice"), "split", str(zone), "--parts", str(args.parts),
             "--out", str(work / "slices"), "--json"]
        )
        manifest = json.loads(out)
        sizes = [s["records_owned"] for s in manifest["slices"]]
        mean = sum(sizes) / len(sizes)
        result = {
            "machine": f"{os.cpu_count()} vCPU",
            "records": records,
            "zone_bytes": size,
            "named_checkzone": {"seconds": round(bind_s, 2), "records_per_s": round(records / bind_s),
                                "cpu_seconds": round(bind_cpu, 2), "peak_rss_mib": round(bind_rss),
                                "load_before": bind_load},
            "zoneslice_split": {"seconds": round(zs_s, 2), "records_per_s": round(records / zs_s),
                                "cpu_seconds": round(zs_cpu, 2), "peak_rss_mib": round(zs_rss),
                                "load_before": zs_load, "parts": args.parts,
                                "max_imbalance_pct": round(100 * max(abs(s - mean) for s in sizes) / mean, 2)},
            "ratio_split_over_checkzone": round(bind_s / zs_s, 3),
        }
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, z = result["named_checkzone"], result["zoneslice_split"]
        print(f"zone: {records:,} records, {size / 2**20:,.0f} MiB ({result['machine']})")
        print(f"named-checkzone -i local : {b['seconds']:8.2f} s  {b['records_per_s']:>10,} rec/s  "
              f"cpu {b['cpu_seconds']:.1f} s  peak RSS {b['peak_rss_mib']:,} MiB  load {b['load_before']:.2f}")
        print(f"zoneslice split --parts {args.parts}: {z['seconds']:8.2f} s  {z['records_per_s']:>10,} rec/s  "
              f"cpu {z['cpu_seconds']:.1f} s  peak RSS {z['peak_rss_mib']:,} MiB  load {z['load_before']:.2f}"
              f"  (slices within ±{z['max_imbalance_pct']} %)")
        print(f"ratio (split rec/s ÷ named-checkzone rec/s): {result['ratio_split_over_checkzone']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
