"""The main job end to end at a small scale: generate, split, serve (real `zoneslice
serve` processes on loopback), replay a generated trace, report."""

from __future__ import annotations

import subprocess

from zoneslice.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    stages: list[str] = []
    report = run_demo(tmp_path, delegations=2000, parts=3, queries=6000, stage=stages.append)

    m = report.manifest
    assert m.parts == 3 and len(report.servers) == 3
    assert (tmp_path / "com.slices" / "manifest.json").exists()
    assert report.trace["queries"] == 6000
    assert report.characterization.queries == 6000

    rep = report.replay
    assert rep.sent > 0
    assert rep.lost == 0
    assert rep.answered == rep.sent
    # Every slice got its share of the trace and answered it.
    assert len(rep.slices) == 3
    for s in rep.slices:
        assert s.sent > 0 and s.answered == s.sent
    # A TLD trace has both positive referrals and ~38 % names that do not exist.
    assert rep.rcodes.get("NOERROR", 0) > 0
    assert rep.rcodes.get("NXDOMAIN", 0) > 0.2 * rep.answered
    assert "REFUSED" not in rep.rcodes
    assert len(stages) >= 5
    # Every server was stopped.
    out = subprocess.run(["pgrep", "-f", f"serve --manifest {tmp_path}"], capture_output=True)
    assert out.returncode == 1
