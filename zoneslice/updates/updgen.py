"""An nsupdate-format stream of TLD-like changes to a zone, as ISC's updgen wrote.

Reads the zone once (streaming: only the delegations, their NS targets, the
in-bailiwick glue and the DS are kept), then draws operations against the zone
*as it evolves*, so that every message is accepted in order by any RFC 2136
server holding that zone:

- ``add``: a new delegation, two in-bailiwick name servers and their glue;
- ``ns``: one NS of a delegation replaced by a new in-bailiwick server (+ glue),
  the old server's glue removed when nothing else uses it;
- ``glue``: a new address for an in-bailiwick server;
- ``ds-add`` / ``ds-del``: a DS RRset added to / removed from a delegation;
- ``delete``: a delegation and the glue only it used.

Each operation carries a prerequisite that holds by construction (``nxdomain``
for a new name, ``yxrrset`` for what is changed), and with ``batch > 1`` no
name is touched twice in one message, so prerequisites checked before the
message's updates stay true. No NS is ever left without its glue.
"""

from __future__ import annotations

import os
import random
import socket
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.update

from zoneslice.store.keys import key_labels
from zoneslice.zonefile import ZoneReader

NS_TTL = 172800
DS_TTL = 86400
OPERATIONS = {"add": 30, "ns": 20, "glue": 20, "ds-add": 10, "ds-del": 8, "delete": 12}
"""Relative weights of the operations."""


@dataclass
class Delegation:
    ns: list[str] = field(default_factory=list)
    ds: list[str] = field(default_factory=list)


