"""Layout -> Ansible inventory (YAML inventory structure), and reading it back.

Groups: ``zoneslice_nodes`` (every host, with its host variables),
``primary``, ``slice_servers`` (whose children are one ``slice_<first>_<last>``
group per slice, carrying ``zoneslice_slice``), ``replayers`` and its alias
``loadgen``. Keys are sorted when written so a regenerated inventory only
differs where the layout does.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from zoneslice.errors import LayoutError
from zoneslice.testbed.layout import ROLE_LOADGEN, ROLE_PRIMARY, ROLE_SLICE, Layout

NODES = "zoneslice_nodes"
PRIMARY = "primary"
SLICE_SERVERS = "slice_servers"
REPLAYERS = "replayers"
LOADGEN = "loadgen"
TSIG_KEY_NAME = "zoneslice-update"
TSIG_ALGORITHM = "hmac-sha256"
DEFAULT_ROOT = "/var/lib/zoneslice"
DEFAULT_IFACE = "eth0"
DEFAULT_HOT_SIZE = 65536


def make_inventory(
    layout: Layout,
    *,
    root_base: str | os.PathLike[str] | None = None,
    iface: str = DEFAULT_IFACE,
    hot_size: int = DEFAULT_HOT_SIZE,
    tsig_key_file: str | os.PathLike[str] | None = None,
    tsig_key_name: str = TSIG_KEY_NAME,
    whole_manifest: str | os.PathLike[str] | None = None,
    secondaries: bool = False,
    xdp: bool = False,
    xdp_mode: str = "auto",
    extra_vars: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The inventory as a dict (what ``ansible_runner.run(inventory=...)`` accepts).

    ``root_base`` gives each host its own ``zoneslice_root`` below it (the local
    testbed, whose hosts share one filesystem); otherwise every host uses
    :data:`DEFAULT_ROOT`. ``whole_manifest`` is the one-slice split the primary
    serves; ``secondaries`` makes the slice servers IXFR secondaries of the
    primary (which then needs the TSIG key); ``xdp`` attaches the hot path on
    every slice server in ``xdp_mode``; ``extra_vars`` go into ``all.vars``
    (connection settings, say).
    """
    if hot_size < 0:
        raise LayoutError(f"hot-set size must be >= 0, not {hot_size}")
    all_vars: dict[str, Any] = {
        "zoneslice_parts": layout.parts,
        "zoneslice_tsig_key_name": tsig_key_name,
        "zoneslice_tsig_algorithm": TSIG_ALGORITHM,
    }
    if layout.manifest is not None:
        all_vars["zoneslice_manifest"] = str(layout.manifest)
        all_vars["zoneslice_origin"] = layout.origin
        all_vars["zoneslice_serial"] = layout.serial
    if whole_manifest is not None:
        all_vars["zoneslice_primary_manifest"] = str(Path(whole_manifest).resolve())
    if tsig_key_file is not None:
        all_vars["zoneslice_tsig_key_file"] = str(Path(tsig_key_file).resolve())
    if secondaries:
        if tsig_key_file is None:
            raise LayoutError("slice servers as secondaries need a TSIG key file")
        all_vars["zoneslice_secondary_of_primary"] = True
    if xdp:
        all_vars["zoneslice_xdp_enabled"] = True
        all_vars["zoneslice_xdp_mode"] = xdp_mode
    all_vars.update(extra_vars or {})

    nodes: dict[str, Any] = {}
    for h in layout.hosts:
        hv: dict[str, Any] = {
            "ansible_host": h.address,
            "zoneslice_role": h.role,
            "zoneslice_root": str(Path(root_base) / h.name) if root_base else DEFAULT_ROOT,
        }
        if h.role in (ROLE_PRIMARY, ROLE_SLICE):
            hv.update(
                zoneslice_listen=h.listen,
                zoneslice_iface=iface,
                zoneslice_hot_size=hot_size,
                zoneslice_tsig_key=tsig_key_name,
            )
        if h.role == ROLE_SLICE:
            hv["zoneslice_slice"] = h.slice
        nodes[h.name] = hv

    slice_children = {
        g.group: {
            "hosts": {n: None for n in g.servers},
            "vars": {"zoneslice_slice_group": g.group, "zoneslice_slice_range": g.display},
        }
        for g in layout.slices
    }
    return {
        "all": {
            "vars": all_vars,
            "children": {
                NODES: {"hosts": nodes},
                PRIMARY: {"hosts": {h.name: None for h in layout.by_role(ROLE_PRIMARY)}},
                SLICE_SERVERS: {"children": slice_children},
                REPLAYERS: {"hosts": {h.name: None for h in layout.by_role(ROLE_LOADGEN)}},
                LOADGEN: {"children": {REPLAYERS: None}},
            },
        }
    }


