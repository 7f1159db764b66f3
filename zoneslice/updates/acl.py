"""Who may update what: TSIG keys from a BIND key file, and a per-name policy.

A signed UPDATE is judged by its key: the key must be granted the names it
changes (a grant is a subtree, the whole zone by default). An unsigned one is
refused unless the client's address is in ``allow_unsigned``, as BIND's
``allow-update { address; }``. A key file holds any number of
``key "name" { algorithm hmac-sha256; secret "base64"; };`` clauses (the
format ``tsig-keygen`` writes and ``nsupdate -k`` reads).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.name
import dns.tsig
import dns.tsigkeyring

from zoneslice.errors import KeyFileError

Keyring = dict[dns.name.Name, dns.tsig.Key]

_KEY_RE = re.compile(
    r'key\s+(?:"(?P<qname>[^"]*)"|(?P<name>[^\s{]+))\s*\{(?P<body>[^{}]*)\}\s*;?', re.S
)
_FIELD_RE = re.compile(r'(?P<field>algorithm|secret)\s+(?:"(?P<q>[^"]*)"|(?P<v>[^;\s]+))\s*;')
_COMMENT_RE = re.compile(r'("[^"]*")|(?:#|//)[^\n]*|/\*.*?\*/', re.S)
"""A comment, unless inside quotes (a base64 secret may hold ``//``): group 1 keeps those."""


def parse_keys(text: str, source: str = "<text>") -> Keyring:
    """Every key clause of BIND key-file text (algorithm defaults to hmac-sha256)."""
    text = _COMMENT_RE.sub(lambda m: m.group(1) or "", text)
    ring: Keyring = {}
    pos = 0
    for m in _KEY_RE.finditer(text):
        if text[pos : m.start()].strip():
            raise KeyFileError(f"{source}: unexpected text {text[pos:m.start()].strip()[:40]!r}")
        pos = m.end()
        name = m.group("qname") or m.group("name")
        fields = {
            f.group("field"): f.group("q") or f.group("v")
            for f in _FIELD_RE.finditer(m.group("body"))
        }
        if "secret" not in fields:
            raise KeyFileError(f"{source}: key {name!r} has no secret")
        try:
            got = dns.tsigkeyring.from_text(
                {name: (fields.get("algorithm", "hmac-sha256"), fields["secret"])}
            )
        except Exception as exc:  # noqa: BLE001 - dnspython raises several kinds here
            raise KeyFileError(f"{source}: key {name!r}: {exc}") from exc
        ring.update(got)
    if text[pos:].strip():
        raise KeyFileError(f"{source}: unexpected text {text[pos:].strip()[:40]!r}")
    if not ring:
        raise KeyFileError(f"{source}: no key clause")
    return ring


def load_keys(path: str | os.PathLike[str]) -> Keyring:
    """The keys of a BIND key file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise KeyFileError(f"{p}: {exc.strerror}") from exc
    return parse_keys(text, str(p))


@dataclass
class UpdatePolicy:
    """Which key may change which subtrees; which addresses may send unsigned updates.

    ``grants`` maps a key name to the names (subtrees) it may change; a key absent
    from ``grants`` may change nothing unless ``default_grant`` is given (then every
    known key may change that subtree, usually the zone apex).
    """

    grants: Mapping[dns.name.Name, list[dns.name.Name]] = field(default_factory=dict)
    default_grant: dns.name.Name | None = None
    allow_unsigned: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    unsigned_grant: dns.name.Name | None = None

    @classmethod
    def simple(
        cls,
        origin: dns.name.Name | str,
        keys: Iterable[dns.name.Name] = (),
        allow_unsigned: Iterable[str] = (),
    ) -> UpdatePolicy:
        """Every key in ``keys`` (and every address in ``allow_unsigned``) may change the zone."""
        if isinstance(origin, str):
            origin = dns.name.from_text(origin)
        return cls(
            {k: [origin] for k in keys},
            None,
            [ipaddress.ip_network(a, strict=False) for a in allow_unsigned],
            origin,
        )

    @classmethod
    def from_grants(
        cls,
        origin: dns.name.Name | str,
        keys: Iterable[dns.name.Name],
        grants: Iterable[str] = (),
        allow_unsigned: Iterable[str] = (),
    ) -> UpdatePolicy:
        """Policy from ``KEY=NAME`` texts (the key may change NAME and below); keys with no
        grant may change the whole zone, as with :meth:`simple`."""
        policy = cls.simple(origin, keys, allow_unsigned)
        origin = dns.name.from_text(str(origin))
        narrowed: dict[dns.name.Name, list[dns.name.Name]] = {}
        for text in grants:
            key_text, sep, name_text = text.partition("=")
            if not sep:
                raise KeyFileError(f"bad grant {text!r}: use KEY=NAME")
            key = dns.name.from_text(key_text)
            if key not in policy.grants:
                raise KeyFileError(f"grant for unknown key {key}")
            name = dns.name.from_text(name_text, origin)
            if not name.is_subdomain(origin):
                raise KeyFileError(f"grant {text!r} is outside {origin}")
            narrowed.setdefault(key, []).append(name)
        policy.grants = {**policy.grants, **narrowed}
        return policy

    def scope(self, key: dns.name.Name | None) -> list[dns.name.Name]:
        """The subtrees ``key`` (None: unsigned senders) may change."""
        if key is None:
            return [self.unsigned_grant] if self.unsigned_grant is not None else []
        if key in self.grants:
            return list(self.grants[key])
        return [self.default_grant] if self.default_grant is not None else []

    def sender_allowed(self, key: dns.name.Name | None, addr: str | None) -> bool:
        """Whether this sender may update anything at all (REFUSED otherwise)."""
        if key is not None:
            return bool(self.scope(key))
        if addr is None:
            return False
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.allow_unsigned) and bool(self.scope(None))

    def may_change(self, key: dns.name.Name | None, name: dns.name.Name) -> bool:
        return any(name.is_subdomain(top) for top in self.scope(key))
