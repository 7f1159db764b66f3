"""Provisioning: one ``ansible_runner.run`` of ``playbooks/site.yml``, observed through callbacks.

The raw Ansible events are turned into :class:`DeployEvent` (host, task,
outcome) for whoever shows progress; the full Ansible output is written to a
log file, and :class:`DeployResult` carries per-host counts and the first
failing host and task.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoneslice.errors import DeployError

PLAYBOOK_DIR = Path(__file__).resolve().parents[2] / "playbooks"
PLAYBOOK = "site.yml"

TASK, OK, CHANGED, FAILED, UNREACHABLE, SKIPPED, RESCUED = (
    "task", "ok", "changed", "failed", "unreachable", "skipped", "rescued"
)  # fmt: skip
_OUTCOMES = {
    "runner_on_ok": OK,
    "runner_on_failed": FAILED,
    "runner_on_unreachable": UNREACHABLE,
    "runner_on_skipped": SKIPPED,
}


@dataclass(frozen=True)
class DeployEvent:
    """One step of one host: ``kind`` is task (started), ok, changed, failed, unreachable
    or skipped; ``message`` says why for failures."""

    kind: str
    host: str
    task: str
    message: str = ""
    ignored: bool = False


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    task: str = ""


@dataclass
class DeployResult:
    """What a deploy did to each host; ``failure`` is ``(host, task, message)`` or None."""

    rc: int
    status: str
    hosts: dict[str, HostStats]
    log_path: Path
    private_data_dir: Path
    seconds: float
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful" and not self.failures

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def failure(self) -> tuple[str, str, str] | None:
        return self.failures[0] if self.failures else None


EventHandler = Callable[[DeployEvent], None]


def _message(res: Mapping[str, Any]) -> str:
    parts = [str(res.get("msg", "")).strip()]
    for key in ("stderr", "module_stderr", "stdout"):
        text = str(res.get(key) or "").strip()
        if text and text not in parts[0]:
            parts.append(text.splitlines()[-1] if key == "module_stderr" else text)
            break
    return " | ".join(p for p in parts if p) or "failed"


class _Collector:
    """Turns ansible-runner events into DeployEvents and per-host counts."""

    def __init__(self, handler: EventHandler | None) -> None:
        self.handler = handler
        self.hosts: dict[str, HostStats] = {}
        self.failures: list[tuple[str, str, str]] = []

    def _emit(self, ev: DeployEvent) -> None:
        if self.handler is not None:
            self.handler(ev)

    def __call__(self, event: Mapping[str, Any]) -> bool:
        data = event.get("event_data") or {}
        name = event.get("event", "")
        host = data.get("host") or ""
        task = str(data.get("task") or "").strip()
        if not host:
            return True
        stats = self.hosts.setdefault(host, HostStats())
        if name == "runner_on_start":
            stats.task = task
            self._emit(DeployEvent(TASK, host, task))
            return True
        kind = _OUTCOMES.get(name)
        if kind is None:
            return True
        res = data.get("res") or {}
        ignored = bool(data.get("ignore_errors"))
        message = ""
        if kind == OK:
            stats.ok += 1
            if res.get("changed"):
                stats.changed += 1
                kind = CHANGED
        elif kind == SKIPPED:
            stats.skipped += 1
        elif kind == UNREACHABLE:
            stats.unreachable += 1
            message = _message(res)
            self.failures.append((host, task, message))
        elif kind == FAILED:
            message = _message(res)
            if ignored:
                stats.ok += 1
            else:
                stats.failed += 1
                self.failures.append((host, task, message))
        self._emit(DeployEvent(kind, host, task, message, ignored))
        return True

    def apply_stats(self, stats: Mapping[str, Mapping[str, int]] | None) -> None:
        """Ansible's own recap wins over the running counts (it knows about rescues); a host
        stops at its first unrescued failure, so its last failure is the one reported."""
        if not stats:
            return
        keys = {
            "ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
            "skipped": "skipped", "rescued": "rescued",
        }  # fmt: skip
        hosts = set().union(*(stats.get(k) or {} for k in keys))
        for host in hosts:
            hs = self.hosts.setdefault(host, HostStats())
            for src, dst in keys.items():
                setattr(hs, dst, int((stats.get(src) or {}).get(host, 0)))
        failed_hosts = {h for h, s in self.hosts.items() if s.failed or s.unreachable}
        last = {f[0]: f for f in self.failures if f[0] in failed_hosts}
        self.failures = [f for f in self.failures if last.get(f[0]) is f]


def _log_error(log_path: Path) -> str:
    """The error Ansible printed when it stopped before running any task (a YAML error, say)."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith(("[ERROR]", "ERROR!")):
            return " | ".join(lines[i : i + 2])
    return " | ".join(lines[-3:])