@dataclass
class ZoneModel:
    """What the generator tracks: delegations (by absolute name text) and glue by host."""

    origin: dns.name.Name
    delegations: dict[str, Delegation] = field(default_factory=dict)
    glue: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    users: dict[str, set[str]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    _order: list[str] = field(default_factory=list)
    _pos: dict[str, int] = field(default_factory=dict)

    def _index(self, d: str) -> None:
        self._pos[d] = len(self._order)
        self._order.append(d)

    def _unindex(self, d: str) -> None:
        i = self._pos.pop(d)
        last = self._order.pop()
        if last != d:
            self._order[i] = last
            self._pos[last] = i

    def pick(self, rng: random.Random) -> str | None:
        return self._order[rng.randrange(len(self._order))] if self._order else None

    def add_ns(self, d: str, host: str) -> None:
        self.delegations[d].ns.append(host)
        self.users.setdefault(host, set()).add(d)

    def drop_ns(self, d: str, host: str) -> None:
        self.delegations[d].ns.remove(host)
        users = self.users.get(host)
        if users is not None:
            users.discard(d)
            if not users:
                del self.users[host]

    def in_bailiwick(self, d: str, host: str) -> bool:
        return host.endswith("." + d)


def read_zone(path: str | os.PathLike[str], origin: str | None = None) -> ZoneModel:
    """The delegations, NS, DS and in-bailiwick glue of a master file (one streaming pass)."""
    reader = ZoneReader(path, origin)
    delegs: dict[bytes, Delegation] = {}
    addrs: dict[bytes, dict[str, list[str]]] = {}
    names: set[bytes] = set()
    for rkey, rdtype, _covers, rdata, _ttl, _target, _line in reader:
        if not rkey:
            continue
        names.add(rkey)
        if rdtype == 2 and len(key_labels(rkey)) == 1:
            delegs.setdefault(rkey, Delegation()).ns.append(_wire_name(rdata))
        elif rdtype == 43 and len(key_labels(rkey)) == 1:
            rd = dns.rdata.from_wire(dns.rdataclass.IN, rdtype, rdata, 0, len(rdata))
            delegs.setdefault(rkey, Delegation()).ds.append(rd.to_text())
        elif rdtype in (1, 28) and len(key_labels(rkey)) > 1:
            fam = socket.AF_INET if rdtype == 1 else socket.AF_INET6
            addrs.setdefault(rkey, {}).setdefault(
                "A" if rdtype == 1 else "AAAA", []
            ).append(socket.inet_ntop(fam, rdata))
    if reader.zone_origin is None:
        raise ValueError(f"{path}: no origin")
    o = reader.zone_origin
    suffix = "." + o.to_text() if o.to_text() != "." else "."

    def text(k: bytes) -> str:
        return ".".join(lb.decode() for lb in reversed(key_labels(k))) + suffix

    m = ZoneModel(o)
    m.names = {text(k) for k in names}
    for k, dl in delegs.items():
        if not dl.ns:
            continue
        d = text(k)
        m.delegations[d] = Delegation([], dl.ds)
        m._index(d)
        for host in dl.ns:
            m.add_ns(d, host.lower())
    for k, by_type in addrs.items():
        host = text(k)
        if host in m.users:
            m.glue[host] = by_type
    return m


def _wire_name(rdata: bytes) -> str:
    return dns.name.from_wire(rdata, 0)[0].to_text().lower()


class UpdateGenerator:
    """Draws operations against a :class:`ZoneModel`, updating it as they are emitted."""

    def __init__(self, model: ZoneModel, seed: int = 1) -> None:
        self.m = model
        self.rng = random.Random(seed)
        self.counter = 0
        self.counts: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self._ops = list(OPERATIONS)
        self._weights = [OPERATIONS[o] for o in self._ops]

    def _fresh(self, parent: str, prefix: str) -> str:
        while True:
            self.counter += 1
            label = f"{prefix}{self.counter:x}{self.rng.randrange(36 ** 4):04x}"
            name = f"{label}.{parent}"
            if name not in self.m.names:
                self.m.names.add(name)
                return name

    def _addr(self) -> str:
        r = self.rng
        return f"{r.randrange(1, 224)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"

    def _ds(self) -> str:
        r = self.rng
        return f"{r.randrange(65536)} {r.choice((8, 13))} 2 {r.getrandbits(256):064X}"

    def operation(self, busy: set[str]) -> list[str]:
        """One operation's nsupdate lines (prereqs first); never touches a name in ``busy``."""
        for _ in range(100):
            op = self.rng.choices(self._ops, self._weights)[0]
            lines = self._try(op, busy)
            if lines is not None:
                self.counts[op] += 1
                return lines
        lines = self._try("add", busy)
        assert lines is not None
        self.counts["add"] += 1
        return lines

    def _try(self, op: str, busy: set[str]) -> list[str] | None:
        m = self.m
        origin = m.origin.to_text()
        if op == "add":
            d = self._fresh(origin, "zsu")
            hosts = [f"ns1.{d}", f"ns2.{d}"]
            m.delegations[d] = Delegation()
            m._index(d)
            out = [f"prereq nxdomain {d}"]
            for h in hosts:
                m.names.add(h)
                m.add_ns(d, h)
                a = self._addr()
                m.glue[h] = {"A": [a]}
                out += [f"update add {d} {NS_TTL} NS {h}", f"update add {h} {NS_TTL} A {a}"]
            busy.update([d, *hosts])
            return out
        d = m.pick(self.rng)
        if d is None or d in busy:
            return None
        dl = m.delegations[d]
        if any(h in busy for h in dl.ns):
            return None
        if op == "ns":
            old = self.rng.choice(dl.ns)
            new = self._fresh(d, "ns")
            a = self._addr()
            out = [
                f"prereq yxrrset {d} NS",
                f"update delete {d} NS {old}",
                f"update add {d} {NS_TTL} NS {new}",
                f"update add {new} {NS_TTL} A {a}",
            ]
            m.drop_ns(d, old)
            m.add_ns(d, new)
            m.glue[new] = {"A": [a]}
            if m.in_bailiwick(d, old) and old not in m.users and old in m.glue:
                out.append(f"update delete {old}")
                del m.glue[old]
                m.names.discard(old)
            busy.update([d, old, new])
            return out
        if op == "glue":
            hosts = [h for h in dl.ns if m.in_bailiwick(d, h) and "A" in m.glue.get(h, {})]
            if not hosts:
                return None
            h = self.rng.choice(hosts)
            a = self._addr()
            m.glue[h]["A"] = [a]
            busy.update([d, h])
            return [f"prereq yxrrset {h} A", f"update delete {h} A",
                    f"update add {h} {NS_TTL} A {a}"]
        if op == "ds-add":
            if dl.ds:
                return None
            dl.ds = [self._ds(), self._ds()]
            busy.add(d)
            return [f"prereq yxrrset {d} NS", f"prereq nxrrset {d} DS"] + [
                f"update add {d} {DS_TTL} DS {ds}" for ds in dl.ds
            ]
        if op == "ds-del":
            if not dl.ds:
                return None
            dl.ds = []
            busy.add(d)
            return [f"prereq yxrrset {d} DS", f"update delete {d} DS"]
        if op == "delete":
            out = [f"prereq yxrrset {d} NS", f"update delete {d}"]
            busy.add(d)
            for h in list(dl.ns):
                m.drop_ns(d, h)
                busy.add(h)
                if m.in_bailiwick(d, h) and h not in m.users:
                    if h in m.glue:
                        out.append(f"update delete {h}")
                        del m.glue[h]
                    m.names.discard(h)
            del m.delegations[d]
            m._unindex(d)
            m.names.discard(d)
            return out
        raise ValueError(f"unknown operation {op!r}")

    def messages(self, count: int, batch: int = 1, window: int = 0) -> Iterator[list[str]]:
        """``count`` operations in messages of ``batch`` operations each.

        With ``window`` W, no name is touched by two messages less than W apart, so
        W senders may deliver them in any order and every prerequisite still holds.
        """
        recent: deque[set[str]] = deque()
        held: Counter[str] = Counter()
        left = count
        while left > 0:
            busy: set[str] = set(held)
            lines: list[str] = []
            for _ in range(min(batch, left)):
                lines += self.operation(busy)
            left -= min(batch, left)
            if window:
                mine = busy - set(held)
                recent.append(mine)
                held.update(mine)
                if len(recent) >= window:
                    held.subtract(recent.popleft())
                    held = +held
            yield lines


def write_stream(
    zonefile: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    count: int,
    *,
    seed: int = 1,
    batch: int = 1,
    server: tuple[str, int] | None = None,
    origin: str | None = None,
) -> tuple[str, dict[str, int]]:
    """Write the nsupdate script (to ``out``, or return it as text when ``out`` is None);
    returns (text or path, operation counts)."""
    model = read_zone(zonefile, origin)
    gen = UpdateGenerator(model, seed)
    head = []
    if server is not None:
        head.append(f"server {server[0]} {server[1]}")
    head.append(f"zone {model.origin.to_text()}")
    chunks = ["\n".join(head) + "\n"]
    for lines in gen.messages(count, batch):
        chunks.append("\n".join(lines) + "\nsend\n")
    text = "".join(chunks)
    if out is None:
        return text, gen.counts
    Path(out).write_text(text)
    return str(out), gen.counts


def parse_stream(text: str) -> tuple[dns.name.Name, list[list[str]]]:
    """The zone and the messages (command lines) of a script :func:`write_stream` wrote."""
    origin: dns.name.Name | None = None
    messages: list[list[str]] = []
    cur: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#", "server ")):
            continue
        if line.startswith("zone "):
            origin = dns.name.from_text(line.split()[1])
        elif line == "send":
            messages.append(cur)
            cur = []
        else:
            cur.append(line)
    if origin is None:
        raise ValueError("no zone line")
    return origin, messages


def to_message(origin: dns.name.Name, lines: list[str]) -> dns.update.UpdateMessage:
    """One message of :func:`parse_stream` as a dnspython UPDATE (the subset updgen writes)."""
    u = dns.update.UpdateMessage(origin)
    for line in lines:
        verb, what, *rest = line.split()
        name = dns.name.from_text(rest[0])
        if verb == "prereq":
            if what == "nxdomain":
                u.absent(name)
            elif what == "yxdomain":
                u.present(name)
            elif what == "yxrrset":
                u.present(name, rest[1])
            elif what == "nxrrset":
                u.absent(name, rest[1])
            else:
                raise ValueError(f"unsupported prerequisite {line!r}")
        elif what == "add":
            u.add(name, int(rest[1]), rest[2], " ".join(rest[3:]))
        elif what == "delete":
            if len(rest) == 1:
                u.delete(name)
            elif len(rest) == 2:
                u.delete(name, rest[1])
            else:
                u.delete(name, rest[1], " ".join(rest[2:]))
        else:
            raise ValueError(f"unsupported line {line!r}")
    return u
