"""`zoneslice split` and `zoneslice slices` through cli.main: exit statuses and output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import cli
from datasets.gen_zone import generate_zone
from zoneslice.manifest import load_manifest

HEAD = "$ORIGIN example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 604800 300\n@ NS ns1\nns1 A 192.0.2.1\n"


class Run:
    """One cli.main call with captured consoles."""

    def __init__(self, *argv: str | Path) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        env = cli.Environment(
            console=Console(file=self.out, width=250), err_console=Console(file=self.err, width=250)
        )
        self.status = cli.main([str(a) for a in argv], env=env)

    @property
    def stdout(self) -> str:
        return self.out.getvalue()

    @property
    def stderr(self) -> str:
        return self.err.getvalue()


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "com.zone"
    generate_zone(path, 1500, seed=4)
    return path


@pytest.fixture(scope="module")
def sliced(zone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-out") / "slices"
    run = Run("split", zone, "--parts", "3", "--out", out)
    assert run.status == cli.ExitStatus.OK, run.stderr
    return out


def test_split_prints_a_summary(zone: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run = Run("split", zone, "--parts", "4", "--out", out, "--by", "letter")
    assert run.status == 0 and run.stderr.strip() == ""
    m = load_manifest(out)
    assert m.parts == 4 and m.by == "letter"
    assert f"com. serial {m.serial}" in run.stdout
    assert f"{m.records_in:,} records in" in run.stdout
    for s in m.slices:
        assert s.display in run.stdout and s.sha256[:12] in run.stdout


def test_split_the_clients_way_with_relative_paths(
    zone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`zoneslice split com.zone --parts 3` in the zone's directory: relative paths all the
    way (sibling glue is read back through read-only URIs, which need absolute paths)."""
    (tmp_path / "com.zone").write_bytes(zone.read_bytes())
    monkeypatch.chdir(tmp_path)
    run = Run("split", "com.zone", "--parts", "3")
    assert run.status == cli.ExitStatus.OK, run.stderr
    written = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(written) == 1
    m = load_manifest(written[0])
    assert m.parts == 3 and all(written[0].joinpath(s.file).exists() for s in m.slices)
    assert any(r > 0 for r in glue_copies(written[0], m))


def glue_copies(out: Path, m) -> list[int]:
    import sqlite3

    counts = []
    for s in m.slices:
        with sqlite3.connect(out / s.file) as conn:
            counts.append(conn.execute("SELECT count(*) FROM rr WHERE origin != 1").fetchone()[0])
    return counts


def test_split_json(zone: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run = Run("split", zone, "--parts", "2", "--out", out, "--json")
    assert run.status == 0
    data = json.loads(run.stdout)
    assert data["run"]["directory"] == str(out) and data["run"]["records_per_second"] > 0
    del data["run"]
    assert data == json.loads(json.dumps(load_manifest(out).to_json()))


def test_slices_table_json_and_name_lookup(sliced: Path) -> None:
    m = load_manifest(sliced)
    run = Run("slices", sliced)
    assert run.status == 0 and f"{m.parts} slices by records" in run.stdout
    run = Run("slices", sliced / "manifest.json", "--json")
    assert run.status == 0 and json.loads(run.stdout)["lookup"]["bounds"] == m.bounds
    for s in m.slices:
        name = f"{s.last}.COM."
        run = Run("slices", sliced, "--name", name)
        assert (run.status, run.stdout.strip()) == (0, f"{name}: slice {s.index}")
        run = Run("slices", sliced, "--name", f"www.{s.first}.com", "--json")
        assert json.loads(run.stdout) == {"name": f"www.{s.first}.com", "slice": s.index}
    run = Run("slices", sliced, "--name", "com.")
    assert (run.status, run.stdout.strip()) == (0, "com.: slice 0")
    run = Run("slices", sliced, "--name", "example.net.")
    assert run.status == cli.ExitStatus.ERROR and "outside the zone" in run.stdout


def test_slices_without_manifest(tmp_path: Path) -> None:
    run = Run("slices", tmp_path)
    assert run.status == cli.ExitStatus.SLICE
    assert "zoneslice slices:" in run.stderr and "no such manifest" in run.stderr


@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ("www A 192.0.2.300\n", ":6: ", "bad A rdata"),
        ("www CNAME ns1\nwww TXT x\n", ":6: ", "CNAME at www beside other data"),
        ("other.net. A 192.0.2.1\n", ":6: ", "outside the zone example."),
        ("www TXT \"open\n", ":6: ", "unterminated quoted string"),
    ],
)
def test_split_bad_input_exits_3_with_file_line_reason(
    tmp_path: Path, body: str, where: str, reason: str
) -> None:
    zone = tmp_path / "bad.zone"
    zone.write_text(HEAD + body)
    run = Run("split", zone, "--parts", "1", "--out", tmp_path / "s")
    assert run.status == cli.ExitStatus.BAD_INPUT == 3
    assert run.stdout == ""
    assert f"zoneslice split: {zone}{where}" in run.stderr and reason in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zone"]


