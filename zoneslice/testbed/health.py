"""After a deploy: ask every node, over the network, what it serves.

Every slice server must answer the zone's SOA with the manifest's serial
(authoritatively), answer a name of its own range (not REFUSED) and REFUSE a
name of another slice; the primary must answer the SOA and names of every
slice. With a TSIG key in the inventory, the primary must also accept a
signed UPDATE adding a TXT record in every slice, answer it at once, and,
when the slice servers are its secondaries, every slice server must answer
the record of its own slice within ``propagate`` seconds (NOTIFY + IXFR).
The records are deleted again at the end.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update

from zoneslice.errors import DeployError, ManifestError
from zoneslice.manifest import Manifest, load_manifest
from zoneslice.slicing import label_from_text
from zoneslice.testbed.inventory import PRIMARY, SLICE_SERVERS, load_inventory, resolve
from zoneslice.updates.acl import load_keys

UPDATE_CHECK_SKIPPED = "TSIG-signed UPDATE through the primary: the inventory names no TSIG key"
PROPAGATION_SKIPPED = (
    "UPDATE reaching the slice servers: they are not secondaries of the primary "
    "(zoneslice_secondary_of_primary is false)"
)


@dataclass(frozen=True)
class Check:
    """One question put to one host and whether the answer was right."""

    host: str
    what: str
    ok: bool
    detail: str


@dataclass
class HealthReport:
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port or 53)


def _ask(
    where: tuple[str, int], qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
    timeout: float, tries: int,
) -> dns.message.Message:
    q = dns.message.make_query(qname, rdtype)
    q.flags &= ~dns.flags.RD
    last: Exception | None = None
    for _ in range(tries):
        try:
            return dns.query.udp(q, where[0], port=where[1], timeout=timeout)
        except (dns.exception.Timeout, OSError) as exc:
            last = exc
    raise dns.exception.Timeout(f"no answer from {where[0]}:{where[1]} after {tries} tries: {last}")


def _owned_label(m: Manifest, index: int) -> bytes:
    """A first label that slice ``index`` owns: its first name's, or its lower bound."""
    plan = m.plan
    candidates = []
    if m.slices[index].first:
        candidates.append(label_from_text(m.slices[index].first))
    lo, _hi = plan.range_of(index)
    candidates += [lo, lo + b"0", b"0", b"a", b"z"]
    for label in candidates:
        if label and plan.slice_for_label(label) == index:
            return label
    raise ManifestError(f"cannot find a label owned by slice {index}")


def _soa_check(host: str, where, origin, serial, timeout, tries) -> Check:
    try:
        r = _ask(where, origin, dns.rdatatype.SOA, timeout, tries)
    except dns.exception.DNSException as exc:
        return Check(host, "soa", False, str(exc))
    soa = [rr for rrset in r.answer if rrset.rdtype == dns.rdatatype.SOA for rr in rrset]
    got = soa[0].serial if soa else None
    ok = r.rcode() == dns.rcode.NOERROR and bool(r.flags & dns.flags.AA) and got == serial
    detail = (
        f"{dns.rcode.to_text(r.rcode())} aa={bool(r.flags & dns.flags.AA)} serial={got}"
        + ("" if got == serial else f" (manifest: {serial})")
    )
    return Check(host, "soa", ok, detail)


def _name_check(host, where, qname, refused_expected: bool, timeout, tries) -> Check:
    what = "refuses other slice" if refused_expected else "answers own slice"
    try:
        r = _ask(where, qname, dns.rdatatype.NS, timeout, tries)
    except dns.exception.DNSException as exc:
        return Check(host, what, False, f"{qname}: {exc}")
    rcode = r.rcode()
    ok = (rcode == dns.rcode.REFUSED) if refused_expected else rcode in (
        dns.rcode.NOERROR, dns.rcode.NXDOMAIN
    )
    return Check(host, what, ok, f"{qname} NS -> {dns.rcode.to_text(rcode)}")


