"""The layout built on this machine: a network namespace and an sshd per host.

Hosts ``ns-a`` ... live in namespaces ``zs-<host>`` joined by the bridge
``zsbr0`` of a namespace of its own (``zs-br``), so the host's own network sees
one thing only: the veth ``zs-ctl`` (10.53.255.1/16) through which the
controller reaches the hosts over SSH, exactly as it would reach real ones.
The namespaces share this filesystem, so each host gets its own directory
(``zoneslice_root``) below ``WORKDIR/hosts``.

Everything is recorded in ``WORKDIR/state.json`` *before* it is created, so
:func:`testbed_down` removes every namespace, link, process and file of a
testbed, including one whose ``up`` failed half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoneslice.errors import TestbedError
from zoneslice.testbed import netns
from zoneslice.testbed.inventory import make_inventory, write_inventory, write_tsig_key
from zoneslice.testbed.layout import CONTROLLER, NETWORK, Layout, make_layout

FORMAT = "zoneslice-testbed/1"
STATE = "state.json"
INVENTORY = "inventory.yml"
TSIG_KEY = "tsig.key"
PREFIX = "zs-"
BRIDGE_NS = "zs-br"
BRIDGE = "zsbr0"
HOST_LINK = "zs-ctl"
NODE_IFACE = "zs0"
LOCAL_HOT_SIZE = 512
"""Hot answers per node here: every node learns its set from its engine at start, on 2 shared CPUs."""
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
SSH_PORT = 22
BASHRC = Path("~root/.bashrc").expanduser()
# `ip netns exec` gives sshd a mount namespace of its own: an empty root ~/.bashrc there
# keeps the controller's interactive shell set-up (pyenv, say: 0.3 s a command) out of
# every Ansible task, as on a fresh host; the rest of the filesystem stays shared.
_SSHD_START = '[ -f "$2" ] && mount --bind "$1" "$2" 2>/dev/null; exec "$3" -f "$4" -E "$5"'
ENTRIES = ("ssh", "sshd", "hosts", INVENTORY, TSIG_KEY)

Progress = Callable[[str], None]


@dataclass
class HostStatus:
    name: str
    role: str
    address: str
    netns: bool
    sshd: bool
    ssh_port: bool
    dns_port: bool


@dataclass
class TestbedStatus:
    """What is running of a testbed; ``state`` is absent, building, failed, up or degraded."""

    __test__ = False

    workdir: Path
    state: str
    inventory: Path | None = None
    hosts: list[HostStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.state == "up" and all(h.netns and h.sshd and h.ssh_port for h in self.hosts)


@dataclass
class Testbed:
    """A testbed that is up: where its inventory and keys are, how long it took."""

    __test__ = False

    workdir: Path
    layout: Layout
    inventory_path: Path
    inventory: dict[str, Any]
    seconds: float


@dataclass
class DownReport:
    namespaces: list[str]
    links: list[str]
    processes: int
    files: list[str]
    seconds: float


def _state_path(workdir: Path) -> Path:
    return workdir / STATE


def _load_state(workdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path(workdir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise TestbedError(f"{_state_path(workdir)}: unreadable testbed state: {exc}") from None
    if data.get("format") != FORMAT:
        raise TestbedError(f"{_state_path(workdir)}: not a zoneslice testbed state")
    return data


def _save_state(workdir: Path, state: dict[str, Any]) -> None:
    tmp = _state_path(workdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, _state_path(workdir))


def _sshd_config(workdir: Path, host: str, address: str) -> str:
    ssh, run = workdir / "ssh", workdir / "sshd"
    return "\n".join(
        [
            f"ListenAddress {address}:{SSH_PORT}",
            f"HostKey {ssh}/ssh_host_ed25519_key",
            f"PidFile {run}/{host}.pid",
            f"AuthorizedKeysFile {ssh}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 64:30:128",
            "MaxSessions 64",
            "LogLevel INFO",
            f"Subsystem sftp {SFTP_SERVER}",
            "",
        ]
    )


def _wait_tcp(address: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if netns._alive(pid) else None


def control_dir(wd: Path) -> Path:
    """Where Ansible's SSH control sockets go: a short path, since a socket path must fit in
    108 bytes (with the random suffix ssh adds) and a workdir can be deep."""
    return Path(tempfile.gettempdir()) / f"zs-cp-{hashlib.sha1(str(wd).encode()).hexdigest()[:12]}"


def ssh_command(workdir: str | os.PathLike[str], address: str, *command: str) -> list[str]:
    """The ssh command line that reaches a testbed host as root (for tests and humans)."""
    ssh = Path(workdir) / "ssh"
    return [
        "ssh", "-i", str(ssh / "id_ed25519"), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", f"root@{address}", *command,
    ]  # fmt: skip


def testbed_up(
    servers: int,
    parts: int,
    workdir: str | os.PathLike[str],
    *,
    primary: str | None = None,
    loadgen: int = 1,
    manifest: str | os.PathLike[str] | None = None,
    whole_manifest: str | os.PathLike[str] | None = None,
    secondaries: bool = False,
    xdp: bool = False,
    sshd: str = SSHD,
    cleanup_on_failure: bool = True,
    progress: Progress | None = None,
) -> Testbed:
    """Build the layout as namespaces reached over SSH; write ``WORKDIR/inventory.yml``.

    ``secondaries`` and ``xdp`` go to the inventory (:func:`make_inventory`); XDP
    runs in generic mode here, since the bridge side of each veth has no XDP
    program to receive native XDP_TX frames.

    :raises TestbedError: when it cannot; what was built is removed again unless
        ``cleanup_on_failure`` is false (then ``testbed_down`` removes it).
    """
    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    wd = Path(workdir).resolve()
    netns.require_root()
    netns.require_tools(netns.IP, "ssh", "ssh-keygen")
    layout = make_layout(servers, parts, primary, loadgen, manifest)

    existing = _load_state(wd) if wd.exists() else None
    if existing is not None:
        raise TestbedError(
            f"{wd} holds a testbed ({existing.get('status')}): run `zoneslice testbed down` first"
        )
    leftovers = [e for e in ENTRIES if (wd / e).exists()]
    if leftovers:
        raise TestbedError(f"{wd} already has {', '.join(leftovers)}: use an empty directory")
    names = {h.name: f"{PREFIX}{h.name}" for h in layout.hosts}
    taken = sorted(n for n in [BRIDGE_NS, *names.values()] if netns.netns_exists(n))
    if taken or netns.link_exists(HOST_LINK):
        raise TestbedError(
            f"{', '.join(taken + ([HOST_LINK] if netns.link_exists(HOST_LINK) else []))} "
            "already exist: another testbed is up (zoneslice testbed down --workdir ...)"
        )
    conflicts = netns.route_conflicts(NETWORK)
    if conflicts:
        raise TestbedError(f"{NETWORK} is already in use on this host: {'; '.join(conflicts)}")

    created_wd = not wd.exists()
    wd.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "format": FORMAT,
        "status": "building",
        "workdir": str(wd),
        "created_workdir": created_wd,
        "created_privsep": False,
        "servers": servers,
        "parts": parts,
        "primary": layout.primary,
        "loadgen": loadgen,
        "namespaces": [],
        "host_links": [],
        "files": [],
        "sshd_pids": {},
        "hosts": {
            h.name: {"netns": names[h.name], "address": h.address, "role": h.role}
            for h in layout.hosts
        },
    }
    _save_state(wd, state)
    try:
        _build(wd, state, layout, names, sshd, say)
        inv = _write_inventory(
            wd, state, layout, whole_manifest, secondaries=secondaries, xdp=xdp
        )
        state["status"] = "up"
        state["seconds_up"] = round(time.monotonic() - t0, 3)
        _save_state(wd, state)
    except BaseException as exc:
        state["status"] = "failed"
        state["error"] = str(exc)
        _save_state(wd, state)
        if cleanup_on_failure:
            say("up failed: removing what was built")
            try:
                testbed_down(wd)
            except TestbedError as down_exc:
                raise TestbedError(f"{exc}; and down failed too: {down_exc}") from exc
        if isinstance(exc, TestbedError):
            raise
        if isinstance(exc, Exception):
            raise TestbedError(f"testbed up failed: {exc}") from exc
        raise
    return Testbed(wd, layout, wd / INVENTORY, inv, time.monotonic() - t0)


def _record(wd: Path, state: dict[str, Any], key: str, value: str) -> None:
    if value not in state[key]:
        state[key].append(value)
        _save_state(wd, state)


def _build(
    wd: Path, state: dict[str, Any], layout: Layout, names: dict[str, str], sshd: str,
    say: Progress,
) -> None:
    for entry in ("ssh", "sshd", "hosts"):
        _record(wd, state, "files", entry)
        (wd / entry).mkdir(mode=0o700)
    cp = control_dir(wd)
    state["control_dir"] = str(cp)
    _save_state(wd, state)
    cp.mkdir(mode=0o700, exist_ok=True)
    ssh = wd / "ssh"
    say("generating SSH keys")
    for key in ("id_ed25519", "ssh_host_ed25519_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"zoneslice-testbed-{key}",
             "-f", str(ssh / key)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
    (ssh / "empty").write_text("")

    say(f"creating {len(names) + 1} namespaces")
    for ns in [BRIDGE_NS, *names.values()]:
        _record(wd, state, "namespaces", ns)
    _record(wd, state, "host_links", HOST_LINK)
    _batch(None, [f"netns add {ns}" for ns in [BRIDGE_NS, *names.values()]])
    bridge = [
        f"link add {BRIDGE} type bridge",
        f"link set {BRIDGE} up",
        "link set lo up",
    ]
    for i, h in enumerate(layout.hosts):
        bridge += [
            f"link add v{i} type veth peer name {NODE_IFACE} netns {names[h.name]}",
            f"link set v{i} master {BRIDGE} up",
        ]
    _batch(BRIDGE_NS, bridge)
    for h in layout.hosts:
        _batch(
            names[h.name],
            [
                "link set lo up",
                f"addr add {h.address}/{NETWORK.prefixlen} dev {NODE_IFACE}",
                f"link set {NODE_IFACE} up",
            ],
        )
    netns.ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", "ctl", "netns", BRIDGE_NS)
    disable_v6 = Path(f"/proc/sys/net/ipv6/conf/{HOST_LINK}/disable_ipv6")
    if disable_v6.exists():
        disable_v6.write_text("1\n")
    netns.ip("addr", "add", f"{CONTROLLER}/{NETWORK.prefixlen}", "dev", HOST_LINK)
    netns.ip("link", "set", HOST_LINK, "up")
    netns.ip("link", "set", "ctl", "master", BRIDGE, "up", ns=BRIDGE_NS)
    _full_checksums([(None, HOST_LINK)] + [(names[h.name], NODE_IFACE) for h in layout.hosts])

    if not PRIVSEP_DIR.exists():
        state["created_privsep"] = True
        _save_state(wd, state)
        PRIVSEP_DIR.mkdir(mode=0o755)
    say(f"starting {len(layout.hosts)} sshd")
    run = wd / "sshd"
    for h in layout.hosts:
        conf = run / f"{h.name}.conf"
        conf.write_text(_sshd_config(wd, h.name, h.address))
        proc = subprocess.run(
            [netns.IP, "netns", "exec", names[h.name], "/bin/sh", "-c", _SSHD_START, "sshd",
             str(ssh / "empty"), str(BASHRC), sshd, str(conf), str(run / f"{h.name}.log")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TestbedError(
                f"sshd for {h.name} did not start (exit {proc.returncode}): "
                f"{(proc.stderr or _tail(run / f'{h.name}.log')).strip()}"
            )
    deadline = time.monotonic() + 15
    for h in layout.hosts:
        pidfile = run / f"{h.name}.pid"
        while _pid_alive(pidfile) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = _pid_alive(pidfile)
        if pid is None or not _wait_tcp(h.address, SSH_PORT, deadline):
            raise TestbedError(
                f"sshd for {h.name} is not listening on {h.address}:{SSH_PORT}: "
                f"{_tail(run / f'{h.name}.log').strip() or 'no log'}"
            )
        state["sshd_pids"][h.name] = pid
    _save_state(wd, state)
    say("checking SSH logins")
    _check_logins(wd, [h.address for h in layout.hosts])


def _batch(ns: str | None, commands: list[str]) -> None:
    cmd = [netns.IP] + (["-n", ns] if ns else []) + ["-batch", "-"]
    proc = subprocess.run(
        cmd, input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _full_checksums(links: list[tuple[str | None, str]]) -> None:
    """Turn TX checksum offload off on the sending ends, as a real NIC's wire would carry.

    A veth otherwise hands on UDP packets whose checksum is only partial, and the XDP
    program (rightly) passes those up instead of answering them.
    """
    for ns, dev in links:
        prefix = [netns.IP, "netns", "exec", ns] if ns else []
        r = subprocess.run(
            [*prefix, "ethtool", "-K", dev, "tx", "off"], capture_output=True, text=True, timeout=30
        )
        if r.returncode != 0:
            raise TestbedError(f"ethtool -K {dev} tx off{f' in {ns}' if ns else ''}: {r.stderr.strip()}")


def _check_logins(wd: Path, addresses: list[str]) -> None:
    procs = {
        a: subprocess.Popen(
            ssh_command(wd, a, "true"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for a in addresses
    }
    failed = []
    for a, p in procs.items():
        try:
            _, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            failed.append(f"{a}: {err.strip() or f'exit {p.returncode}'}")
    if failed:
        raise TestbedError("SSH login failed: " + "; ".join(failed))


def _write_inventory(
    wd: Path,
    state: dict[str, Any],
    layout: Layout,
    whole_manifest: str | os.PathLike[str] | None,
    *,
    secondaries: bool = False,
    xdp: bool = False,
) -> dict[str, Any]:
    _record(wd, state, "files", TSIG_KEY)
    key = write_tsig_key(wd / TSIG_KEY)
    inv = make_inventory(
        layout,
        root_base=wd / "hosts",
        iface=NODE_IFACE,
        tsig_key_file=key,
        whole_manifest=whole_manifest,
        secondaries=secondaries,
        xdp=xdp,
        xdp_mode="generic",
        hot_size=LOCAL_HOT_SIZE,
        extra_vars=connection_vars(wd),
    )
    _record(wd, state, "files", INVENTORY)
    write_inventory(inv, wd / INVENTORY)
    return inv


def connection_vars(wd: Path) -> dict[str, Any]:
    """How Ansible on this machine reaches the testbed hosts, and what "installed" means there."""
    return {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(wd / "ssh" / "id_ed25519"),
        "ansible_ssh_common_args": (
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        ),
        "ansible_control_path_dir": str(control_dir(wd)),
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_remote_tmp": "{{ zoneslice_root }}/.ansible-tmp",
        "zoneslice_venv": sys.prefix,
        "zoneslice_install_packages": False,
        "zoneslice_service_manager": "supervisor",
        "zoneslice_testbed": True,
        "zoneslice_engine_start_timeout": 240,
    }


def testbed_status(workdir: str | os.PathLike[str]) -> TestbedStatus:
    """Which namespaces, sshd and listening ports of the testbed in ``workdir`` are there."""
    wd = Path(workdir).resolve()
    state = _load_state(wd)
    if state is None:
        return TestbedStatus(wd, "absent")
    hosts = []
    for name, h in sorted(state["hosts"].items()):
        up = netns.netns_exists(h["netns"])
        hosts.append(
            HostStatus(
                name=name,
                role=h["role"],
                address=h["address"],
                netns=up,
                sshd=_pid_alive(wd / "sshd" / f"{name}.pid") is not None,
                ssh_port=up and _tcp_open(h["address"], SSH_PORT),
                dns_port=up and _tcp_open(h["address"], 53),
            )
        )
    status = TestbedStatus(wd, state["status"], wd / INVENTORY, hosts)
    if status.state == "up" and not status.healthy:
        status.state = "degraded"
    return status


def _close_control_masters(cp: Path) -> None:
    if not cp.is_dir():
        return
    for sock in cp.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "zs-testbed"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    needle = str(cp).encode()
    stray = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "cmdline").read_bytes():
                    stray.append(int(d.name))
            except OSError:
                pass
    netns.kill_pids(stray, timeout=2.0)


def testbed_down(workdir: str | os.PathLike[str], progress: Progress | None = None) -> DownReport:
    """Remove every namespace, link, process and file the testbed in ``workdir`` created.

    Idempotent: a workdir without a testbed is left as it is.

    :raises TestbedError: when something could not be removed (state.json is then
        kept so that another ``down`` can retry).
    """
    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    wd = Path(workdir).resolve()
    state = _load_state(wd)
    if state is None:
        return DownReport([], [], 0, [], 0.0)
    netns.require_root()
    say("closing SSH connections")
    cp = Path(state.get("control_dir") or control_dir(wd))
    _close_control_masters(cp)

    namespaces = [ns for ns in state["namespaces"] if ns.startswith(PREFIX)]
    pids = sorted({p for ns in namespaces for p in netns.netns_pids(ns)})
    pids += [
        p for p in state.get("sshd_pids", {}).values()
        if p not in pids and netns._alive(p) and _cmdline_mentions(p, str(wd / "sshd"))
    ]  # fmt: skip
    say(f"stopping {len(pids)} processes")
    stubborn = netns.kill_pids(pids)

    say(f"removing {len(namespaces)} namespaces")
    removed_links = []
    for link in state["host_links"]:
        if link.startswith(PREFIX) and netns.link_exists(link):
            netns.ip("link", "del", link, check=False)
            removed_links.append(link)
    removed_ns = [ns for ns in namespaces if netns.netns_exists(ns)]
    for ns in removed_ns:
        netns.ip("netns", "del", ns, check=False)

    removed_files = []
    for entry in state["files"]:
        p = (wd / entry).resolve()
        if p.parent != wd or not (p.exists() or p.is_symlink()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed_files.append(entry)
    if cp.name.startswith("zs-cp-") and cp.is_dir():
        shutil.rmtree(cp)
        removed_files.append(str(cp))
    if state.get("created_privsep") and PRIVSEP_DIR.is_dir() and not _sshd_running():
        shutil.rmtree(PRIVSEP_DIR, ignore_errors=True)

    left = [ns for ns in namespaces if netns.netns_exists(ns)]
    left += [link for link in state["host_links"] if netns.link_exists(link)]
    left += [f"pid {p}" for p in stubborn]
    if left:
        raise TestbedError(f"could not remove: {', '.join(left)} (state kept in {wd / STATE})")
    _state_path(wd).unlink(missing_ok=True)
    if state.get("created_workdir"):
        try:
            wd.rmdir()
        except OSError:
            pass
    return DownReport(removed_ns, removed_links, len(pids), removed_files, time.monotonic() - t0)


def _cmdline_mentions(pid: int, needle: str) -> bool:
    """Guards against killing a recycled pid: ours name a file of the testbed."""
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _sshd_running() -> bool:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "sshd" and netns._alive(int(d.name)):
                    return True
            except OSError:
                pass
    return False


def status_dict(status: TestbedStatus) -> dict[str, Any]:
    d = asdict(status)
    d["workdir"] = str(status.workdir)
    d["inventory"] = str(status.inventory) if status.inventory else None
    return d
