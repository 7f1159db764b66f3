"""A real NSD (Debian ``nsd``) serving one zone file on 127.0.0.1, for reference answers.

::

    with NsdServer(zonefile, "com.") as (addr, port):
        dns.query.udp(dns.message.make_query("com.", "SOA"), addr, port=port)

Everything NSD writes (config, pid file, xfrd state, zone list, log) lives in a
temporary directory removed on exit. NSD runs in the foreground (``nsd -d``) as
a child process with response-rate limiting off, no privilege drop and no
chroot; the context waits until it answers the apex SOA over UDP and, on exit,
stops it with SIGTERM (SIGKILL after a grace period), so no process is left
behind even when the block raised.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from zoneslice.demo import stop_servers


def nsd_config(
    zonefile: Path,
    origin: str,
    workdir: Path,
    addr: str,
    port: int,
    *,
    server_count: int = 1,
    extra_server: list[str] | tuple[str, ...] = (),
    extra_zone: list[str] | tuple[str, ...] = (),
) -> str:
    """nsd.conf for NSD as a reference: all state in ``workdir``, runs as root without
    chroot, and no response rate limiting (Debian's default would skew every comparison)."""
    server = [
        f"ip-address: {addr}@{port}",
        'username: ""',
        'chroot: ""',
        f'zonesdir: "{workdir}"',
        f'pidfile: "{workdir}/nsd.pid"',
        'database: ""',
        f'xfrdfile: "{workdir}/xfrd.state"',
        f'zonelistfile: "{workdir}/zone.list"',
        f'xfrdir: "{workdir}"',
        f'logfile: "{workdir}/nsd.log"',
        f"server-count: {server_count}",
        "rrl-ratelimit: 0",
        "rrl-whitelist-ratelimit: 0",
        "verbosity: 1",
        "zonefiles-write: 0",
        *extra_server,
    ]
    zone = [f"name: {origin}", f'zonefile: "{Path(zonefile).resolve()}"', *extra_zone]
    return (
        "server:\n"
        + "".join(f"  {line}\n" for line in server)
        + "remote-control:\n  control-enable: no\n"
        + "zone:\n"
        + "".join(f"  {line}\n" for line in zone)
    )


def free_port(addr: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``addr``."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    while True:
        with (
            socket.socket(family, socket.SOCK_DGRAM) as u,
            socket.socket(family, socket.SOCK_STREAM) as t,
        ):
            u.bind((addr, 0))
            port = u.getsockname()[1]
            try:
                t.bind((addr, port))
            except OSError:
                continue
            return port


class NsdError(RuntimeError):
    """NSD could not be started."""


class NsdServer:
    """Context manager: NSD answering for ``origin`` from ``zonefile`` on 127.0.0.1:<free port>.

    ``addr`` may be another local address, e.g. ``"::1"``.

    ``extra_server`` lines are appended to the ``server:`` clause (e.g.
    ``["minimal-responses: yes"]``), ``extra_zone`` lines to the ``zone:`` clause
    (e.g. ``["provide-xfr: 127.0.0.1 NOKEY"]``).
    """

    def __init__(
        self,
        zonefile: str | os.PathLike[str],
        origin: str,
        *,
        addr: str = "127.0.0.1",
        port: int | None = None,
        extra_server: list[str] | None = None,
        extra_zone: list[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.zonefile = Path(zonefile).resolve()
        self.origin = origin if origin.endswith(".") else origin + "."
        self.addr = addr
        self.port = port
        self.extra_server = extra_server or []
        self.extra_zone = extra_zone or []
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    def config(self, workdir: Path, port: int) -> str:
        return nsd_config(
            self.zonefile, self.origin, workdir, self.addr, port, extra_server=self.extra_server,
            extra_zone=self.extra_zone,
        )

    def _log(self) -> str:
        log = self.dir / "nsd.log" if self.dir else None
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""

    def start(self) -> tuple[str, int]:
        if shutil.which("nsd") is None:
            raise NsdError("nsd is not installed (scripts/setup.sh installs the Debian package)")
        self.dir = Path(tempfile.mkdtemp(prefix="zs-nsd-"))
        port = self.port or free_port(self.addr)
        conf = self.dir / "nsd.conf"
        conf.write_text(self.config(self.dir, port))
        self.proc = subprocess.Popen(
            ["nsd", "-d", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0,
        )
        self.port = port
        query = dns.message.make_query(self.origin, "SOA")
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                reply = dns.query.udp(query, self.addr, port=port, timeout=0.25)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    return self.addr, port
            except (dns.exception.Timeout, OSError, dns.exception.DNSException):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() else ""
                log = self._log()
                self.stop()
                raise NsdError(f"nsd did not answer SOA for {self.origin}: {err} {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_servers([proc])
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> tuple[str, int]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
