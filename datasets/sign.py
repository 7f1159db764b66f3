"""Sign a generated zone with BIND's ``dnssec-signzone`` (NSEC, or NSEC3 opt-out like COM).

The KSK and ZSK (ECDSAP256SHA256, fast to sign with) are derived from a seed
instead of coming from ``dnssec-keygen``, so the DNSKEY RRset, the key tags and
the NSEC3 chain are the same on every run; only the RRSIG signature bytes vary,
because ECDSA signing is randomized. They are test keys: anyone can rebuild them.
Inception and expiration are fixed (``-s``/``-e``), so a re-run changes nothing else.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from zoneslice.errors import ToolMissing, ZonesliceError

INCEPTION = "20260101000000"
EXPIRATION = "20361231000000"
KEY_TIMES = "20000101000000"
DNSKEY_TTL = 86400
MODES = ("nsec", "nsec3")


class SignError(ZonesliceError):
    """The zone could not be signed or did not verify."""


# NIST P-256 (secp256r1), for deriving public keys from seeded private keys.
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)


def _ec_add(p: tuple[int, int] | None, q: tuple[int, int] | None) -> tuple[int, int] | None:
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0] and (p[1] + q[1]) % _P == 0:
        return None
    if p == q:
        lam = (3 * p[0] * p[0] - 3) * pow(2 * p[1], -1, _P) % _P
    else:
        lam = (q[1] - p[1]) * pow(q[0] - p[0], -1, _P) % _P
    x = (lam * lam - p[0] - q[0]) % _P
    return x, (lam * (p[0] - x) - p[1]) % _P


def _ec_mul(k: int) -> tuple[int, int]:
    result, addend = None, _G
    while k:
        if k & 1:
            result = _ec_add(result, addend)
        addend = _ec_add(addend, addend)
        k >>= 1
    assert result is not None
    return result


def key_tag(rdata: bytes) -> int:
    """RFC 4034 appendix B key tag of a DNSKEY rdata."""
    acc = sum(b << 8 if i % 2 == 0 else b for i, b in enumerate(rdata))
    return (acc + (acc >> 16)) & 0xFFFF


def write_seeded_keys(keydir: str | os.PathLike[str], origin: str, seed: int) -> list[int]:
    """Write a KSK and a ZSK for ``origin`` derived from ``seed``; return their key tags."""
    keydir = Path(keydir)
    tags = []
    for flags, role in ((257, "ksk"), (256, "zsk")):
        material = hashlib.sha256(f"zoneslice-{role}-{origin}-{seed}".encode()).digest()
        d = int.from_bytes(material, "big") % (_N - 1) + 1
        x, y = _ec_mul(d)
        public = x.to_bytes(32, "big") + y.to_bytes(32, "big")
        tag = key_tag(flags.to_bytes(2, "big") + bytes([3, 13]) + public)
        stem = str(keydir / f"K{origin}+013+{tag:05d}")
        kind = "key-signing" if flags == 257 else "zone-signing"
        Path(stem + ".key").write_text(
            f"; This is a {kind} key, keyid {tag}, for {origin}\n"
            f"{origin} {DNSKEY_TTL} IN DNSKEY {flags} 3 13 {base64.b64encode(public).decode()}\n"
        )
        Path(stem + ".private").write_text(
            "Private-key-format: v1.3\n"
            "Algorithm: 13 (ECDSAP256SHA256)\n"
            f"PrivateKey: {base64.b64encode(d.to_bytes(32, 'big')).decode()}\n"
            f"Created: {KEY_TIMES}\nPublish: {KEY_TIMES}\nActivate: {KEY_TIMES}\n"
        )
        os.chmod(stem + ".private", 0o600)
        tags.append(tag)
    return tags


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found (Debian package bind9-utils)")
    return path


def _run(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SignError(f"{Path(argv[0]).name} failed ({proc.returncode}): " + " | ".join(tail))
    return proc.stdout + proc.stderr


def sign_zone(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    origin: str,
    mode: str = "nsec3",
    *,
    seed: int = 1,
    salt: str = "-",
    ncpus: int = 1,
    verify: bool = True,
) -> Path:
    """Sign ``src`` into ``dst`` (one full record per line, no comments; gzip if ``.gz``).

    ``nsec3`` is what COM does: no salt, no extra iterations, opt-out, so
    unsigned delegations get no NSEC3. ``verify`` keeps the signer's own
    post-signing check (``dnssec-signzone`` without ``-P``). With ``ncpus`` > 1
    the signer's threads write nodes in a varying order.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    origin = origin if origin.endswith(".") else origin + "."
    signer = _tool("dnssec-signzone")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="zoneslice-sign-") as tmp:
        work = Path(tmp)
        write_seeded_keys(work, origin, seed)
        with open(src, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if gzipped:
            plain = work / "unsigned.zone"
            with gzip.open(src, "rb") as fin, open(plain, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        else:
            plain = src.resolve()
        signed = work / "signed.zone"
        options = {
            "-K": work, "-d": work, "-o": origin, "-f": signed, "-O": "full", "-N": "keep",
            "-T": DNSKEY_TTL, "-s": INCEPTION, "-e": EXPIRATION, "-j": 0, "-n": ncpus,
        }  # fmt: skip
        argv = [signer, "-q", "-S", "-x"] + [str(x) for pair in options.items() for x in pair]
        if not verify:
            argv.append("-P")
        if mode == "nsec3":
            argv += ["-3", salt, "-H", "0", "-A"]
        _run(argv + [str(plain)], cwd=work)
        _copy_without_comments(signed, dst)
    return dst


def _copy_without_comments(src: Path, dst: Path) -> None:
    """Drop the signer's comments (write date, resign times) so re-runs compare equal."""
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as raw:
            out = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
                if dst.name.endswith(".gz")
                else raw
            )
            buf = []
            for line in fin:
                if not line.startswith(b";"):
                    buf.append(line)
                    if len(buf) >= 8192:
                        out.write(b"".join(buf))
                        buf.clear()
            out.write(b"".join(buf))
            if out is not raw:
                out.close()
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def verify_zone(path: str | os.PathLike[str], origin: str) -> str:
    """Run ``dnssec-verify`` (KSK-only DNSKEY signatures, as signed); raise SignError if it fails."""
    verifier = _tool("dnssec-verify")
    path = Path(path).resolve()
    return _run([verifier, "-x", "-o", origin, str(path)], cwd=path.parent)