def test_split_error_message_is_not_read_as_markup(tmp_path: Path) -> None:
    """Brackets from the input (here a type token) reach stderr verbatim, without a crash."""
    zone = tmp_path / "bad.zone"
    zone.write_text(HEAD + "www [/bold] 1\n")
    run = Run("split", zone, "--parts", "1", "--out", tmp_path / "s")
    assert run.status == cli.ExitStatus.BAD_INPUT
    assert f"{zone}:6: unknown type '[/bold]'" in run.stderr


def test_split_missing_file_and_no_soa(tmp_path: Path) -> None:
    run = Run("split", tmp_path / "nope.zone", "--out", tmp_path / "s")
    assert run.status == 3 and f"{tmp_path / 'nope.zone'}: no such file" in run.stderr
    zone = tmp_path / "nosoa.zone"
    zone.write_text("$ORIGIN example.\n$TTL 300\n@ NS ns1\n")
    run = Run("split", zone, "--parts", "1", "--out", tmp_path / "s")
    assert run.status == 3 and f"{zone}: no SOA record at the apex example." in run.stderr
    assert not (tmp_path / "s").exists()


def test_split_impossible_parts_exits_4(tmp_path: Path) -> None:
    zone = tmp_path / "few.zone"
    zone.write_text(HEAD + "alpha A 192.0.2.2\n")
    run = Run("split", zone, "--parts", "5", "--out", tmp_path / "s")
    assert run.status == cli.ExitStatus.SLICE == 4
    assert "cannot cut the zone into 5 non-empty ranges" in run.stderr
    run = Run("split", zone, "--parts", "0", "--out", tmp_path / "s")
    assert run.status == 4 and "--parts must be at least 1" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.zone"]


def test_usage_errors_exit_2(zone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Run("split", zone, "--by", "size")
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_split_with_origin_option(tmp_path: Path) -> None:
    zone = tmp_path / "rel.zone"
    zone.write_text("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\nwww A 192.0.2.2\n")
    run = Run("split", zone, "--parts", "1", "--out", tmp_path / "s")
    assert run.status == 3 and "cannot tell the zone origin" in run.stderr
    run = Run("split", zone, "--parts", "2", "--out", tmp_path / "s", "--origin", "Example")
    assert run.status == 0, run.stderr
    assert load_manifest(tmp_path / "s").origin == "example."


def test_replay_through_a_layout_inventory(zone: Path, sliced: Path, tmp_path: Path) -> None:
    """`replay --layout` sends each slice's queries to the server the inventory names for it
    (real `zoneslice serve` processes on loopback)."""
    import yaml

    from datasets.gen_trace import TraceParams, generate, names_from_zone
    from zoneslice.demo import start_slice_servers, stop_servers

    m = load_manifest(sliced)
    trace = tmp_path / "t.pcap"
    generate(trace, names_from_zone(zone, m.plan.origin), m.origin,
             TraceParams(queries=1200, duration=5.0, seed=2, tcp=0.0, chaos=0.0))  # fmt: skip
    servers, procs = start_slice_servers(sliced / "manifest.json", m)
    try:
        hosts = {
            f"ns-{chr(97 + i)}": {"zoneslice_slice": i, "zoneslice_listen": f"{a}:{p}"}
            for i, (a, p) in servers.items()
        }
        inv = tmp_path / "inventory.yml"
        inv.write_text(yaml.safe_dump({"all": {"children": {"slice_servers": {"hosts": hosts}}}}))
        run = Run("replay", trace, "--manifest", sliced, "--layout", inv, "--json")
    finally:
        stop_servers(procs)
    assert run.status == cli.ExitStatus.OK, run.stderr
    report = json.loads(run.stdout)
    assert report["sent"] == 1200 and report["answered"] == 1200 and report["lost"] == 0
    by_slice = {s["slice"]: s for s in report["slices"]}
    assert set(by_slice) == {0, 1, 2}
    for i, (a, p) in servers.items():
        assert by_slice[i]["server"] == f"{a}:{p}"
        assert by_slice[i]["answered"] == by_slice[i]["sent"] > 0
    assert "REFUSED" not in report["rcodes"]


def test_replay_needs_servers_or_layout(sliced: Path, tmp_path: Path) -> None:
    run = Run("replay", tmp_path / "none.pcap", "--manifest", sliced)
    assert run.status == cli.ExitStatus.USAGE
    assert "--layout" in run.stderr
