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


def fake_proc(tmp_path: Path, groups: dict[int, str], enabled: str = "1") -> Path:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/sched_autogroup_enabled").write_text(enabled + "\n")
    for pid, text in groups.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "autogroup").write_text(text)
    return tmp_path


def test_a_bench_in_the_root_group_still_sees_a_setsid_server(tmp_path: Path) -> None:
    """A runner that never called setsid (a child of PID 1) is in the root autogroup, whose
    /proc file is empty; the check once took that for "autogroup off" and passed anything."""
    proc = fake_proc(tmp_path, {os.getpid(): "", 4242: "", 4343: "/autogroup-7 nice 0\n"})
    assert autogroup(os.getpid(), proc) == "/"
    check_one_sched_group({"child": 4242}, proc)
    with pytest.raises(RuntimeError, match=r"scheduler group /: \{'server': '/autogroup-7'\}"):
        check_one_sched_group({"server": 4343}, proc)


def test_autogroup_off_or_a_gone_process_is_no_group(tmp_path: Path) -> None:
    off = fake_proc(tmp_path / "off", {os.getpid(): "", 4343: "/autogroup-7 nice 0\n"}, "0")
    assert autogroup(4343, off) is None
    check_one_sched_group({"server": 4343}, off)
    on = fake_proc(tmp_path / "on", {os.getpid(): "/autogroup-3 nice 0\n"})
    assert autogroup(4343, on) is None
    check_one_sched_group({"exited": 4343}, on)
