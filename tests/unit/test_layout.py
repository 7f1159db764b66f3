"""Layout, inventory and deploy-event plumbing: pure, no root (Ansible runs only to parse)."""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datasets.gen_zone import generate_zone
from zoneslice.errors import LayoutError
from zoneslice.split import split_zone
from zoneslice.testbed.deploy import PLAYBOOK_DIR, _Collector
from zoneslice.testbed.inventory import (
    inventory_yaml,
    load_inventory,
    make_inventory,
    resolve,
    write_inventory,
    write_tsig_key,
)
from zoneslice.testbed.layout import (
    CONTROLLER,
    DEFAULT_PRIMARY,
    NETWORK,
    ROLE_LOADGEN,
    ROLE_PRIMARY,
    ROLE_SLICE,
    make_layout,
)

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def manifest3(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("zone")
    generate_zone(d / "com.zone", 300, seed=5)
    return split_zone(d / "com.zone", 3, d / "s3").manifest_path


def test_13_servers_3_parts_gives_at_least_4_per_slice():
    lay = make_layout(13, 3)
    sizes = [len(g.servers) for g in lay.slices]
    assert sizes == [5, 4, 4]
    assert [h.name for h in lay.slice_servers] == [f"ns-{c}" for c in "abcdefghijklm"]
    assert [h.slice for h in lay.slice_servers[:4]] == [0, 1, 2, 0]
    assert lay.primary == DEFAULT_PRIMARY and lay.host(DEFAULT_PRIMARY).role == ROLE_PRIMARY
    assert [h.name for h in lay.loadgens] == ["lg-1"]


def test_primary_among_the_servers_leaves_12_slice_servers():
    lay = make_layout(13, 3, primary="ns-a")
    assert [len(g.servers) for g in lay.slices] == [4, 4, 4]
    assert lay.host("ns-a").role == ROLE_PRIMARY and lay.host("ns-a").slice is None
    assert "ns-a" not in {n for g in lay.slices for n in g.servers}
    assert len(lay.hosts) == 14


def test_addresses_are_unique_and_in_the_testbed_network():
    lay = make_layout(26, 7, loadgen=3)
    addrs = [ipaddress.ip_address(h.address) for h in lay.hosts]
    assert len(set(addrs)) == len(addrs) == 26 + 1 + 3
    assert all(a in NETWORK and a != CONTROLLER for a in addrs)
    assert lay.host("ns-a").listen == "10.53.0.10:53"


@pytest.mark.parametrize("servers", range(1, 27))
def test_every_possible_layout_balances_the_slices(servers):
    for parts in range(1, servers + 1):
        lay = make_layout(servers, parts, primary=None, loadgen=0)
        sizes = [len(g.servers) for g in lay.slices]
        assert sum(sizes) == servers and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        assert {h.slice for h in lay.slice_servers} == set(range(parts))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"servers": 3, "parts": 4}, "4 parts need at least 4 slice servers"),
        ({"servers": 27, "parts": 3}, "names at most 26"),
        ({"servers": 0, "parts": 1}, "servers must be a positive integer"),
        ({"servers": 3, "parts": 0}, "parts must be a positive integer"),
        ({"servers": 3, "parts": 3, "loadgen": -1}, "loadgen must be between"),
        ({"servers": 3, "parts": 3, "primary": "ns-a"}, "(ns-a is the primary)"),
        ({"servers": 1, "parts": 1, "primary": "ns-a"}, "no server left"),
        ({"servers": 3, "parts": 1, "primary": "NS_A"}, "is not a host name"),
        ({"servers": 3, "parts": 1, "primary": "lg-1"}, "clashes with a load generator"),
        ({"servers": 3, "parts": 1, "primary": "primary"}, "clashes with an inventory group"),
    ],
)
def test_impossible_layouts_say_why(kwargs, message):
    with pytest.raises(LayoutError, match=None) as exc:
        make_layout(**kwargs)
    assert message in str(exc.value)


def test_manifest_names_the_slice_groups(manifest3):
    lay = make_layout(13, 3, manifest=manifest3)
    m = json.loads(manifest3.read_text())
    assert lay.origin == "com." and lay.serial == m["serial"]
    for g, s in zip(lay.slices, m["slices"], strict=True):
        assert g.group == f"slice_{s['first']}_{s['last']}"
        assert g.display == s["display"]
    with pytest.raises(LayoutError, match="has 3 slices, not --parts 2"):
        make_layout(13, 2, manifest=manifest3)
    with pytest.raises(LayoutError, match="readable manifest"):
        make_layout(13, 3, manifest=manifest3.parent / "nope.json")


def test_inventory_groups_and_host_vars(manifest3, tmp_path):
    lay = make_layout(13, 3, manifest=manifest3)
    inv = make_inventory(lay, root_base=tmp_path / "hosts", iface="zs0", hot_size=100,
                         tsig_key_file=tmp_path / "k.key", whole_manifest=manifest3)  # fmt: skip
    hostvars, groups = resolve(inv)
    assert groups["zoneslice_nodes"] == {h.name for h in lay.hosts}
    assert groups["primary"] == {DEFAULT_PRIMARY}
    assert groups["replayers"] == groups["loadgen"] == {"lg-1"}
    assert groups["slice_servers"] == {h.name for h in lay.slice_servers}
    for g in lay.slices:
        assert groups[g.group] == set(g.servers)
    a = hostvars["ns-a"]
    assert a["ansible_host"] == "10.53.0.10" and a["zoneslice_listen"] == "10.53.0.10:53"
    assert a["zoneslice_slice"] == 0 and a["zoneslice_iface"] == "zs0"
    assert a["zoneslice_hot_size"] == 100 and a["zoneslice_tsig_key"] == "zoneslice-update"
    assert a["zoneslice_root"] == str(tmp_path / "hosts" / "ns-a")
    assert a["zoneslice_slice_group"] == lay.slices[0].group
    assert a["zoneslice_manifest"] == str(manifest3.resolve())
    assert a["zoneslice_tsig_key_file"] == str(tmp_path / "k.key")
    assert "zoneslice_slice" not in hostvars[DEFAULT_PRIMARY]
    assert "zoneslice_listen" not in hostvars["lg-1"]
    default = resolve(make_inventory(make_layout(3, 3)))[0]
    assert default["ns-c"]["zoneslice_root"] == "/var/lib/zoneslice"


