"""NOTIFY sender (RFC 1996): tell secondaries the zone changed, until each one answers.

``Notifier.changed(serial)`` returns at once; for every target a task in the
running asyncio loop sends NOTIFY (opcode 4, AA, the SOA with the new serial
in the answer section) over UDP and retries with a doubling timeout until an
answer with the same ID comes back. A newer serial replaces a target's pending
NOTIFY, so a burst of commits costs one exchange per secondary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

log = logging.getLogger("zoneslice.notify")


class Notifier:
    """NOTIFY ``targets`` (``(addr, port)``) about ``origin``; optionally TSIG-signed."""

    def __init__(
        self,
        origin: dns.name.Name | str,
        targets: Sequence[tuple[str, int]],
        keyring: Any = None,
        keyname: dns.name.Name | str | None = None,
        *,
        timeout: float = 1.0,
        max_timeout: float = 16.0,
        tries: int = 8,
    ) -> None:
        self.origin = dns.name.from_text(origin) if isinstance(origin, str) else origin
        self.targets = [(str(a), int(p)) for a, p in targets]
        self.keyring = keyring
        self.keyname = dns.name.from_text(keyname) if isinstance(keyname, str) else keyname
        self.timeout = timeout
        self.max_timeout = max_timeout
        self.tries = tries
        self.counters = {"sent": 0, "answered": 0, "gave_up": 0}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}

    def message(self, serial: int | None) -> dns.message.Message:
        msg = dns.message.make_query(self.origin, dns.rdatatype.SOA)
        msg.flags = dns.flags.AA
        msg.set_opcode(dns.opcode.NOTIFY)
        if serial is not None:
            rr = dns.rrset.from_text(
                self.origin, 0, dns.rdataclass.IN, dns.rdatatype.SOA,
                f". . {serial & 0xFFFFFFFF} 0 0 0 0",
            )  # fmt: skip
            msg.answer.append(rr)
        if self.keyring is not None and self.keyname is not None:
            msg.use_tsig(self.keyring, self.keyname)
        return msg

    def changed(self, serial: int | None = None) -> None:
        """Schedule NOTIFYs for ``serial`` in the running loop (call from the loop's thread)."""
        loop = asyncio.get_running_loop()
        for target in self.targets:
            old = self._tasks.pop(target, None)
            if old is not None and not old.done():
                old.cancel()
            self._tasks[target] = loop.create_task(self._notify(target, serial))

    async def _notify(self, target: tuple[str, int], serial: int | None) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        timeout = self.timeout
        for _ in range(self.tries):
            msg = self.message(serial)
            msg.id = random.randrange(1 << 16)
            wire = msg.to_wire()
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                try:
                    sock.connect(target)
                    await loop.sock_sendall(sock, wire)
                    self.counters["sent"] += 1
                    async with asyncio.timeout(timeout):
                        while True:
                            got = await loop.sock_recv(sock, 65535)
                            if len(got) >= 12 and got[:2] == wire[:2] and got[2] & 0x80:
                                self.counters["answered"] += 1
                                return
                except (TimeoutError, OSError):
                    pass
            timeout = min(timeout * 2, self.max_timeout)
        self.counters["gave_up"] += 1
        log.warning("NOTIFY %s serial %s: no answer from %s:%d", self.origin, serial, *target)

    async def wait(self) -> None:
        """Until every pending NOTIFY is answered or given up (tests)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        for t in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