def deploy(
    inventory: Mapping[str, Any] | str | os.PathLike[str],
    playbook_dir: str | os.PathLike[str] = PLAYBOOK_DIR,
    limit: str | None = None,
    event_handler: EventHandler | None = None,
    *,
    playbook: str = PLAYBOOK,
    private_data_dir: str | os.PathLike[str] | None = None,
    extravars: Mapping[str, Any] | None = None,
    tags: str | None = None,
    forks: int | None = None,
) -> DeployResult:
    """Run ``playbook`` over ``inventory`` (a dict or an inventory file) with ansible-runner.

    ``private_data_dir`` (default: ``deploy/`` beside an inventory file, else a
    directory under the system's temporary directory) keeps ansible-runner's
    artifacts; the full Ansible output is copied to ``deploy.log`` there.

    :raises DeployError: when Ansible cannot be started at all; a failing play is
        reported in the result, not raised.
    """
    import ansible_runner

    t0 = time.monotonic()
    pdir = Path(playbook_dir).resolve()
    if not (pdir / playbook).is_file():
        raise DeployError(f"{pdir / playbook}: no such playbook")
    inv: Any
    if isinstance(inventory, Mapping):
        inv = dict(inventory)
        base = None
    else:
        inv_path = Path(inventory).resolve()
        if not inv_path.is_file():
            raise DeployError(f"{inv_path}: no such inventory")
        inv = str(inv_path)
        base = inv_path.parent / "deploy"
    if private_data_dir is not None:
        priv = Path(private_data_dir).resolve()
    elif base is not None:
        priv = base
    else:
        import tempfile

        priv = Path(tempfile.mkdtemp(prefix="zoneslice-deploy-"))
    priv.mkdir(parents=True, exist_ok=True)
    # ansible-runner reads env/ (extravars, envvars, ...) left by an earlier run when a
    # keyword is not given: stale settings must not leak into this one.
    shutil.rmtree(priv / "env", ignore_errors=True)
    shutil.rmtree(priv / "inventory", ignore_errors=True)

    venv_bin = str(Path(sys.executable).parent)
    envvars = {
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "ANSIBLE_CONFIG": str(pdir / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(priv / "tmp"),
    }
    if shutil.which("ansible-playbook", path=envvars["PATH"]) is None:
        raise DeployError("ansible-playbook not found: install ansible-core (scripts/setup.sh)")

    collector = _Collector(event_handler)
    kwargs: dict[str, Any] = {
        "private_data_dir": str(priv),
        "project_dir": str(pdir),
        "playbook": playbook,
        "inventory": inv,
        "envvars": envvars,
        "event_handler": collector,
        "quiet": True,
        "rotate_artifacts": 5,
        "ident": time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}",
    }
    if limit:
        kwargs["limit"] = limit
    if extravars:
        kwargs["extravars"] = dict(extravars)
    if tags:
        kwargs["tags"] = tags
    if forks:
        kwargs["forks"] = forks
    try:
        runner = ansible_runner.run(**kwargs)
    except Exception as exc:  # ansible-runner raises bare exceptions for set-up problems
        raise DeployError(f"ansible-runner could not start: {exc}") from exc
    collector.apply_stats(runner.stats)

    log_path = priv / "deploy.log"
    stdout = Path(runner.config.artifact_dir) / "stdout"
    log_path.write_bytes(stdout.read_bytes() if stdout.exists() else b"")
    rc = int(runner.rc if runner.rc is not None else -1)
    failures = list(collector.failures)
    if rc != 0 and not failures:
        failures.append(("", "", _log_error(log_path) or f"ansible-playbook exited {rc}"))
    return DeployResult(
        rc=rc,
        status=str(runner.status),
        hosts=dict(sorted(collector.hosts.items())),
        log_path=log_path,
        private_data_dir=priv,
        seconds=time.monotonic() - t0,
        failures=failures,
    )
