"""`zoneslice updgen` streams, fed by BIND's nsupdate both to the zoneslice primary and to BIND
(named) holding the same zone: every message is accepted, and the two zones end up equal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.gen_zone import generate_zone
from tests.bind import free_port, named
from zoneslice.engine.server import Background
from zoneslice.split import split_zone
from zoneslice.updates.acl import parse_keys
from zoneslice.updates.primary import primary_role_factory
from zoneslice.updates.updgen import parse_stream

ROOT = Path(__file__).resolve().parents[2]
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
KEYS = f'key "k1" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("nsupdate", "dig", "named")),
    reason="bind9 and bind9-dnsutils needed",
)


def nsupdate(port: int, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsupdate", "-t", "10", "-y", f"hmac-sha256:k1:{SECRET}"],
        input=f"server 127.0.0.1 {port}\n{script}",
        capture_output=True, text=True, timeout=300,
    )


def axfr(port: int, origin: str) -> list[tuple[str, ...]]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+nocmd", "+nostats", "+nocomments",
         "+noquestion", "+onesoa", "axfr", origin],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        f = line.split()
        rows.append((f[0].lower(), f[1], f[2], f[3], " ".join(f[4:]).lower()))
    assert rows, out[-2000:]
    return sorted(rows)


def test_updgen_stream_equal_on_zoneslice_and_bind(tmp_path: Path) -> None:
    zone = tmp_path / "z.zone"
    generate_zone(zone, delegations=400, seed=7)
    db = split_zone(zone, 1, tmp_path / "whole").manifest.slice_path(0)
    (tmp_path / "keys.conf").write_text(KEYS)
    ring = parse_keys(KEYS)
    script_path = tmp_path / "updates.txt"
    r = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "updgen", str(zone), "--count", "240", "--seed", "5",
         "--batch", "2", "--out", str(script_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    script = script_path.read_text()
    origin, messages = parse_stream(script)
    assert str(origin) == "com." and len(messages) == 120
    for kind in ("prereq nxdomain", "update delete", "NS ns", " A ", " DS "):
        assert kind in script, kind
    bind_port = free_port()
    with (
        Background(db, [("127.0.0.1", 0)], workers=2, axfr_allow=["127.0.0.1"],
                   role=primary_role_factory(db, ring)) as srv,
        named(zone, "com.", tmp_path / "bind", "127.0.0.1", bind_port, key_name="k1",
              secret=SECRET),
    ):
        port = srv.info.listen[0][1]
        before = axfr(port, "com.")
        assert before == axfr(bind_port, "com.")  # same start
        for p in (port, bind_port):
            r = nsupdate(p, script)
            assert r.returncode == 0 and "failed" not in r.stdout + r.stderr, (p, r.stdout, r.stderr)
        ours, theirs = axfr(port, "com."), axfr(bind_port, "com.")
    assert ours != before
    soa = [x for x in ours if x[3] == "SOA"][0]
    assert soa[4].split()[2] == str(int([x for x in before if x[3] == "SOA"][0][4].split()[2]) + 120)
    assert set(ours) ^ set(theirs) == set(), sorted(set(ours) ^ set(theirs))[:10]
    assert ours == theirs
