"""The server layout: which host serves which slice, which is the primary, where load comes from.

ISC's large-zone testbed had 13 authoritative servers (the most one 512-byte
referral can name), a primary taking UPDATEs and load generators. Servers are
named ``ns-a`` ... ``ns-z`` and take the slices round-robin, so every slice has
``servers // parts`` or one more. The primary is a separate hidden host unless
``primary`` names one of the servers, which then serves the whole zone instead
of a slice. Addresses live in 10.53.0.0/16, which no route leaves the testbed by.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from zoneslice.errors import LayoutError, ManifestError
from zoneslice.manifest import Manifest, load_manifest

MAX_SERVERS = len(string.ascii_lowercase)
MAX_LOADGEN = 50
DEFAULT_PRIMARY = "ns-primary"
NETWORK = ipaddress.IPv4Network("10.53.0.0/16")
CONTROLLER = ipaddress.IPv4Address("10.53.255.1")
PRIMARY_ADDRESS = ipaddress.IPv4Address("10.53.0.2")
SERVER_BASE = ipaddress.IPv4Address("10.53.0.10")
LOADGEN_BASE = ipaddress.IPv4Address("10.53.0.200")
DNS_PORT = 53

ROLE_PRIMARY = "primary"
ROLE_SLICE = "slice_server"
ROLE_LOADGEN = "loadgen"

_HOSTNAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")


@dataclass(frozen=True)
class Host:
    """One machine of the layout."""

    name: str
    role: str
    address: str
    slice: int | None = None

    @property
    def listen(self) -> str:
        return f"{self.address}:{DNS_PORT}"


@dataclass(frozen=True)
class SliceGroup:
    """One slice and the servers that answer for it."""

    index: int
    group: str
    display: str
    servers: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """Hosts, their roles and slice assignment; built by :func:`make_layout`."""

    servers: int
    parts: int
    primary: str
    hosts: tuple[Host, ...]
    slices: tuple[SliceGroup, ...]
    manifest: Path | None = None
    origin: str | None = None
    serial: int | None = None

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LayoutError(f"no host {name!r} in the layout")

    def by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    @property
    def slice_servers(self) -> list[Host]:
        return self.by_role(ROLE_SLICE)

    @property
    def loadgens(self) -> list[Host]:
        return self.by_role(ROLE_LOADGEN)


def server_names(servers: int) -> list[str]:
    """``ns-a`` ... for ``servers`` hosts (at most 26: one letter each)."""
    if servers > MAX_SERVERS:
        raise LayoutError(
            f"{servers} servers: the naming scheme ns-a ... ns-z names at most {MAX_SERVERS}"
        )
    return [f"ns-{c}" for c in string.ascii_lowercase[:servers]]


def _group_name(index: int, first: str | None, last: str | None, taken: set[str]) -> str:
    def clean(label: str) -> str:
        return re.sub(r"[^a-z0-9]", "_", label.lower()) or "_"

    name = f"slice_{index}"
    if first is not None and last is not None:
        name = f"slice_{clean(first)}_{clean(last)}"
        if name in taken:
            name = f"{name}_{index}"
    taken.add(name)
    return name


def _offset(base: ipaddress.IPv4Address, i: int) -> str:
    addr = base + i
    if addr not in NETWORK or addr == CONTROLLER:
        raise LayoutError(f"address {addr} falls outside {NETWORK}")
    return str(addr)


def make_layout(
    servers: int = 13,
    parts: int = 3,
    primary: str | None = None,
    loadgen: int = 1,
    manifest: Manifest | str | os.PathLike[str] | None = None,
) -> Layout:
    """Assign ``parts`` slices round-robin over ``servers`` servers, plus a primary and load.

    ``manifest`` (a :class:`Manifest` or its path) fixes the zone, the slice
    group names (``slice_<first>_<last>``) and must agree with ``parts``.

    :raises LayoutError: for a layout that cannot be built.
    """
    for what, value in (("servers", servers), ("parts", parts)):
        if not isinstance(value, int) or value < 1:
            raise LayoutError(f"{what} must be a positive integer, not {value!r}")
    if not isinstance(loadgen, int) or not 0 <= loadgen <= MAX_LOADGEN:
        raise LayoutError(f"loadgen must be between 0 and {MAX_LOADGEN}, not {loadgen!r}")
    names = server_names(servers)

    m: Manifest | None = None
    if manifest is not None:
        try:
            m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        except ManifestError as exc:
            raise LayoutError(f"layout needs a readable manifest: {exc}") from None
        if m.parts != parts:
            raise LayoutError(f"the manifest has {m.parts} slices, not --parts {parts}")

    primary_name = primary or DEFAULT_PRIMARY
    if not _HOSTNAME.match(primary_name):
        raise LayoutError(
            f"primary {primary_name!r} is not a host name (a-z, 0-9, '-', at most 15 characters)"
        )
    lg_names = [f"lg-{j + 1}" for j in range(loadgen)]
    if primary_name in lg_names:
        raise LayoutError(f"primary {primary_name!r} clashes with a load generator's name")
    if primary_name in ("primary", "loadgen", "replayers", "slice_servers", "zoneslice_nodes"):
        raise LayoutError(f"primary {primary_name!r} clashes with an inventory group name")

    slice_names = [n for n in names if n != primary_name]
    if not slice_names:
        raise LayoutError("no server left to serve a slice once the primary is taken")
    if parts > len(slice_names):
        raise LayoutError(
            f"{parts} parts need at least {parts} slice servers; the layout has {len(slice_names)}"
            + (f" ({primary_name} is the primary)" if primary_name in names else "")
        )

    hosts: list[Host] = []
    if primary_name not in names:
        hosts.append(Host(primary_name, ROLE_PRIMARY, str(PRIMARY_ADDRESS)))
    assignment: dict[str, int] = {n: k % parts for k, n in enumerate(slice_names)}
    for i, n in enumerate(names):
        if n == primary_name:
            hosts.append(Host(n, ROLE_PRIMARY, _offset(SERVER_BASE, i)))
        else:
            hosts.append(Host(n, ROLE_SLICE, _offset(SERVER_BASE, i), assignment[n]))
    for j, n in enumerate(lg_names):
        hosts.append(Host(n, ROLE_LOADGEN, _offset(LOADGEN_BASE, j)))

    taken: set[str] = set()
    groups = []
    for index in range(parts):
        first = last = None
        display = f"slice {index} of {parts}"
        if m is not None:
            info = m.slices[index]
            first, last, display = info.first, info.last, info.display
        groups.append(
            SliceGroup(
                index=index,
                group=_group_name(index, first, last, taken),
                display=display,
                servers=tuple(n for n in slice_names if assignment[n] == index),
            )
        )
    return Layout(
        servers=servers,
        parts=parts,
        primary=primary_name,
        hosts=tuple(hosts),
        slices=tuple(groups),
        manifest=(m.directory / "manifest.json").resolve() if m and m.directory else None,
        origin=m.origin if m else None,
        serial=m.serial if m else None,
    )