def test_inventory_yaml_is_deterministic_and_round_trips(manifest3, tmp_path):
    lay = make_layout(13, 3, manifest=manifest3)
    a = inventory_yaml(make_inventory(lay))
    assert a == inventory_yaml(make_inventory(make_layout(13, 3, manifest=manifest3)))
    path = write_inventory(make_inventory(lay), tmp_path / "inv.yml")
    assert load_inventory(path) == yaml.safe_load(a)
    (tmp_path / "bad.yml").write_text("- just\n- a list\n")
    with pytest.raises(LayoutError, match="starts with an 'all' group"):
        load_inventory(tmp_path / "bad.yml")
    with pytest.raises(LayoutError, match="no such inventory"):
        load_inventory(tmp_path / "missing.yml")


def test_ansible_reads_the_inventory_as_we_do(manifest3, tmp_path):
    lay = make_layout(13, 3, manifest=manifest3)
    inv = make_inventory(lay, root_base=tmp_path)
    path = write_inventory(inv, tmp_path / "inv.yml")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg")},
    )  # fmt: skip
    data = json.loads(proc.stdout)
    ours_vars, ours_groups = resolve(inv)
    for host, hv in data["_meta"]["hostvars"].items():
        assert {k: hv[k] for k in ours_vars[host]} == ours_vars[host]

    def members(group: str) -> set[str]:
        g = data.get(group, {})
        out = set(g.get("hosts", []))
        for child in g.get("children", []):
            out |= members(child)
        return out

    for group, hosts in ours_groups.items():
        if group != "all":
            assert members(group) == hosts, group


def test_playbooks_pass_ansible_syntax_check(manifest3, tmp_path):
    path = write_inventory(make_inventory(make_layout(13, 3, manifest=manifest3)), tmp_path / "i.yml")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(path), "site.yml"],
        cwd=PLAYBOOK_DIR, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: site.yml" in proc.stdout


def test_tsig_key_is_private_and_kept(tmp_path):
    p = write_tsig_key(tmp_path / "tsig.key")
    text = p.read_text()
    assert text.startswith('key "zoneslice-update" {') and "algorithm hmac-sha256;" in text
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert write_tsig_key(p).read_text() == text


def _ev(event: str, host: str, task: str, **extra) -> dict:
    return {"event": event, "event_data": {"host": host, "task": task, **extra}}


def test_deploy_events_become_host_counts_and_the_failing_task():
    seen: list = []
    c = _Collector(seen.append)
    for e in [
        _ev("runner_on_start", "ns-a", "Install the slice database"),
        _ev("runner_on_ok", "ns-a", "Install the slice database", res={"changed": True}),
        _ev("runner_on_ok", "ns-b", "Install the slice database", res={"changed": False}),
        _ev("runner_on_skipped", "ns-b", "Install the systemd unit"),
        _ev("runner_on_failed", "ns-b", "Probe", ignore_errors=True, res={"msg": "meh"}),
        _ev("runner_on_failed", "ns-c", "Wait for the engine to accept TCP",
            res={"msg": "Timeout when waiting for 10.53.0.12:53"}),
        _ev("runner_on_failed", "ns-c", "Fail with the engine log", res={"msg": "log tail"}),
        _ev("runner_on_unreachable", "ns-d", "Check", res={"msg": "ssh: connect refused"}),
        {"event": "playbook_on_stats", "event_data": {}},
    ]:
        assert c(e) is True
    kinds = collections.Counter(ev.kind for ev in seen)
    assert kinds == {"task": 1, "changed": 1, "ok": 1, "skipped": 1, "failed": 3, "unreachable": 1}
    assert c.hosts["ns-a"].changed == 1 and c.hosts["ns-a"].task == "Install the slice database"
    assert c.hosts["ns-b"].failed == 0 and c.hosts["ns-b"].skipped == 1
    c.apply_stats({
        "ok": {"ns-a": 1, "ns-b": 2}, "changed": {"ns-a": 1}, "failures": {"ns-c": 1},
        "dark": {"ns-d": 1}, "skipped": {"ns-b": 1}, "rescued": {"ns-c": 1},
    })  # fmt: skip
    assert c.hosts["ns-c"].failed == 1 and c.hosts["ns-c"].rescued == 1
    assert c.failures == [
        ("ns-c", "Fail with the engine log", "log tail"),
        ("ns-d", "Check", "ssh: connect refused"),
    ]


def test_layout_roles_partition_the_hosts():
    lay = make_layout(5, 2, loadgen=2)
    roles = collections.Counter(h.role for h in lay.hosts)
    assert roles == {ROLE_SLICE: 5, ROLE_PRIMARY: 1, ROLE_LOADGEN: 2}
    with pytest.raises(LayoutError, match="no host 'ns-z'"):
        lay.host("ns-z")
