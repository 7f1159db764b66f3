"""The benchmarks' one-scheduler-group check: a server started with ``setsid`` gets its own
autogroup, and next to a dnsperf whose group also runs on the other CPU it took most of the
query CPU (bench_update's split placement lost ~40 % to that before session 5)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench._common import autogroup, check_one_sched_group

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


@contextmanager
def sleeper(*prefix: str) -> Iterator[int]:
    proc = subprocess.Popen([*prefix, "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while prefix and os.getsid(proc.pid) == os.getsid(0) and time.monotonic() < deadline:
            time.sleep(0.01)  # setsid(1) has not called setsid() yet
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_child_shares_the_group_and_a_setsid_child_does_not() -> None:
    if not AUTOGROUP.exists() or AUTOGROUP.read_text().strip() != "1":
        assert autogroup(1) is None
        return
    with sleeper() as same, sleeper("setsid") as apart:
        check_one_sched_group({"child": same})
        assert autogroup(apart) != autogroup(same)
        with pytest.raises(RuntimeError, match="not in the bench.s scheduler group"):
            check_one_sched_group({"own session": apart})