def inventory_yaml(inventory: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(inventory), sort_keys=True, default_flow_style=False)


def write_inventory(inventory: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically, so a reader never sees half an inventory."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(inventory_yaml(inventory))
    os.replace(tmp, p)
    return p


def load_inventory(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML inventory of the structure :func:`make_inventory` writes."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise LayoutError(f"{p}: no such inventory") from None
    except (OSError, yaml.YAMLError) as exc:
        raise LayoutError(f"{p}: not a readable YAML inventory: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("all"), dict):
        raise LayoutError(f"{p}: a YAML inventory starts with an 'all' group")
    return data


def _collect(name: str, group: Mapping[str, Any] | None, defs: dict[str, dict[str, Any]]) -> None:
    d = defs.setdefault(name, {"hosts": {}, "children": set(), "vars": {}})
    group = group or {}
    d["vars"].update(group.get("vars") or {})
    for host, hv in (group.get("hosts") or {}).items():
        d["hosts"].setdefault(host, {}).update(hv or {})
    for child, sub in (group.get("children") or {}).items():
        d["children"].add(child)
        _collect(child, sub, defs)


def resolve(inventory: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, set[str]]]:
    """``(host -> merged variables, group -> hosts)``, merged as Ansible does: groups by
    depth below ``all`` then by name, host variables last. Groups are matched by name, so
    ``loadgen: {children: {replayers: }}`` takes the hosts of ``replayers``."""
    defs: dict[str, dict[str, Any]] = {}
    for name, group in inventory.items():
        _collect(name, group, defs)
    depth: dict[str, int] = {}

    def visit(name: str, d: int, path: tuple[str, ...]) -> None:
        if name in path:
            raise LayoutError(f"inventory group {name!r} contains itself")
        depth[name] = max(depth.get(name, 0), d)
        for child in sorted(defs[name]["children"]):
            visit(child, d + 1, path + (name,))

    for name in defs:
        visit(name, 0, ())
    members: dict[str, set[str]] = {}

    def hosts_of(name: str) -> set[str]:
        if name not in members:
            out = set(defs[name]["hosts"])
            for child in defs[name]["children"]:
                out |= hosts_of(child)
            members[name] = out
        return members[name]

    for name in defs:
        hosts_of(name)
    hostvars: dict[str, dict[str, Any]] = {}
    for host in sorted(set().union(*members.values())):
        merged: dict[str, Any] = {}
        for name in sorted((g for g in defs if host in members[g]), key=lambda g: (depth[g], g)):
            merged.update(defs[name]["vars"])
        for name in sorted(defs, key=lambda g: (depth[g], g)):
            merged.update(defs[name]["hosts"].get(host, {}))
        hostvars[host] = merged
    return hostvars, {g: h for g, h in members.items() if h}


def write_tsig_key(
    path: str | os.PathLike[str], name: str = TSIG_KEY_NAME, algorithm: str = TSIG_ALGORITHM
) -> Path:
    """A BIND-format TSIG key with a fresh secret; an existing file is kept as it is."""
    p = Path(path)
    if p.exists():
        return p
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n')
    return p


def slice_listeners(path: str | os.PathLike[str]) -> dict[int, list[str]]:
    """``{slice: [ADDR:PORT, ...]}`` of the slice servers of an inventory, by host name."""
    hostvars, _groups = resolve(load_inventory(path))
    out: dict[int, list[str]] = {}
    for host in sorted(hostvars):
        hv = hostvars[host]
        if hv.get("zoneslice_slice") is not None and hv.get("zoneslice_listen"):
            out.setdefault(int(hv["zoneslice_slice"]), []).append(str(hv["zoneslice_listen"]))
    if not out:
        raise LayoutError(f"{path}: no slice servers (hosts with zoneslice_slice) in the inventory")
    return out
