"""Streaming RFC 1035 master-file reader.

A .com-sized file does not fit in memory as dnspython objects, so records are
read one at a time and yielded as plain tuples ready for the slice store:
``(rkey, rdtype, covers, rdata_wire, ttl, target_key, line)``. The common
shapes of a TLD dump (NS, A, AAAA, DS, CNAME, MX lines without quotes or
escapes) take a fast path; everything else (quoted strings, ``\\DDD`` escapes,
parentheses, RFC 3597 ``\\#`` data, every type dnspython knows, DNSSEC records)
goes through :func:`dns.rdata.from_text`, which defines the accepted syntax.

Directives: ``$ORIGIN``, ``$TTL``, ``$INCLUDE file [origin]``. Owner, TTL and
class may be omitted (previous owner, ``$TTL`` or the last explicit TTL, IN).
Input may be gzip-compressed (detected by its magic bytes).
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.ttl

from zoneslice.errors import ZoneFileError
from zoneslice.store.keys import name_key

Record = tuple[bytes, int, int, bytes, int, "bytes | None", int]

_A, _NS, _CNAME, _SOA, _PTR, _MX, _AAAA, _SRV, _DNAME, _DS, _RRSIG = 1, 2, 5, 6, 12, 15, 28, 33, 39, 43, 46
_NAME_TYPES = {_NS, _CNAME, _PTR, _DNAME}
_TARGET_TYPES = {_NS: "target", _CNAME: "target", _MX: "exchange", _SRV: "target", _DNAME: "target"}
_IN = frozenset(("IN", "in", "In", "iN"))
_CLASSES = {"in": 1, "ch": 3, "hs": 4, "any": 255, "none": 254}
_DS_DIGEST_LEN = {1: 20, 2: 32, 3: 32, 4: 48}
_TYPE_CACHE: dict[str, int] = {}


def open_text(path: str | os.PathLike[str]) -> tuple[io.TextIOWrapper, io.BufferedReader]:
    """Open a master file, plain or gzip-compressed, as latin-1 text (bytes kept 1:1).

    Also returns the raw file, whose position tells progress in on-disk bytes.
    """
    raw = open(path, "rb")  # noqa: SIM115 - handed to the wrapper below
    magic = raw.peek(2)[:2]
    stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
    return io.TextIOWrapper(stream, encoding="latin-1", newline=None), raw


class _Window(io.RawIOBase):
    """Bytes ``[start, end)`` of a file, for parsing one chunk of a large dump."""

    def __init__(self, path: str | os.PathLike[str], start: int, end: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with the window
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buf)[: self._left]
        n = self._f.readinto(view)
        self._left -= n
        return n

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


def open_window(
    path: str | os.PathLike[str], start: int, end: int
) -> tuple[io.TextIOWrapper, io.BufferedReader]:
    raw = io.BufferedReader(_Window(path, start, end), buffer_size=1 << 20)
    return io.TextIOWrapper(raw, encoding="latin-1", newline=None), raw


def chunk_bounds(path: str | os.PathLike[str], chunks: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_line)`` of ``chunks`` pieces cut at lines that start a record.

    A cut goes before a line whose first character can only begin an owner name
    (not blank, ``$``, ``;``, parenthesis); whether the piece really is
    independent of the one before is checked after parsing.
    """
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as fh:
        for k in range(1, chunks):
            pos = max(size * k // chunks, cuts[-1])
            fh.seek(pos)
            fh.readline()
            while True:
                at = fh.tell()
                line = fh.readline()
                if not line:
                    at = size
                    break
                if line[:1] not in (b" ", b"\t", b"$", b";", b"(", b")", b"\n", b"\r"):
                    break
            cuts.append(at)
        cuts.append(size)
        lines = [1]
        fh.seek(0)
        for a, b in zip(cuts, cuts[1:-1], strict=False):
            left, count = b - a, 0
            while left > 0:
                block = fh.read(min(left, 1 << 24))
                count += block.count(b"\n")
                left -= len(block)
            lines.append(lines[-1] + count)
    return [(cuts[i], cuts[i + 1], lines[i]) for i in range(chunks) if cuts[i] < cuts[i + 1]]


def _rdtype(token: str) -> int | None:
    t = _TYPE_CACHE.get(token)
    if t is None:
        try:
            t = int(dns.rdatatype.from_text(token))
        except dns.rdatatype.UnknownRdatatype:
            return None
        _TYPE_CACHE[token] = t
    return t


def _is_ttl(token: str) -> bool:
    c = token[0]
    return c.isdigit()


@dataclass
class _State:
    """Parser state that $INCLUDE saves and restores."""

    filename: str
    origin: dns.name.Name | None
    ttl: int | None = None
    last_ttl: int | None = None
    owner_key: bytes | None = None
    extra: dict = field(default_factory=dict)


class ZoneReader:
    """Iterate the records of one zone, with the reader's position for progress and errors."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        origin: dns.name.Name | str | None = None,
        *,
        window: tuple[int, int] | None = None,
        first_line: int = 1,
        initial: tuple[dns.name.Name, int | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.window = window
        self.first_line = first_line
        self.initial = initial
        self.directive_after_records = False
        self.ttl_normalised = 0
        self.dependent = False
        self.state: _State | None = None
        if isinstance(origin, str):
            origin = dns.name.from_text(origin)
        self.zone_origin: dns.name.Name | None = origin.canonicalize() if origin else None
        self.records = 0
        self.soa_serial: int | None = None
        self.soa_minimum: int | None = None
        self.soa_ttl: int | None = None
        self.bytes_read = 0
        self._include_depth = 0

    def bytes_position(self) -> int:
        """How far into the top-level file (on-disk bytes) the reader is."""
        raw = getattr(self, "_raw_top", None)
        try:
            return raw.tell() if raw is not None and not raw.closed else 0
        except (OSError, ValueError):
            return 0

    # -- names -------------------------------------------------------------

    def _set_zone_origin(self, origin: dns.name.Name) -> None:
        self.zone_origin = origin.canonicalize()
        zt = self.zone_origin.to_text().lower()
        self._zone_text = zt
        self._zone_suffix = "." if zt == "." else "." + zt
        self._zone_depth = len(self.zone_origin.labels)

    def _err(self, st: _State, line: int | None, reason: str) -> ZoneFileError:
        return ZoneFileError(st.filename, line, reason)

    def _slow_name(self, st: _State, token: str, line: int) -> dns.name.Name:
        if token == "@":
            if st.origin is None:
                raise self._err(st, line, "'@' used but no origin is known (use $ORIGIN)")
            return st.origin
        try:
            return dns.name.from_text(token.encode("latin-1"), origin=st.origin)
        except dns.exception.DNSException as exc:
            raise self._err(st, line, f"bad name {token!r}: {exc}") from None

    def _key_of(self, st: _State, name: dns.name.Name, line: int, what: str) -> bytes:
        if not name.is_absolute():
            raise self._err(st, line, f"{what} {name} is relative and no origin is known")
        if not name.is_subdomain(self.zone_origin):
            raise self._err(st, line, f"{what} {name} is outside the zone {self.zone_origin}")
        return name_key(name, self.zone_origin)

    def _owner_key(self, st: _State, token: str, line: int) -> bytes:
        """Key of an owner token; fast for plain absolute or relative names."""
        if "\\" in token or token == "@" or st.extra.get("origin_outside") or not token.isascii():
            return self._key_of(st, self._slow_name(st, token, line), line, "owner name")
        t = token.lower()
        if t.endswith("."):
            if t == self._zone_text:
                return b""
            if not t.endswith(self._zone_suffix):
                return self._key_of(st, self._slow_name(st, token, line), line, "owner name")
            labels = t[: -len(self._zone_suffix)].split(".")
            labels.reverse()
        else:
            if st.origin is None:
                raise self._err(st, line, f"owner name {token} is relative and no origin is known")
            labels = t.split(".")
            labels.reverse()
            labels = st.extra["origin_rel"] + labels
        total = self._zone_depth
        for lb in labels:
            n = len(lb)
            if n == 0 or n > 63:
                return self._key_of(st, self._slow_name(st, token, line), line, "owner name")
            total += n + 1
        if total > 255:
            raise self._err(st, line, f"owner name {token} is longer than 255 octets")
        return "\x00".join(labels).encode("latin-1") + b"\x00"

    def _target(self, st: _State, token: str, line: int) -> tuple[bytes, bytes | None]:
        """Wire form (case kept) and in-zone key (or None) of a domain name in rdata.

        Name server names repeat across thousands of delegations, so results are
        cached (per origin for relative names; the cache is bounded).
        """
        cache = st.extra.get("target_cache")
        if cache is None:
            cache = st.extra["target_cache"] = {}
        hit = cache.get(token)
        if hit is not None:
            return hit
        out = self._target_uncached(st, token, line)
        if len(cache) >= 65536:
            cache.clear()
        cache[token] = out
        return out

    def _target_uncached(self, st: _State, token: str, line: int) -> tuple[bytes, bytes | None]:
        if "\\" in token or token == "@" or not token.isascii():
            name = self._slow_name(st, token, line)
            key = name_key(name, self.zone_origin) if name.is_subdomain(self.zone_origin) else None
            return name.to_wire(), key
        if token.endswith("."):
            text = token[:-1]
            absolute = True
        else:
            if st.origin is None:
                raise self._err(st, line, f"name {token} is relative and no origin is known")
            text = token
            absolute = False
        parts = text.split(".") if text else []
        wire = bytearray()
        for lb in parts:
            n = len(lb)
            if n == 0 or n > 63:
                raise self._err(st, line, f"bad name {token!r}: empty or over-long label")
            wire.append(n)
            wire += lb.encode("latin-1")
        if absolute:
            wire.append(0)
            lowered = token.lower()
            if lowered == self._zone_text:
                key: bytes | None = b""
            elif lowered.endswith(self._zone_suffix) or self._zone_text == ".":
                rel = lowered[: len(lowered) - len(self._zone_suffix)].split(".")
                rel.reverse()
                key = "\x00".join(rel).encode("latin-1") + b"\x00"
            else:
                key = None
        else:
            wire += st.extra["origin_wire"]
            if st.extra.get("origin_outside"):
                key = None
            else:
                rel = text.lower().split(".")
                rel.reverse()
                key = "\x00".join(st.extra["origin_rel"] + rel).encode("latin-1") + b"\x00"
        if len(wire) > 255:
            raise self._err(st, line, f"name {token} is longer than 255 octets")
        return bytes(wire), key

    def _set_origin(self, st: _State, origin: dns.name.Name) -> None:
        st.origin = origin
        st.extra["target_cache"] = {}
        st.extra["origin_wire"] = origin.to_wire()
        if self.zone_origin is not None and origin.is_subdomain(self.zone_origin):
            rel = origin.labels[: len(origin.labels) - len(self.zone_origin.labels)]
            st.extra["origin_rel"] = [lb.decode("latin-1").lower() for lb in rel[::-1]]
            st.extra["origin_outside"] = any(
                b"\\" in lb or b"." in lb or b"\x00" in lb or b"\x01" in lb for lb in rel
            )
        else:
            st.extra["origin_rel"] = []
            st.extra["origin_outside"] = True

    # -- tokenizing --------------------------------------------------------

    @staticmethod
    def _tokenize(text: str, depth: int) -> tuple[list[str], int]:
        """Split one physical line into tokens, honouring quotes, escapes, comments, parens."""
        tokens: list[str] = []
        cur: list[str] = []
        i, n = 0, len(text)
        in_quote = False
        while i < n:
            c = text[i]
            if in_quote:
                cur.append(c)
                if c == "\\" and i + 1 < n:
                    cur.append(text[i + 1])
                    i += 1
                elif c == '"':
                    in_quote = False
            elif c == "\\":
                cur.append(c)
                if i + 1 < n:
                    cur.append(text[i + 1])
                    i += 1
            elif c == '"':
                # Kept glued to its neighbours (SVCB's key="value" needs no space after '='):
                # dnspython re-tokenizes the rdata text and splits them where it should.
                cur.append(c)
                in_quote = True
            elif c == ";":
                break
            elif c in " \t\r\n":
                if cur:
                    tokens.append("".join(cur))
                    cur = []
            elif c == "(":
                if cur:
                    tokens.append("".join(cur))
                    cur = []
                depth += 1
            elif c == ")":
                if cur:
                    tokens.append("".join(cur))
                    cur = []
                depth -= 1
                if depth < 0:
                    raise ValueError("unbalanced ')'")
            else:
                cur.append(c)
            i += 1
        if in_quote:
            raise ValueError("unterminated quoted string")
        if cur:
            tokens.append("".join(cur))
        return tokens, depth

    def _logical_lines(self, fh: io.TextIOBase, st: _State) -> Iterator[tuple[int, bool, list[str]]]:
        """Yield ``(line, starts_with_blank, tokens)`` per record or directive."""
        depth = 0
        acc: list[str] = []
        start = 0
        blank = False
        lineno = 0
        first = self.first_line if self._include_depth == 0 else 1
        try:
            for lineno, text in enumerate(fh, first):
                if not depth and '"' not in text and "(" not in text and "\\" not in text:
                    code = text.split(";", 1)[0]
                    tokens = code.split()
                    if tokens:
                        yield lineno, text[0] in " \t", tokens
                    continue
                try:
                    tokens, new_depth = self._tokenize(text, depth)
                except ValueError as exc:
                    raise self._err(st, lineno, str(exc)) from None
                if depth == 0:
                    if not tokens and new_depth == 0:
                        continue
                    start, blank, acc = lineno, text[:1] in (" ", "\t"), []
                acc.extend(tokens)
                depth = new_depth
                if depth == 0 and acc:
                    yield start, blank, acc
                    acc = []
        except (OSError, EOFError) as exc:  # e.g. a truncated gzip file
            raise self._err(st, lineno + 1 if lineno else first, f"read failed: {exc}") from None
        if depth:
            raise self._err(st, start or lineno, "unbalanced '(': end of file inside parentheses")

    # -- records -----------------------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        """Set up and return the record generator (not itself a generator: one level less)."""
        st = _State(filename=str(self.path), origin=None)
        self.state = st
        if self.zone_origin is not None:
            self._set_zone_origin(self.zone_origin)
            self._set_origin(st, self.zone_origin)
        if self.initial is not None:
            self._set_origin(st, self.initial[0])
            st.ttl = self.initial[1]
        return self._read_file(self.path, st)

    def _read_file(self, path: Path, st: _State) -> Iterator[Record]:
        try:
            if self._include_depth == 0 and self.window is not None:
                fh, raw = open_window(path, *self.window)
            else:
                fh, raw = open_text(path)
        except OSError as exc:
            raise ZoneFileError(str(path), None, f"cannot open: {exc.strerror}") from None
        if self._include_depth == 0:
            self._raw_top = raw
        with fh, raw:
            try:
                yield from self._read_stream(fh, st)
            except UnicodeDecodeError as exc:
                raise self._err(st, None, f"cannot decode: {exc}") from None
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise self._err(st, None, f"read failed: {exc}") from None

    def _directive(self, st: _State, line: int, tokens: list[str]) -> Iterator[Record]:
        d = tokens[0].upper()
        if d == "$ORIGIN":
            if len(tokens) != 2:
                raise self._err(st, line, "$ORIGIN takes one name")
            origin = self._slow_name(st, tokens[1], line)
            if not origin.is_absolute():
                raise self._err(st, line, f"$ORIGIN {tokens[1]} is not absolute")
            if self.zone_origin is None:
                self._set_zone_origin(origin)
            self._set_origin(st, origin)
        elif d == "$TTL":
            if len(tokens) != 2:
                raise self._err(st, line, "$TTL takes one value")
            try:
                st.ttl = int(dns.ttl.from_text(tokens[1]))
            except dns.exception.DNSException as exc:
                raise self._err(st, line, f"bad $TTL {tokens[1]!r}: {exc}") from None
            if st.ttl > 0x7FFFFFFF:
                raise self._err(st, line, f"$TTL {tokens[1]} is above 2^31-1")
        elif d == "$INCLUDE":
            if len(tokens) not in (2, 3):
                raise self._err(st, line, "$INCLUDE takes a file name and an optional origin")
            if self._include_depth >= 16:
                raise self._err(st, line, "$INCLUDE nested too deeply")
            target = Path(tokens[1].strip('"'))
            if not target.is_absolute():
                target = Path(st.filename).parent / target
            inner = _State(
                filename=str(target), origin=st.origin, ttl=st.ttl, last_ttl=st.last_ttl,
                owner_key=st.owner_key, extra=dict(st.extra),
            )
            if len(tokens) == 3:
                origin = self._slow_name(st, tokens[2], line)
                self._set_origin(inner, origin)
            if not target.exists():
                raise self._err(st, line, f"$INCLUDE file {target} does not exist")
            self._include_depth += 1
            try:
                yield from self._read_file(target, inner)
            finally:
                self._include_depth -= 1
        else:
            raise self._err(st, line, f"unsupported directive {tokens[0]}")

    def _read_stream(self, fh: io.TextIOBase, st: _State) -> Iterator[Record]:
        fast = self._fast_rdata
        inet_pton, af_inet = socket.inet_pton, socket.AF_INET
        last_owner = None
        # The name cache of _target (NS targets repeat); replaced when the origin changes.
        targets = st.extra.setdefault("target_cache", {})
        for line, blank, tokens in self._logical_lines(fh, st):
            first = tokens[0]
            if first[0] == "$":
                if self.records:
                    self.directive_after_records = True
                yield from self._directive(st, line, tokens)
                last_owner = None
                targets = st.extra.setdefault("target_cache", {})
                continue
            i = 0
            if blank:
                if st.owner_key is None and self.window is not None and self.window[0] > 0:
                    self.dependent = True
                    return
                if st.owner_key is None:
                    raise self._err(st, line, "record without an owner name and no previous owner")
                key = st.owner_key
            elif first == last_owner:
                key = st.owner_key
                i = 1
            else:
                if self.zone_origin is None:
                    if first == "@" or not first.endswith("."):
                        raise self._err(
                            st, line, "cannot tell the zone origin: give $ORIGIN or --origin"
                        )
                    self._set_zone_origin(self._slow_name(st, first, line))
                    self._set_origin(st, self.zone_origin)
                    targets = st.extra["target_cache"]
                key = self._owner_key(st, first, line)
                st.owner_key = key
                last_owner = first
                i = 1
            # The shape of every line of a TLD dump: owner TTL IN TYPE rdata...
            if i == 1 and len(tokens) > 4 and tokens[1].isdigit() and tokens[2] in _IN:
                ttl = int(tokens[1])
                rdtype = _TYPE_CACHE.get(tokens[3]) or _rdtype(tokens[3].upper())
                if rdtype is not None and ttl <= 0x7FFFFFFF and rdtype != _SOA:
                    st.last_ttl = ttl
                    out = None
                    if len(tokens) == 5:
                        if rdtype == _NS:
                            out = targets.get(tokens[4])
                        elif rdtype == _A:
                            try:
                                out = inet_pton(af_inet, tokens[4]), None
                            except (OSError, ValueError):
                                pass
                    if out is None:
                        out = fast(st, rdtype, tokens[4:], line)
                    if out is not None:
                        self.records += 1
                        yield key, rdtype, 0, out[0], ttl, out[1], line
                        continue
            ttl = None
            rdclass = 1
            n = len(tokens)
            while i < n:
                tok = tokens[i]
                if _is_ttl(tok):
                    if ttl is not None:
                        break
                    try:
                        ttl = int(tok) if tok.isdigit() else int(dns.ttl.from_text(tok))
                    except (ValueError, dns.exception.DNSException):
                        raise self._err(st, line, f"bad TTL {tok!r}") from None
                    if ttl > 0x7FFFFFFF:
                        raise self._err(st, line, f"TTL {tok} is above 2^31-1")
                    i += 1
                    continue
                low = tok.lower()
                cls = _CLASSES.get(low)
                if cls is None and low.startswith("class") and low[5:].isdigit():
                    cls = int(low[5:])
                if cls is not None:
                    rdclass = cls
                    i += 1
                    continue
                break
            if i >= n:
                raise self._err(st, line, "record has no type")
            rdtype = _rdtype(tokens[i].upper())
            if rdtype is None:
                raise self._err(st, line, f"unknown type {tokens[i]!r}")
            if rdclass != 1:
                raise self._err(st, line, f"class {dns.rdataclass.to_text(rdclass)} is not IN")
            rd_tokens = tokens[i + 1 :]
            if not rd_tokens:
                raise self._err(st, line, f"{dns.rdatatype.to_text(rdtype)} record has no rdata")
            if ttl is not None:
                st.last_ttl = ttl
            elif st.ttl is not None:
                ttl = st.ttl
            elif st.last_ttl is not None:
                ttl = st.last_ttl
            covers = 0
            out = fast(st, rdtype, rd_tokens, line)
            if out is None:
                wire, tkey, covers, rd = self._slow_rdata(st, rdtype, rd_tokens, line)
                if rdtype == _SOA:
                    if key != b"":
                        raise self._err(st, line, f"SOA record at {key_to_text(key)} is not at the apex")
                    if self.soa_serial is not None:
                        raise self._err(st, line, "second SOA record at the apex")
                    self.soa_serial = rd.serial
                    self.soa_minimum = rd.minimum
                    if ttl is None:
                        # As BIND: without $TTL, the SOA's MINIMUM is the default TTL.
                        ttl = st.ttl = rd.minimum
                    self.soa_ttl = ttl
            else:
                wire, tkey = out
            if ttl is None:
                if self.window is not None and self.window[0] > 0:
                    self.dependent = True
                    return
                raise self._err(st, line, "no TTL: the record has none and there is no $TTL")
            self.records += 1
            yield key, rdtype, covers, wire, ttl, tkey, line

    def _fast_rdata(
        self, st: _State, rdtype: int, toks: list[str], line: int
    ) -> tuple[bytes, bytes | None] | None:
        try:
            if rdtype in _NAME_TYPES and len(toks) == 1 and '"' not in toks[0]:
                return self._target(st, toks[0], line)
            if rdtype == _A and len(toks) == 1:
                return socket.inet_pton(socket.AF_INET, toks[0]), None
            if rdtype == _AAAA and len(toks) == 1:
                return socket.inet_pton(socket.AF_INET6, toks[0]), None
            if rdtype == _DS and len(toks) >= 4 and (toks[0] + toks[1] + toks[2]).isdigit():
                digest = bytes.fromhex("".join(toks[3:]))
                if len(digest) != _DS_DIGEST_LEN.get(int(toks[2])):
                    return None
                return struct.pack("!HBB", int(toks[0]), int(toks[1]), int(toks[2])) + digest, None
            if rdtype == _MX and len(toks) == 2 and toks[0].isdigit() and '"' not in toks[1]:
                wire, key = self._target(st, toks[1], line)
                return struct.pack("!H", int(toks[0])) + wire, key
        except (OSError, ValueError, struct.error):
            return None
        return None

    def _slow_rdata(
        self, st: _State, rdtype: int, toks: list[str], line: int
    ) -> tuple[bytes, bytes | None, int, dns.rdata.Rdata]:
        try:
            rd = dns.rdata.from_text(
                dns.rdataclass.IN, rdtype, " ".join(toks), origin=st.origin, relativize=False
            )
            wire = rd.to_wire()
        except dns.exception.DNSException as exc:
            msg = str(exc) or type(exc).__name__
            raise self._err(st, line, f"bad {dns.rdatatype.to_text(rdtype)} rdata: {msg}") from None
        except Exception as exc:  # dnspython raises assorted errors on odd rdata
            raise self._err(
                st, line, f"bad {dns.rdatatype.to_text(rdtype)} rdata: {exc}"
            ) from None
        tkey = None
        attr = _TARGET_TYPES.get(rdtype)
        if attr is not None:
            target = getattr(rd, attr)
            if target.is_subdomain(self.zone_origin):
                tkey = name_key(target, self.zone_origin)
        covers = int(rd.covers()) if rdtype == _RRSIG else 0
        return wire, tkey, covers, rd


def key_to_text(key: bytes) -> str:
    """Readable relative form of a key, for messages."""
    from zoneslice.store.keys import key_labels

    labels = key_labels(key)[::-1]
    return dns.name.Name(labels).to_text() if labels else "@"