def check_health(
    inventory: Mapping[str, Any] | str | os.PathLike[str],
    manifest: Manifest | str | os.PathLike[str] | None = None,
    *,
    timeout: float = 1.0,
    tries: int = 3,
    propagate: float = 20.0,
    progress: Callable[[Check], None] | None = None,
) -> HealthReport:
    """Query every primary and slice server of ``inventory`` at its ``zoneslice_listen``.

    ``manifest`` defaults to the inventory's ``zoneslice_manifest``.

    :raises DeployError: when the inventory lacks what the checks need.
    """
    inv = inventory if isinstance(inventory, Mapping) else load_inventory(inventory)
    hostvars, groups = resolve(inv)
    if manifest is None:
        paths = {v.get("zoneslice_manifest") for v in hostvars.values()} - {None}
        if len(paths) != 1:
            raise DeployError("the inventory names no zoneslice_manifest: pass the manifest")
        manifest = paths.pop()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(Path(manifest))
    origin = dns.name.from_text(m.origin)
    owned = [_owned_label(m, i) for i in range(m.parts)]

    def qname(label: bytes) -> dns.name.Name:
        return dns.name.Name((label,) + origin.labels)

    report = HealthReport()

    def add(check: Check) -> None:
        report.checks.append(check)
        if progress is not None:
            progress(check)

    for host in sorted(groups.get(PRIMARY, set())):
        hv = hostvars[host]
        if "zoneslice_listen" not in hv:
            raise DeployError(f"{host}: no zoneslice_listen in the inventory")
        where = _address(hv["zoneslice_listen"])
        add(_soa_check(host, where, origin, m.serial, timeout, tries))
        for label in owned:
            add(_name_check(host, where, qname(label), False, timeout, tries))

    servers = sorted(groups.get(SLICE_SERVERS, set()))
    if not servers:
        raise DeployError("the inventory has no slice_servers")
    for host in servers:
        hv = hostvars[host]
        if "zoneslice_listen" not in hv or "zoneslice_slice" not in hv:
            raise DeployError(f"{host}: no zoneslice_listen or zoneslice_slice in the inventory")
        where = _address(hv["zoneslice_listen"])
        index = int(hv["zoneslice_slice"])
        if not 0 <= index < m.parts:
            raise DeployError(f"{host}: slice {index} is not in the manifest ({m.parts} slices)")
        add(_soa_check(host, where, origin, m.serial, timeout, tries))
        add(_name_check(host, where, qname(owned[index]), False, timeout, tries))
        if m.parts > 1:
            other = owned[(index + 1) % m.parts]
            add(_name_check(host, where, qname(other), True, timeout, tries))

    primaries = sorted(groups.get(PRIMARY, set()))
    key_file = next((hostvars[h].get("zoneslice_tsig_key_file") for h in primaries), None)
    if not primaries or not key_file:
        report.skipped.append(UPDATE_CHECK_SKIPPED)
        return report
    hv = hostvars[primaries[0]]
    secondaries = bool(hv.get("zoneslice_secondary_of_primary"))
    by_slice: dict[int, list[tuple[str, tuple[str, int]]]] = {}
    if secondaries:
        for host in servers:
            by_slice.setdefault(int(hostvars[host]["zoneslice_slice"]), []).append(
                (host, _address(hostvars[host]["zoneslice_listen"]))
            )
    else:
        report.skipped.append(PROPAGATION_SKIPPED)
    for check in update_checks(
        primaries[0], _address(hv["zoneslice_listen"]), key_file,
        hv.get("zoneslice_tsig_key_name") or hv.get("zoneslice_tsig_key"), m, by_slice,
        timeout=timeout, tries=tries, propagate=propagate,
    ):  # fmt: skip
        add(check)
    return report


def _fresh_label(m: Manifest, index: int, nonce: str) -> bytes:
    """A new first label (no record there yet) that slice ``index`` owns."""
    lo, _hi = m.plan.range_of(index)
    for base in (_owned_label(m, index), lo, lo + b"0"):
        label = base + f"-zshealth-{nonce}".encode()
        if len(label) <= 63 and m.plan.slice_for_label(label) == index:
            return label
    raise ManifestError(f"cannot make a fresh name in slice {index}")


def update_checks(
    host: str,
    primary: tuple[str, int],
    key_file: str | os.PathLike[str],
    key_name: str | None,
    m: Manifest,
    servers: Mapping[int, list[tuple[str, tuple[str, int]]]],
    *,
    timeout: float = 1.0,
    tries: int = 3,
    propagate: float = 20.0,
) -> list[Check]:
    """Add a TXT in every slice through the primary, see it served, then delete it again."""
    ring = load_keys(key_file)
    key = dns.name.from_text(key_name) if key_name else next(iter(ring))
    origin = dns.name.from_text(m.origin)
    nonce = secrets.token_hex(4)
    names = {i: dns.name.Name((_fresh_label(m, i, nonce),) + origin.labels) for i in range(m.parts)}
    text = f'"zoneslice health {nonce}"'

    def send(upd: dns.update.UpdateMessage) -> str | None:
        try:
            r = dns.query.tcp(upd, primary[0], port=primary[1], timeout=max(timeout, 5.0))
        except (dns.exception.DNSException, OSError) as exc:
            return str(exc)
        return None if r.rcode() == dns.rcode.NOERROR else dns.rcode.to_text(r.rcode())

    upd = dns.update.UpdateMessage(origin, keyring=ring, keyname=key)
    for name in names.values():
        upd.add(name, 300, "TXT", text)
    failed = send(upd)
    checks = [Check(host, "accepts a TSIG-signed UPDATE", failed is None, failed or "NOERROR")]
    if failed is not None:
        return checks

    def has_txt(where: tuple[str, int], name: dns.name.Name) -> bool:
        try:
            r = _ask(where, name, dns.rdatatype.TXT, timeout, 1)
        except dns.exception.DNSException:
            return False
        return any(rrset.rdtype == dns.rdatatype.TXT for rrset in r.answer)

    for name in names.values():
        ok = has_txt(primary, name)
        checks.append(Check(host, "answers the update at once", ok, f"{name} TXT"))
    started = time.monotonic()
    pending = {(h, where, i) for i, hosts in servers.items() for h, where in hosts}
    seen: dict[str, float] = {}
    while pending and time.monotonic() - started < propagate:
        for h, where, i in sorted(pending):
            if has_txt(where, names[i]):
                seen[h] = time.monotonic() - started
                pending.discard((h, where, i))
        if pending:
            time.sleep(0.2)
    for i, hosts in sorted(servers.items()):
        for h, _where in hosts:
            ok = h in seen
            detail = f"{names[i]} TXT " + (
                f"after {seen[h]:.1f} s" if ok else f"not served after {propagate:.0f} s"
            )
            checks.append(Check(h, "serves the update of its slice", ok, detail))
    cleanup = dns.update.UpdateMessage(origin, keyring=ring, keyname=key)
    for name in names.values():
        cleanup.delete(name)
    send(cleanup)
    return checks
