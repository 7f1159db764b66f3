"""BIND (Debian named) as the reference server for the update tests and the update benchmark:
one dynamic zone, allow-update with a TSIG key, journal on, in a directory of its own; for
the benchmark's split placement also a secondary of it (IXFR on NOTIFY)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from zoneslice.demo import stop_servers


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


def _options(directory: Path, addr: str, port: int, key_name: str, secret: str,
             notify: str) -> str:
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
    {notify}
    dnssec-validation no;
    allow-transfer {{ any; }};
    max-journal-size unlimited;
    check-integrity no;
    minimal-responses yes;
}};
logging {{ category default {{ null; }}; category update {{ null; }}; category security {{ null; }}; }};
"""


def named_config(
    zone: Path,
    origin: str,
    directory: Path,
    addr: str,
    port: int,
    *,
    key_name: str,
    secret: str,
    notify_to: tuple[str, int] | None = None,
    notify_delay: int = 0,
) -> str:
    """named.conf for ``origin`` loaded from a copy of ``zone`` in ``directory`` (named
    writes the journal next to it); updates allowed with the hmac-sha256 key.

    ``notify_to``: NOTIFY only that secondary (signed with the key), at most once per
    ``notify_delay`` seconds; without it named sends no NOTIFY.
    """
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "zone.db"
    shutil.copyfile(zone, db)
    for junk in directory.glob("zone.db.jnl"):
        junk.unlink()
    zone_notify = ""
    notify = "notify no;"
    if notify_to is not None:
        notify = f"notify explicit; notify-delay {notify_delay};"
        zone_notify = (f'    also-notify {{ {notify_to[0]} port {notify_to[1]} '
                       f'key "{key_name}"; }};\n')
    return _options(directory, addr, port, key_name, secret, notify) + f"""
zone "{origin}" {{
    type primary;
    file "{db}";
    allow-update {{ key "{key_name}"; }};
{zone_notify}}};
"""


def named_secondary_config(
    origin: str,
    directory: Path,
    addr: str,
    port: int,
    primary: tuple[str, int],
    *,
    key_name: str,
    secret: str,
) -> str:
    """named.conf for a secondary of ``origin`` that transfers from ``primary`` (TSIG-signed,
    IXFR when the primary's journal has it) on its NOTIFY and the SOA timers."""
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "secondary.db"
    for junk in directory.glob("secondary.db*"):
        junk.unlink()
    return _options(directory, addr, port, key_name, secret, "notify no;") + f"""
zone "{origin}" {{
    type secondary;
    file "{db}";
    primaries {{ {primary[0]} port {primary[1]} key "{key_name}"; }};
    request-ixfr yes;
}};
"""


@contextlib.contextmanager
def run_named(
    conf: str,
    origin: str,
    directory: Path,
    addr: str,
    port: int,
    *,
    workers: int | None = None,
    popen: Sequence[str] = (),
    timeout: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run named with ``conf`` in the foreground until the block ends; waits until it answers
    the SOA of ``origin`` with NOERROR (for a secondary: until it has the zone)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf_file = directory / "named.conf"
    conf_file.write_text(conf)
    cmd = [*popen, "named", "-g", "-c", str(conf_file), "-u", "root"]
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
        stop_servers([proc], timeout=15)
        log.close()


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
    notify_to: tuple[str, int] | None = None,
    notify_delay: int = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a dynamic primary named in the foreground until the block ends; waits until it
    answers the SOA.

    ``popen`` prefixes the command (e.g. ``ip netns exec NS`` or ``taskset -c 0``).
    """
    conf = named_config(zone, origin, directory, addr, port, key_name=key_name, secret=secret,
                        notify_to=notify_to, notify_delay=notify_delay)
    with run_named(conf, origin, directory, addr, port, workers=workers, popen=popen,
                   timeout=timeout) as proc:
        yield proc
