"""The node's writer: the one process per server that changes its database.

A server's workers only read. Every message that may change the data (UPDATE,
and NOTIFY, which makes a secondary fetch) is handed by the worker that got it
to the node's single writer process, which runs a :class:`NodeRole`: the
primary applies UPDATEs (group commit) and notifies its secondaries; a
secondary forwards UPDATEs to its primary and applies IXFR/AXFR. One writer
per database keeps commits ordered and lets concurrent updates share an fsync.

After each commit, and before any answer that depends on it is released, the
role calls every :data:`CommitHook` (cache and XDP map coherence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dns.name

CommitHook = Callable[[set[dns.name.Name] | None], None]
"""``hook(changed_owners)`` in the writer process after a commit; None means everything changed."""


@dataclass
class NodeContext:
    """What the server gives the role in the writer process (after the fork)."""

    slice_db: Path
    stats_dir: Path | None = None
    commit_hooks: list[CommitHook] = field(default_factory=list)

    def committed(self, changed: set[dns.name.Name] | None) -> None:
        """Run the commit hooks; call after the commit, before the acks."""
        for hook in self.commit_hooks:
            hook(changed)


class NodeRole(Protocol):
    """Primary or secondary behaviour, run in the writer process's asyncio loop."""

    counters: dict[str, Any]

    async def start(self, ctx: NodeContext) -> None: ...

    async def handle(self, wire: bytes, client: tuple[str, int], tcp: bool) -> bytes | None:
        """Answer an UPDATE or NOTIFY a worker passed on (None: send nothing)."""
        ...

    async def stop(self) -> None: ...
