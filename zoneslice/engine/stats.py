"""Counters of a running server, readable from another process while it runs.

Each worker process rewrites ``worker-<i>.json`` in the stats directory about
once a second (write to a temporary file, then rename, so a reader never sees
half a file); the parent writes ``server.json`` once at start. ``read_stats``
sums the workers, so ``zoneslice stats`` needs nothing but the directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoneslice.errors import ServeError

SERVER_FILE = "server.json"
WORKER_GLOB = "worker-*.json"
WRITER_FILE = "writer.json"


def worker_file(directory: str | os.PathLike[str], index: int) -> Path:
    return Path(directory) / f"worker-{index}.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic replace, without fsync: these files are advisory and rewritten every second."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def merge(total: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """Add numeric leaves of ``part`` into ``total`` (nested dicts are merged key by key)."""
    for k, v in part.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            total[k] = total.get(k, 0) + v
        elif isinstance(v, Mapping):
            merge(total.setdefault(k, {}), v)
    return total


def read_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-worker and summed counters of the server whose stats directory is ``path``.

    Returns ``{"server": {...}, "workers": [...], "total": {"server": {...}, "responder": {...}}}``
    plus ``"writer"`` (the writer process's and its role's counters) when the node has one.

    :raises ServeError: ``path`` holds no stats.
    """
    d = Path(path)
    if d.is_file():
        d = d.parent
    workers = []
    for f in sorted(d.glob(WORKER_GLOB), key=lambda p: int(p.stem.split("-")[1])):
        try:
            workers.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    server: dict[str, Any] = {}
    try:
        server = json.loads((d / SERVER_FILE).read_text())
    except FileNotFoundError:
        if not workers:
            raise ServeError(f"{d}: no server statistics there") from None
    except (OSError, ValueError) as exc:
        raise ServeError(f"{d}: unreadable server statistics: {exc}") from None
    writer: dict[str, Any] | None = None
    try:
        writer = json.loads((d / WRITER_FILE).read_text())
    except (OSError, ValueError):
        pass
    total: dict[str, Any] = {"server": {}, "responder": {}}
    for w in workers:
        merge(total["server"], w.get("server", {}))
        merge(total["responder"], w.get("responder", {}))
    out = {"server": server, "workers": workers, "total": total}
    if writer is not None:
        out["writer"] = writer
    return out
