"""``stop_servers``: a server that ignores SIGTERM is killed after the timeout, with its
whole process group when it leads one (a server's forked workers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from zoneslice.demo import stop_servers

STUBBORN = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "if os.fork() == 0:\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "print(os.getpid(), flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_group_leader_that_ignores_sigterm_goes_with_its_children() -> None:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                            process_group=0)
    proc.stdout.readline()
    child = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
    t = time.monotonic()
    stop_servers([proc], timeout=0.5)
    assert proc.returncode == -9 and time.monotonic() - t < 5
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # reparented to init, which reaps it
    assert not alive(child)
    proc.stdout.close()


def test_a_process_in_our_group_is_killed_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"])
    time.sleep(0.3)
    stop_servers([proc], timeout=0.3)
    assert proc.returncode == -9
