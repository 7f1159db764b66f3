"""SIGKILL of the whole primary (parent, workers, writer) in the middle of a stream of UPDATEs
sent by real nsupdate clients in parallel (TSIG hmac-sha256): after a restart every acknowledged
update is there and no message is half-applied.

Message k of client i (each an nsupdate run of its own; exit 0 = acknowledged) adds
``a-i-k`` A and ``b-i-k`` TXT and replaces ``ctr-i`` TXT by ``k``: a half-applied message shows
as one of the two names without the other, or a counter that disagrees with them. A client
sends k+1 only after k was acknowledged, so what survives of client i must be exactly
0..K with ``ctr-i`` = K, where K is its last acknowledged message or the one in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bind import free_port
from zoneslice.split import split_zone

ROOT = Path(__file__).resolve().parents[2]
ZONE = """$ORIGIN example.
$TTL 3600
@     SOA  ns1 hostmaster 100 3600 900 604800 300
@     NS   ns1
ns1   A    192.0.2.1
"""
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
CLIENTS = 6

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("nsupdate", "dig")), reason="bind9-dnsutils needed"
)


def start(db: Path, port: int, stats: Path) -> subprocess.Popen[str]:
    keys = db.parent / "keys.conf"
    keys.write_text(f'key "k1" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n')
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", str(db), "--listen", f"127.0.0.1:{port}",
         "--workers", "2", "--stats", str(stats), "--tsig-keys", str(keys),
         "--axfr-allow", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        process_group=0,
    )
    deadline = time.monotonic() + 30
    while not (stats / "server.json").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return proc


def message(i: int, k: int) -> str:
    return (
        f"update delete ctr-{i}.example. TXT\n"
        f"update add ctr-{i}.example. 300 TXT \"{k}\"\n"
        f"update add a-{i}-{k}.example. 300 A 10.53.{i}.{k % 250 + 1}\n"
        f"update add b-{i}-{k}.example. 300 TXT \"{i} {k}\"\n"
    )


class Client(threading.Thread):
    def __init__(self, i: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.i, self.port, self.stop = i, port, stop
        self.acked: list[int] = []
        self.sent = -1
        self.outcomes: list[str] = []

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            self.sent = k
            r = subprocess.run(
                ["nsupdate", "-t", "4", "-u", "2", "-r", "0", "-y", f"hmac-sha256:k1:{SECRET}"],
                input=f"server 127.0.0.1 {self.port}\nzone example.\n{message(self.i, k)}send\n",
                capture_output=True, text=True, timeout=30,
            )
            if r.returncode == 0 and "failed" not in r.stdout + r.stderr:
                self.acked.append(k)
                k += 1
            else:
                self.outcomes.append((r.stdout + r.stderr).strip()[:200])
                return


def axfr(port: int) -> dict[str, list[str]]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+nocmd", "+nostats", "+nocomments",
         "+noquestion", "+onesoa", "axfr", "example."],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    names: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.strip() and not line.startswith(";"):
            f = line.split(None, 4)
            names.setdefault(f[0].lower(), []).append(f"{f[3]} {f[4]}")
    return names


def test_sigkill_mid_stream_loses_no_ack_and_halves_nothing(tmp_path: Path) -> None:
    (tmp_path / "example.zone").write_text(ZONE)
    db = split_zone(tmp_path / "example.zone", 1, tmp_path / "whole").manifest.slice_path(0)
    port = free_port()
    proc = start(db, port, tmp_path / "stats")
    stop = threading.Event()
    clients = [Client(i, port, stop) for i in range(CLIENTS)]
    try:
        for c in clients:
            c.start()
        deadline = time.monotonic() + 20
        while sum(len(c.acked) for c in clients) < 60:
            assert time.monotonic() < deadline, [c.outcomes for c in clients]
            assert all(c.is_alive() for c in clients), [c.outcomes for c in clients]
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # parent, workers and writer at once, mid-stream
        proc.wait(10)
        stop.set()
        for c in clients:
            c.join(30)
            assert not c.is_alive()
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for f in (tmp_path / "stats").glob("*"):
        f.unlink()
    proc = start(db, port, tmp_path / "stats")
    try:
        names = axfr(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    total = 0
    for c in clients:
        i = c.i
        applied = sorted(
            k for k in range(c.sent + 1) if f"a-{i}-{k}.example." in names
        )
        halves = [k for k in range(c.sent + 1)
                  if (f"a-{i}-{k}.example." in names) != (f"b-{i}-{k}.example." in names)]
        assert halves == [], f"client {i}: half-applied messages {halves}"
        assert set(c.acked) <= set(applied), f"client {i}: acked {c.acked} but only {applied}"
        assert applied == list(range(len(applied))), f"client {i}: not a prefix: {applied}"
        assert len(applied) in (len(c.acked), len(c.acked) + 1)
        if applied:
            assert names[f"ctr-{i}.example."] == [f'TXT "{applied[-1]}"']
            assert names[f"b-{i}-{applied[-1]}.example."] == [f'TXT "{i} {applied[-1]}"']
        total += len(applied)
    assert sum(len(c.acked) for c in clients) >= 60
    serial = int(names["example."][0].split()[3])
    assert serial == 100 + total  # one serial step per applied message, none for half of one
