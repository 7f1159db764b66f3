"""BIND (Debian named) as the reference primary for the update tests and the update benchmark:
one dynamic zone, allow-update with a TSIG key, journal on, in a directory of its own."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.message
import dns.query
import dns.rcode


def free_port(addr: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``addr`` (named and restarts need a fixed one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((addr, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((addr, port))
                except OSError:
                    continue
            return port


def named_config(
    zone: Path,
    origin: str,
    directory: Path,
    addr: str,
    port: int,
    *,
    key_name: str,
    secret: str,
    workers: int | None = None,
) -> str:
    """named.conf for ``origin`` loaded from a copy of ``zone`` in ``directory`` (named
    writes the journal next to it); updates allowed with the hmac-sha256 key."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "zone.db"
    shutil.copyfile(zone, db)
    for junk in directory.glob("zone.db.jnl"):
        junk.unlink()
    return f"""
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
controls {{ }};
options {{
    directory "{directory}";
    pid-file none;
    session-keyfile none;
    listen-on port {port} {{ {addr}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
    allow-transfer {{ any; }};
    max-journal-size unlimited;
    check-integrity no;
    minimal-responses yes;
}};
logging {{ category default {{ null; }}; category update {{ null; }}; category security {{ null; }}; }};
zone "{origin}" {{
    type primary;
    file "{db}";
    allow-update {{ key "{key_name}"; }};
}};
"""


@contextlib.contextmanager
def named(
    zone: Path,
    origin: str,
    directory: Path,
    addr: str,
    port: int,
    *,
    key_name: str,
    secret: str,
    workers: int | None = None,
    popen: Sequence[str] = (),
    timeout: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run named in the foreground until the block ends; waits until it answers the SOA.

    ``popen`` prefixes the command (e.g. ``ip netns exec NS``).
    """
    conf = directory / "named.conf"
    directory.mkdir(parents=True, exist_ok=True)
    conf.write_text(named_config(zone, origin, directory, addr, port, key_name=key_name,
                                 secret=secret))
    cmd = [*popen, "named", "-g", "-c", str(conf), "-u", "root"]
    if workers:
        cmd += ["-n", str(workers)]
    log = open(directory / "named.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        q = dns.message.make_query(origin, "SOA")
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"named exited {proc.returncode}: "
                    + (directory / "named.log").read_text(errors="replace")[-2000:]
                )
            try:
                if dns.query.udp(q, addr, port=port, timeout=0.5).rcode() == dns.rcode.NOERROR:
                    break
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("named did not answer in time")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
