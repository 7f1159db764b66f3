"""The engine's network side: UDP and TCP on IPv4 and IPv6, in N worker processes.

The parent binds one set of sockets per worker (``SO_REUSEPORT``, so the
kernel spreads flows over the workers and both cores work), forks the
workers, and then only watches them: it restarts a worker that dies, and on
SIGTERM or SIGINT it signals them, waits and returns. Each worker owns its
own :class:`~zoneslice.engine.query.Responder` (opened after the fork: SQLite
handles must not cross it) and runs one asyncio loop:

- UDP: the socket's readiness callback drains up to ``UDP_BATCH`` datagrams
  with plain ``recvfrom``/``sendto``, so a busy socket costs one loop turn per
  batch, not per packet; the only per-packet Python work is the Responder call.
  (``recvfrom_into`` a preallocated buffer measured no faster: the Responder
  needs ``bytes`` anyway, so the copy only moves.)
- TCP (RFC 7766): 2-byte length framing, any number of pipelined queries per
  connection answered in order, an idle timeout, back-pressure through
  ``drain``; AXFR is streamed from ``Responder.axfr`` message by message.

Every query goes to the Responder, which decides; an exception there becomes
SERVFAIL, never a dead worker. Counters are written to a stats directory (see
:mod:`zoneslice.engine.stats`).

With a ``role`` (primary or secondary, :mod:`zoneslice.engine.node`) the parent
also forks one **writer** process, the only one that changes the database. It
builds the role after the fork and serves a unix stream socket in the stats
directory. Workers hand every UPDATE and NOTIFY (UDP or TCP) to it over one
persistent connection each, requests multiplexed by id, without waiting in
their read loop: concurrent UPDATEs from all workers reach the writer together
and share one commit and fsync. A writer that dies or does not answer within
``WRITER_TIMEOUT`` turns into SERVFAIL for the waiting clients (and the parent
restarts it). A role factory with a ``worker_side()`` method gets one such object
per worker, whose ``prepare(wire, client)`` answers at once or returns the
payload for the writer and a function that turns the writer's reply into the
answer: the primary checks TSIG and signs answers there, on every core. Workers then use a
:class:`~zoneslice.updates.handler.WatchedResponder`, which sees the writer's
commits before the next query.

Each worker moves its objects to the GC's permanent generation once a second
(``gc.freeze``): the answer cache holds hundreds of thousands of long-lived
objects, and a full collection over them stalls the worker for ~0.3 s. Frozen
objects are still freed by reference counting; only reference cycles that
survive a second unreclaimed are kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import gc
import hashlib
import ipaddress
import logging
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zoneslice.engine import stats as stats_mod
from zoneslice.errors import ServeError, ZonesliceError
from zoneslice.updates.handler import question_end, servfail

log = logging.getLogger("zoneslice.serve")

UDP_BATCH = 64
UDP_RCVBUF = 4 << 20
TCP_IDLE = 10.0
TCP_MAX_CLIENTS = 1024
TCP_BACKLOG = 1024
WRITE_HIGH = 256 << 10
STATS_EVERY = 1.0
READY_TIMEOUT = 120.0
STOP_GRACE = 5.0
RESTARTS_WINDOW = (5, 30.0)
WRITER_TIMEOUT = 20.0
WRITER_SOCKET = "writer.sock"
WRITER_STATS = stats_mod.WRITER_FILE
WRITER_INDEX = -1
WRITER_SWITCH_INTERVAL = 0.0002
"""GIL hand-off interval in the writer: its commit thread makes many short SQLite calls, each
of which would otherwise wait up to the default 5 ms for the loop thread to let go."""
OP_QUERY = 0
OP_NOTIFY = 4
OP_UPDATE = 5
T_AXFR = 252


class ResponderLike(Protocol):
    counters: dict[str, Any]

    def respond(
        self, wire: bytes, *, tcp: bool, client: tuple[Any, ...] | None = None
    ) -> bytes | None: ...

    def axfr(self, query_wire: bytes, client: Any) -> Iterator[bytes] | bytes: ...


ResponderFactory = Callable[..., ResponderLike]
"""``factory(slice_db: Path, *, axfr_allowed: Callable[[str], bool]) -> Responder``."""

Source = str | os.PathLike[str] | tuple[Any, int]


@dataclass
class ServerInfo:
    """What ``on_ready`` receives once every worker answers."""

    slice_db: Path
    listen: list[tuple[str, int]]
    pids: list[int]
    stats_path: Path
    meta: dict[str, str] = field(default_factory=dict)
    writer_pid: int | None = None


# ------------------------------------------------------------------ configuration


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT``, ``V6`` or ``ADDR`` (port 53) -> (addr, port)."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ServeError(f"bad listen address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        addr, p = text.split(":")
        port = _port(p, text)
    else:
        addr = text
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ServeError(f"bad listen address {text!r}: {addr!r} is not an IP address") from None
    return addr, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ServeError(f"bad port in listen address {whole!r}")
    return int(text)


def resolve_source(source: Source) -> Path:
    """The slice database of ``source``: a path, or (manifest path | Manifest, slice index)."""
    if isinstance(source, tuple):
        from zoneslice.manifest import Manifest, load_manifest

        manifest, index = source
        m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        return m.slice_path(int(index))
    return Path(source)


def _slice_meta(path: Path) -> dict[str, str]:
    from zoneslice.store.db import connect_readonly, read_meta

    conn = connect_readonly(path)
    try:
        return read_meta(conn)
    finally:
        conn.close()


def acl(allow: Iterable[str] | None) -> Callable[[str], bool]:
    """Address predicate for AXFR from networks/addresses (``None`` or empty: nobody)."""
    nets = []
    for a in allow or ():
        try:
            nets.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            raise ServeError(f"bad AXFR allow entry {a!r}") from None

    def allowed(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in n for n in nets)

    return allowed


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ------------------------------------------------------------------ sockets


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _new_socket(addr: str, kind: socket.SocketKind) -> socket.socket:
    s = socket.socket(_family(addr), kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if s.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            force = getattr(socket, "SO_RCVBUFFORCE", 33)
            try:
                s.setsockopt(socket.SOL_SOCKET, force, UDP_RCVBUF)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _bind_pair(addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on the same (addr, port); port 0 picks one free for both."""
    for _ in range(50):
        tcp = _new_socket(addr, socket.SOCK_STREAM)
        udp = _new_socket(addr, socket.SOCK_DGRAM)
        try:
            tcp.bind((addr, port))
            udp.bind((addr, tcp.getsockname()[1]))
            return udp, tcp
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            raise ServeError(f"cannot listen on {_show(addr, port)}: {exc.strerror}") from None
    raise ServeError(f"no port free for both UDP and TCP on {addr}")


def _bind_all(
    listen: Sequence[tuple[str, int]],
) -> tuple[list[socket.socket], list[tuple[str, int]]]:
    socks: list[socket.socket] = []
    bound: list[tuple[str, int]] = []
    try:
        for addr, port in listen:
            udp, tcp = _bind_pair(addr, port)
            socks += [udp, tcp]
            bound.append((addr, udp.getsockname()[1]))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks, bound


def _show(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# ------------------------------------------------------------------ wire helpers


def is_axfr(wire: bytes) -> bool:
    """A standard query for one question of type AXFR."""
    if len(wire) < 17 or (wire[2] >> 3) & 0xF != OP_QUERY or wire[2] & 0x80:
        return False
    end = question_end(wire)
    return end > 0 and wire[end - 4] == 0 and wire[end - 3] in (T_AXFR, 251)  # 251: IXFR (helper A)


def for_writer(wire: bytes) -> bool:
    """A request (not a response) with opcode NOTIFY or UPDATE: the writer's business."""
    return len(wire) >= 12 and not wire[2] & 0x80 and (wire[2] >> 3) & 0xF in (OP_NOTIFY, OP_UPDATE)


# ------------------------------------------------------------------ writer

_REQ = struct.Struct("!IIBBH")
"""Worker -> writer frame head: length of the rest, request id, tcp, len(addr), port."""
_RSP = struct.Struct("!IIB")
"""Writer -> worker frame head: length of the rest, request id, whether an answer follows."""
CONNECT_PATIENCE = 3.0


def _request_frame(ident: int, wire: bytes, client: Any, tcp: bool) -> bytes:
    addr, port = (str(client[0]), int(client[1])) if client else ("", 0)
    a = addr.encode()[:255]
    return _REQ.pack(8 + len(a) + len(wire), ident, bool(tcp), len(a), port) + a + wire


async def _frames(reader: asyncio.StreamReader, head: struct.Struct) -> Any:
    """``(field 2, fields 3.., rest)`` of each frame ``head`` + body on ``reader``, reading
    whatever has arrived at once (one wake-up for many frames, not two awaits per frame)."""
    buf = b""
    hsize = head.size
    unpack = head.unpack_from
    while True:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise asyncio.IncompleteReadError(buf, None)
        buf = buf + chunk if buf else chunk
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            end = pos + 4 + size
            if end > n:
                break
            fields = unpack(buf, pos)
            yield fields[1], fields[2:], buf[pos + hsize : end]
            pos = end
        buf = buf[pos:]


class _WriterLink:
    """A worker's persistent connection to the writer; requests multiplexed by id.

    ``ask`` only waits on its own future, so the worker's loop keeps reading
    while the writer groups what every worker sent.
    """

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = str(path)
        self.timeout = WRITER_TIMEOUT if timeout is None else timeout
        self.pending: dict[int, asyncio.Future[bytes | None]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 0
        self._out: dict[asyncio.StreamWriter, list[bytes]] = {}
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._lock: asyncio.Lock | None = None
        self._reader: asyncio.Task[None] | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.writer is not None and not self.writer.is_closing():
                return self.writer
            deadline = time.monotonic() + CONNECT_PATIENCE
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            self.writer = writer
            self._reader = asyncio.get_running_loop().create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = self.pending
        try:
            async for ident, has, body in _frames(reader, _RSP):
                fut = pending.pop(ident, None)
                if fut is not None and not fut.done():
                    fut.set_result(body if has[0] else None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self.writer is writer:
                self.writer = None
            writer.transport.abort()
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the writer went away"))
            pending.clear()

    async def ask(self, wire: bytes, client: Any, tcp: bool) -> bytes | None:
        async with asyncio.timeout(self.timeout):
            writer = await self._connect()
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF
            ident = self.next_id
            fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self.pending[ident] = fut
            try:
                queued = self._out.setdefault(writer, [])
                queued.append(_request_frame(ident, wire, client, tcp))
                if len(queued) == 1:
                    asyncio.get_running_loop().call_soon(self._flush, writer)
                return await fut
            finally:
                self.pending.pop(ident, None)

    def send_nowait(self, wire: bytes, client: Any, tcp: bool) -> asyncio.Future[bytes | None] | None:
        """The future answer to ``wire`` without a task or a timer per request (a sweep once
        a second fails the late ones); None when not connected yet (use :meth:`ask`)."""
        writer = self.writer
        if writer is None or writer.is_closing():
            return None
        loop = asyncio.get_running_loop()
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        ident = self.next_id
        fut: asyncio.Future[bytes | None] = loop.create_future()
        self.pending[ident] = fut
        self._deadlines.append((loop.time() + self.timeout, ident))
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)
        queued = self._out.setdefault(writer, [])
        queued.append(_request_frame(ident, wire, client, tcp))
        if len(queued) == 1:
            loop.call_soon(self._flush, writer)
        return fut

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            fut = self.pending.pop(dl.popleft()[1], None)
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError("the writer did not answer"))
        self._sweeper = loop.call_later(1.0, self._sweep) if dl else None

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        """One write (one syscall) for every request made in this turn of the loop."""
        queued = self._out.pop(writer, [])
        if queued and not writer.is_closing():
            writer.write(b"".join(queued))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.writer is not None:
            self.writer.transport.abort()
        if self._reader is not None:
            self._reader.cancel()


def _node_context(slice_db: Path, stats_dir: Path | None, hooks: Sequence[Any]) -> Any:
    """The role's context; its first hook bumps the commit signal the workers watch."""
    from zoneslice.engine.node import NodeContext
    from zoneslice.updates.queue import CommitSignal

    signal_file = CommitSignal(slice_db)

    def bump(_names: object) -> None:
        signal_file.bump()

    return NodeContext(slice_db, stats_dir, [bump, *hooks])


class _InlineWriter:
    """``workers=0``: the role runs in the serving process's own loop."""

    def __init__(
        self,
        role: Callable[[], Any],
        slice_db: Path,
        stats_dir: Path | None,
        hooks: Sequence[Any],
        timeout: float | None = None,
    ) -> None:
        self.factory = role
        self.slice_db = slice_db
        self.stats_dir = stats_dir
        self.hooks = hooks
        self.timeout = WRITER_TIMEOUT if timeout is None else timeout
        self.role: Any = None

    async def start(self) -> None:
        self.role = self.factory()
        await self.role.start(_node_context(self.slice_db, self.stats_dir, self.hooks))

    async def ask(self, wire: bytes, client: Any, tcp: bool) -> bytes | None:
        async with asyncio.timeout(self.timeout):
            return await self.role.handle(wire, client, tcp)

    async def stop(self) -> None:
        if self.role is not None:
            await self.role.stop()


class _Writer:
    """The writer process: the role behind a unix socket that every worker connects to."""

    def __init__(
        self,
        role: Callable[[], Any],
        slice_db: Path,
        stats_dir: Path,
        hooks: Sequence[Any],
        sock_path: str,
    ) -> None:
        self.factory = role
        self.slice_db = slice_db
        self.stats_dir = stats_dir
        self.hooks = hooks
        self.sock_path = sock_path
        self.role: Any = None
        self.started = time.time()
        self.c = {"connections": 0, "requests": 0, "answers": 0, "errors": 0, "handle_us": 0}
        self.tasks: set[asyncio.Task[None]] = set()
        self.futures: set[asyncio.Future[bytes | None]] = set()
        self.conns: set[asyncio.StreamWriter] = set()
        self._out: dict[asyncio.StreamWriter, list[bytes]] = {}
        self._last_error_log = 0.0

    async def _one(self, out: asyncio.StreamWriter, ident: int, wire: bytes, client: Any,
                   tcp: bool) -> None:
        t0 = time.monotonic()
        try:
            answer = await self.role.handle(wire, client, tcp)
            self.c["handle_us"] += int(1e6 * (time.monotonic() - t0))
        except Exception:
            self.c["errors"] += 1
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.error("writer: role failed on %s: %s", wire[:64].hex(),
                          traceback.format_exc(limit=4).strip().replace("\n", " | "))
            answer = servfail(wire)
        self._reply(out, ident, answer)

    def _submitted(self, out: asyncio.StreamWriter, ident: int, wire: bytes,
                   fut: asyncio.Future[bytes | None]) -> None:
        """The answer of a request the role took with ``submit`` (no task per message)."""
        self.futures.discard(fut)
        try:
            answer = fut.result()
        except Exception:
            self.c["errors"] += 1
            answer = servfail(wire)
        self._reply(out, ident, answer)

    def _reply(self, out: asyncio.StreamWriter, ident: int, answer: bytes | None) -> None:
        if out.is_closing():
            return
        body = answer or b""
        queued = self._out.setdefault(out, [])
        queued.append(_RSP.pack(5 + len(body), ident, answer is not None) + body)
        if len(queued) == 1:
            asyncio.get_running_loop().call_soon(self._flush, out)
        self.c["answers"] += 1

    def _flush(self, out: asyncio.StreamWriter) -> None:
        """One write per worker connection for all the answers of this turn of the loop."""
        queued = self._out.pop(out, [])
        if queued and not out.is_closing():
            out.write(b"".join(queued))

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.c["connections"] += 1
        self.conns.add(writer)
        loop = asyncio.get_running_loop()
        submit = getattr(self.role, "submit", None)
        try:
            async for ident, (tcp, alen, port), body in _frames(reader, _REQ):
                self.c["requests"] += 1
                wire = body[alen:]
                fut = submit(wire) if submit is not None else None
                if fut is not None:
                    self.futures.add(fut)
                    fut.add_done_callback(functools.partial(self._submitted, writer, ident, wire))
                    continue
                addr = body[:alen].decode(errors="replace")
                task = loop.create_task(self._one(writer, ident, wire, (addr, port), bool(tcp)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.conns.discard(writer)
            writer.transport.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            "cpu_s": round(time.process_time(), 3),
            "writer": dict(self.c),
            "role": _plain(getattr(self.role, "counters", {}) or {}),
        }

    def write_stats(self) -> None:
        try:
            stats_mod.write_json(self.stats_dir / WRITER_STATS, self.snapshot())
        except OSError as exc:
            log.warning("writer: cannot write stats: %s", exc)

    async def run(self, ready: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        self.role = self.factory()
        await self.role.start(_node_context(self.slice_db, self.stats_dir, self.hooks))
        with contextlib.suppress(FileNotFoundError):
            _unlink_socket(self.sock_path)
        server = await asyncio.start_unix_server(self._conn, path=self.sock_path,
                                                 backlog=TCP_BACKLOG)

        def tick() -> None:
            _collect_and_freeze()
            self.write_stats()
            handle[0] = loop.call_later(STATS_EVERY, tick)

        handle = [loop.call_later(STATS_EVERY, tick)]
        _collect_and_freeze()
        self.write_stats()
        ready()
        await stopping.wait()
        handle[0].cancel()
        server.close()
        if self.tasks or self.futures:
            await asyncio.wait(list(self.tasks) + list(self.futures), timeout=STOP_GRACE - 1.5)
        for w in list(self.conns):
            w.transport.close()
        await self.role.stop()
        self.write_stats()
        with contextlib.suppress(FileNotFoundError):
            _unlink_socket(self.sock_path)


def _collect_and_freeze() -> None:
    """Collect the cycles made since the last call, then move the survivors to the GC's
    permanent generation: the writer's long-lived objects (parsed names, projection
    state, the role's tables) are then not traversed again by every collection, which
    cost a third of its CPU per update."""
    gc.collect()
    gc.freeze()


def writer_socket_address(stats_dir: Path) -> str:
    """``STATS/writer.sock``, or an abstract socket when that path is too long for AF_UNIX.

    Abstract names live in the network namespace, which the workers share with
    the writer; deep per-host directories (the local testbed) need them.
    """
    path = str((stats_dir / WRITER_SOCKET).resolve())
    if len(path.encode()) <= 100:
        return path
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    return f"\0zoneslice-writer-{os.getpid()}-{digest}"


def _unlink_socket(address: str) -> None:
    if not address.startswith("\0"):
        Path(address).unlink()


def _run_writer(
    role: Callable[[], Any],
    slice_db: Path,
    stats_dir: Path,
    commit_hooks: Sequence[Any],
    writer_sock: str,
    ready: Callable[[], None],
    **_: Any,
) -> None:
    sys.setswitchinterval(WRITER_SWITCH_INTERVAL)
    writer = _Writer(role, slice_db, stats_dir, commit_hooks, writer_sock)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(writer.run(ready))
    finally:
        loop.close()


# ------------------------------------------------------------------ worker


class _Worker:
    """One process: a Responder and the listeners of one socket set."""

    def __init__(
        self,
        index: int,
        responder: ResponderLike,
        socks: list[socket.socket],
        stats_dir: Path | None,
        tcp_idle: float,
        link: _WriterLink | _InlineWriter | None = None,
        side: Any = None,
    ) -> None:
        self.index = index
        self.responder = responder
        self.link = link
        self.side = side
        self.socks = socks
        self.stats_dir = stats_dir
        self.tcp_idle = tcp_idle
        self.started = time.time()
        self.c: dict[str, int] = dict.fromkeys(
            (
                "udp_in",
                "udp_out",
                "udp_dropped",
                "udp_send_errors",
                "tcp_connections",
                "tcp_refused",
                "tcp_in",
                "tcp_out",
                "tcp_idle_closed",
                "axfr",
                "axfr_messages",
                "errors",
                "writer_in",
                "writer_failed",
                "writer_us",
            ),
            0,
        )
        self.clients: set[asyncio.Task[None]] = set()
        self.passed: set[asyncio.Task[None]] = set()
        self.stopping: asyncio.Event | None = None
        self._last_error_log = 0.0

    # ---- failures inside the Responder

    def _failed(self, wire: bytes) -> bytes | None:
        self.c["errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.error(
                "worker %d: responder failed on %s: %s",
                self.index,
                wire[:64].hex(),
                traceback.format_exc(limit=4).strip().replace("\n", " | "),
            )
        return servfail(wire)

    # ---- UPDATE and NOTIFY: the writer's

    def _prepare(self, wire: bytes, client: Any) -> Any:
        """The role's worker side first: an answer now (bytes or None), or ``(payload,
        finish)`` for the writer; without a worker side, the message as it is."""
        if self.side is None:
            return wire, None
        try:
            return self.side.prepare(wire, client)
        except Exception:
            return self._failed(wire)

    def _writer_failed(self, exc: Exception) -> None:
        self.c["writer_failed"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.error("worker %d: writer failed: %s", self.index, repr(exc))

    def _complete(
        self,
        wire: bytes,
        finish: Callable[[bytes | None], bytes | None] | None,
        reply: bytes | None,
        failed: bool = False,
    ) -> bytes | None:
        """The answer to send from the writer's reply (SERVFAIL when it failed and no
        worker side finishes the answer)."""
        if finish is None:
            return servfail(wire) if failed else reply
        try:
            return finish(reply)
        except Exception:
            return self._failed(wire)

    async def _ask_writer(self, wire: bytes, client: Any, tcp: bool) -> bytes | None:
        """The writer's answer; a role's worker side (if any) may answer first or pre-process
        the message here, in parallel on every worker, and finish the answer."""
        self.c["writer_in"] += 1
        assert self.link is not None
        prep = self._prepare(wire, client)
        if not isinstance(prep, tuple):
            return prep
        payload, finish = prep
        t0 = time.monotonic()
        try:
            reply = await self.link.ask(payload, client, tcp)
            self.c["writer_us"] += int(1e6 * (time.monotonic() - t0))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - writer dead, slow or broken: SERVFAIL, no hang
            self._writer_failed(exc)
            return self._complete(wire, finish, None, failed=True)
        return self._complete(wire, finish, reply)

    async def _udp_writer(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        self._udp_send(sock, await self._ask_writer(wire, addr, False), addr)

    def _pass_udp(self, sock: socket.socket, wire: bytes, addr: Any) -> None:
        send = getattr(self.link, "send_nowait", None)
        if send is not None and self._udp_nowait(send, sock, wire, addr):
            return
        task = asyncio.get_running_loop().create_task(self._udp_writer(sock, wire, addr))
        self.passed.add(task)
        task.add_done_callback(self.passed.discard)

    def _udp_nowait(self, send: Any, sock: socket.socket, wire: bytes, addr: Any) -> bool:
        """:meth:`_udp_writer` without a task: prepare, hand over, answer from a callback.
        False when the link is not connected (the task path connects it)."""
        link = getattr(self.link, "writer", None)
        if link is None or link.is_closing():
            return False
        prep = self._prepare(wire, addr)
        if not isinstance(prep, tuple):
            self.c["writer_in"] += 1
            self._udp_send(sock, prep, addr)
            return True
        payload, finish = prep
        fut = send(payload, addr, False)
        if fut is None:
            return False
        self.c["writer_in"] += 1
        fut.add_done_callback(functools.partial(self._udp_answer, sock, wire, addr, finish))
        return True

    def _udp_answer(self, sock: socket.socket, wire: bytes, addr: Any,
                    finish: Callable[[bytes | None], bytes | None] | None,
                    fut: asyncio.Future[bytes | None]) -> None:
        try:
            reply = fut.result()
        except Exception as exc:  # noqa: BLE001 - writer dead, slow or broken: SERVFAIL
            self._writer_failed(exc)
            self._udp_send(sock, self._complete(wire, finish, None, failed=True), addr)
            return
        self._udp_send(sock, self._complete(wire, finish, reply), addr)

    def _udp_send(self, sock: socket.socket, out: bytes | None, addr: Any) -> None:
        if out is None:
            self.c["udp_dropped"] += 1
            return
        try:
            sock.sendto(out, addr)
            self.c["udp_out"] += 1
        except OSError:
            self.c["udp_send_errors"] += 1

    # ---- UDP

    def udp_reader(self, sock: socket.socket) -> Callable[[], None]:
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        respond = self.responder.respond
        c = self.c
        failed = self._failed
        to_writer = self.link is not None
        pass_udp = self._pass_udp

        def ready() -> None:
            got = sent = lost = passed = 0
            try:
                for _ in range(UDP_BATCH):
                    try:
                        wire, addr = recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    got += 1
                    if to_writer and for_writer(wire):
                        pass_udp(sock, wire, addr)
                        passed += 1
                        continue
                    try:
                        out = respond(wire, tcp=False, client=addr)
                    except Exception:
                        out = failed(wire)
                    if out is not None:
                        try:
                            sendto(out, addr)
                            sent += 1
                        except OSError:
                            lost += 1
            finally:
                c["udp_in"] += got
                c["udp_out"] += sent
                c["udp_send_errors"] += lost
                c["udp_dropped"] += got - sent - lost - passed

        return ready

    # ---- TCP

    def tcp_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= TCP_MAX_CLIENTS or (self.stopping and self.stopping.is_set()):
            self.c["tcp_refused"] += 1
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._tcp_client(reader, writer))
        self.clients.add(task)
        task.add_done_callback(self.clients.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.c["tcp_connections"] += 1
        peer = writer.get_extra_info("peername")
        transport = writer.transport
        respond = self.responder.respond
        c = self.c
        idle = self.tcp_idle
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        head = await reader.readexactly(2)
                        wire = await reader.readexactly((head[0] << 8) | head[1])
                except TimeoutError:
                    c["tcp_idle_closed"] += 1
                    break
                c["tcp_in"] += 1
                if self.link is not None and for_writer(wire):
                    out = await self._ask_writer(wire, peer, True)
                    if out is not None:
                        writer.write(len(out).to_bytes(2, "big") + out)
                        c["tcp_out"] += 1
                    continue
                if is_axfr(wire):
                    await self._axfr(wire, peer, writer)
                    continue
                try:
                    out = respond(wire, tcp=True, client=peer)
                except Exception:
                    out = self._failed(wire)
                if out is None:
                    continue
                writer.write(len(out).to_bytes(2, "big") + out)
                c["tcp_out"] += 1
                if transport.get_write_buffer_size() > WRITE_HIGH:
                    async with asyncio.timeout(idle):
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:
            transport.abort()
            raise
        finally:
            if not transport.is_closing():
                transport.close()

    async def _axfr(self, wire: bytes, peer: Any, writer: asyncio.StreamWriter) -> None:
        self.c["axfr"] += 1
        try:
            result = self.responder.axfr(wire, peer)
        except Exception:
            result = self._failed(wire)
        if result is None:
            return
        messages: Iterable[bytes] = [result] if isinstance(result, bytes | bytearray) else result
        it = iter(messages)
        while True:
            try:
                msg = next(it)
            except StopIteration:
                break
            except Exception:
                self._failed(wire)
                raise ConnectionError("AXFR aborted") from None
            writer.write(len(msg).to_bytes(2, "big") + msg)
            self.c["axfr_messages"] += 1
            async with asyncio.timeout(self.tcp_idle):
                await writer.drain()

    # ---- stats

    def snapshot(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            "cpu_s": round(time.process_time(), 3),
            "tcp_clients": len(self.clients),
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "server": dict(self.c),
            "responder": _plain(self.responder.counters),
        }

    def write_stats(self) -> None:
        if self.stats_dir is None:
            return
        try:
            stats_mod.write_json(stats_mod.worker_file(self.stats_dir, self.index), self.snapshot())
        except OSError as exc:
            log.warning("worker %d: cannot write stats: %s", self.index, exc)

    # ---- main loop

    async def run(self, ready: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if self.link is not None:
            await self.link.start()
        servers = []
        for s in self.socks:
            if s.type == socket.SOCK_DGRAM:
                loop.add_reader(s.fileno(), self.udp_reader(s))
            else:
                servers.append(
                    await asyncio.start_server(self.tcp_accept, sock=s, backlog=TCP_BACKLOG)
                )

        def tick() -> None:
            gc.freeze()
            self.write_stats()
            handle[0] = loop.call_later(STATS_EVERY, tick)

        handle = [loop.call_later(STATS_EVERY, tick)]
        gc.freeze()
        self.write_stats()
        ready()
        await self.stopping.wait()
        handle[0].cancel()
        for s in self.socks:
            if s.type == socket.SOCK_DGRAM:
                loop.remove_reader(s.fileno())
        for srv in servers:
            srv.close()
        for t in list(self.clients) + list(self.passed):
            t.cancel()
        if self.clients or self.passed:
            await asyncio.wait(list(self.clients) + list(self.passed), timeout=1.0)
        if self.link is not None:
            await self.link.stop()
        for s in self.socks:
            s.close()
        self.write_stats()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _plain(counters: Any) -> dict[str, Any]:
    """JSON-able copy of the Responder's counters (keys as text)."""
    out: dict[str, Any] = {}
    for k, v in dict(counters).items():
        out[str(k)] = _plain(v) if isinstance(v, dict) else v
    return out


def _make_responder(
    factory: ResponderFactory | None,
    slice_db: Path,
    axfr_allowed: Callable[[str], bool],
    options: dict[str, Any] | None = None,
) -> ResponderLike:
    if factory is None:
        from zoneslice.engine.query import Responder

        factory = Responder
    return factory(slice_db, axfr_allowed=axfr_allowed, **(options or {}))


def _run_worker(
    index: int,
    slice_db: Path,
    socks: list[socket.socket],
    stats_dir: Path | None,
    factory: ResponderFactory | None,
    axfr_allowed: Callable[[str], bool],
    tcp_idle: float,
    ready: Callable[[], None],
    options: dict[str, Any] | None = None,
    role: Callable[[], Any] | None = None,
    commit_hooks: Sequence[Any] = (),
    writer_sock: str | None = None,
    inline: bool = False,
) -> None:
    responder = _make_responder(factory, slice_db, axfr_allowed, options)
    link: _WriterLink | _InlineWriter | None = None
    side = None
    if role is not None:
        make_side = getattr(role, "worker_side", None)
        side = make_side() if callable(make_side) else None
        from zoneslice.updates.handler import WatchedResponder

        responder = WatchedResponder(responder)
        if inline:
            link = _InlineWriter(role, slice_db, stats_dir, commit_hooks)
        else:
            assert writer_sock is not None
            link = _WriterLink(writer_sock)
    worker = _Worker(index, responder, socks, stats_dir, tcp_idle, link, side)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(worker.run(ready))
    finally:
        loop.close()
        close = getattr(responder, "close", None)
        if callable(close):
            close()


def _fork_worker(
    index: int,
    socks: list[socket.socket],
    inherited: Sequence[int],
    **kw: Any,
) -> tuple[int, int]:
    """Fork worker ``index``; returns (pid, read end of its ready pipe)."""

    def body(ready: Callable[[], None]) -> None:
        _run_worker(index, socks=socks, ready=ready, **kw)

    return _fork_child(body, inherited)


def _fork_writer(inherited: Sequence[int], **kw: Any) -> tuple[int, int]:
    """Fork the writer; returns (pid, read end of its ready pipe)."""

    def body(ready: Callable[[], None]) -> None:
        _run_writer(ready=ready, **kw)

    return _fork_child(body, inherited)


PROFILE_ENV = "ZONESLICE_PROFILE"
"""A directory: every child (writer, workers) runs under cProfile and leaves ``<pid>.prof``
there when it stops (for finding where an update's time goes; off unless set)."""
PROFILE_CPU_ENV = "ZONESLICE_PROFILE_CPU"
"""Set (to anything): the profiles count CPU time, not wall time, so a process that shares
its CPU is not charged for the time others ran."""


def _profiled(body: Callable[[Callable[[], None]], None], ready: Callable[[], None]) -> None:
    out = os.environ.get(PROFILE_ENV)
    if not out:
        body(ready)
        return
    import cProfile

    prof = cProfile.Profile(time.process_time) if os.environ.get(PROFILE_CPU_ENV) else cProfile.Profile()
    prof.enable()
    try:
        body(ready)
    finally:
        prof.disable()
        prof.dump_stats(str(Path(out) / f"{os.getpid()}.prof"))


def _fork_child(body: Callable[[Callable[[], None]], None], inherited: Sequence[int]) -> tuple[int, int]:
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return pid, rfd
    code = 1
    try:
        os.close(rfd)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

        def ready() -> None:
            os.write(wfd, b"ok\n")

        _profiled(body, ready)
        code = 0
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(wfd, f"error: {type(exc).__name__}: {exc}\n".encode()[:4000])
        if not isinstance(exc, ZonesliceError | KeyboardInterrupt | SystemExit):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)


def _wait_ready(pipes: dict[int, int], deadline: float) -> dict[int, str]:
    """Read one status line from each pipe; returns {fd: line} (empty line = died silently)."""
    status: dict[int, str] = {}
    bufs: dict[int, bytes] = {fd: b"" for fd in pipes}
    while len(status) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _check_signals()
        r, _, _ = select.select([fd for fd in pipes if fd not in status], [], [], min(left, 0.1))
        for fd in r:
            chunk = os.read(fd, 4096)
            bufs[fd] += chunk
            if not chunk or b"\n" in bufs[fd]:
                status[fd] = bufs[fd].decode(errors="replace").strip()
    return status


# ------------------------------------------------------------------ parent


class _Stop(Exception):
    pass


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _check_signals() -> None:
    """Raise _Stop if SIGTERM/SIGINT is pending (the parent keeps them blocked)."""
    if signal.sigpending() & _STOP_SIGNALS:
        raise _Stop(signal.sigtimedwait(_STOP_SIGNALS, 0))


def serve(
    source: Source,
    listen: Sequence[tuple[str, int]] | None = None,
    workers: int | None = None,
    *,
    on_ready: Callable[[ServerInfo], None] | None = None,
    stats_path: str | os.PathLike[str] | None = None,
    axfr_allow: Iterable[str] | None = None,
    tcp_idle: float = TCP_IDLE,
    responder_factory: ResponderFactory | None = None,
    responder_options: dict[str, Any] | None = None,
    role: Callable[[], Any] | None = None,
    commit_hooks: Sequence[Callable[[Any], None]] = (),
) -> None:
    """Serve one slice until SIGTERM or SIGINT, then return (the command exits 0).

    ``source`` is a slice database or ``(manifest, index)``. ``listen`` defaults to
    ``0.0.0.0:53`` and ``[::]:53``; port 0 picks a free port (the same for UDP and
    TCP, reported to ``on_ready``). ``workers`` defaults to the usable CPUs; 0 serves
    in this process without forking (for profiling). ``stats_path`` is a directory
    for the counters (default: a temporary one, removed at exit). ``axfr_allow``
    lists the addresses/networks allowed to AXFR (default: none).
    ``responder_factory(slice_db, axfr_allowed=..., **responder_options)`` replaces
    the Responder; ``responder_options`` (e.g. ``{"cache_size": 10**6}``) go to it.
    ``role()`` builds the node's :class:`~zoneslice.engine.node.NodeRole` in the
    writer process (in this process when ``workers`` is 0), which then gets every
    UPDATE and NOTIFY; ``commit_hooks`` run there after each commit, before the acks.

    :raises ServeError: the slice cannot be opened, an address cannot be bound or a
        worker fails to start or keeps dying.
    """
    slice_db = resolve_source(source)
    if not slice_db.exists():
        raise ServeError(f"{slice_db}: no such slice database")
    meta = _slice_meta(slice_db)
    listen = list(listen) if listen else [("0.0.0.0", 53), ("::", 53)]
    nworkers = _default_workers() if workers is None else int(workers)
    if nworkers < 0:
        raise ServeError("workers must be >= 0")
    allowed = acl(axfr_allow)
    temp_stats = stats_path is None
    stats_dir = (
        Path(tempfile.mkdtemp(prefix="zoneslice-stats-")) if temp_stats else Path(stats_path)
    )
    stats_dir.mkdir(parents=True, exist_ok=True)
    for f in stats_dir.glob(stats_mod.WORKER_GLOB):
        f.unlink(missing_ok=True)
    (stats_dir / WRITER_STATS).unlink(missing_ok=True)
    writer_sock = writer_socket_address(stats_dir)
    kw = dict(
        slice_db=slice_db,
        stats_dir=stats_dir,
        factory=responder_factory,
        axfr_allowed=allowed,
        tcp_idle=tcp_idle,
        options=dict(responder_options or {}),
        role=role,
        commit_hooks=tuple(commit_hooks),
        writer_sock=writer_sock,
        inline=nworkers == 0,
    )
    try:
        if nworkers == 0:
            _serve_inline(listen, meta, on_ready, kw)
        else:
            _Parent(listen, nworkers, meta, on_ready, kw).run()
    finally:
        if temp_stats:
            shutil.rmtree(stats_dir, ignore_errors=True)


def _describe(meta: dict[str, str], slice_db: Path) -> str:
    origin = meta.get("origin", "?")
    if meta.get("parts"):
        return f"{origin} slice {meta.get('index', '?')}/{meta['parts']} ({slice_db})"
    return f"{origin} ({slice_db})"


def _summary(stats_dir: Path) -> str:
    try:
        total = stats_mod.read_stats(stats_dir)["total"]
    except ServeError:
        return "no statistics"
    r = total.get("responder", {})
    s = total.get("server", {})
    queries = r.get("queries", s.get("udp_in", 0) + s.get("tcp_in", 0))
    rc = (
        r.get("rcodes")
        or r.get("rcode")
        or {k: v for k, v in r.items() if k.isupper() and isinstance(v, int)}
    )
    parts = [f"{queries} queries"] + [f"{k} {v}" for k, v in sorted(rc.items()) if v]
    if s.get("errors"):
        parts.append(f"{s['errors']} responder errors")
    return ", ".join(parts)


def _serve_inline(
    listen: Sequence[tuple[str, int]],
    meta: dict[str, str],
    on_ready: Callable[[ServerInfo], None] | None,
    kw: dict[str, Any],
) -> None:
    socks, bound = _bind_all(listen)
    started = time.monotonic()
    info = ServerInfo(kw["slice_db"], bound, [os.getpid()], kw["stats_dir"], meta)
    stats_mod.write_json(kw["stats_dir"] / stats_mod.SERVER_FILE, _server_json(info))

    def ready() -> None:
        log.info(_start_line(info))
        if on_ready:
            on_ready(info)

    try:
        _run_worker(0, socks=socks, ready=ready, **kw)
    finally:
        for s in socks:
            s.close()
    log.info(
        "zoneslice serve stopped after %.1f s: %s",
        time.monotonic() - started,
        _summary(kw["stats_dir"]),
    )


def _server_json(info: ServerInfo) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "slice_db": str(info.slice_db),
        "listen": [list(a) for a in info.listen],
        "workers": info.pids,
        "started": time.time(),
        "meta": info.meta,
    }


def _start_line(info: ServerInfo) -> str:
    where = " ".join(_show(a, p) for a, p in info.listen)
    return (
        f"zoneslice serve started: {_describe(info.meta, info.slice_db)} on udp+tcp {where}, "
        f"{len(info.pids)} worker(s) (pids {' '.join(map(str, info.pids))}), "
        + (f"writer pid {info.writer_pid}, " if info.writer_pid else "")
        + f"stats in {info.stats_path}"
    )


class _Parent:
    """Forks and watches the workers; turns SIGTERM/SIGINT into an orderly stop."""

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        n: int,
        meta: dict[str, str],
        on_ready: Callable[[ServerInfo], None] | None,
        kw: dict[str, Any],
    ) -> None:
        self.listen = list(listen)
        self.n = n
        self.meta = meta
        self.on_ready = on_ready
        self.kw = kw
        self.pids: dict[int, int] = {}
        self.deaths: list[float] = []
        self.stop_reason = "error"

    def _spawn(self, index: int, inherited: Sequence[int] = ()) -> tuple[int, int]:
        socks, bound = _bind_all(self.listen)
        self.listen = bound
        try:
            pid, rfd = _fork_worker(index, socks, inherited, **self.kw)
        finally:
            for s in socks:
                s.close()
        self.pids[index] = pid
        return pid, rfd

    def _spawn_writer(self, inherited: Sequence[int] = ()) -> tuple[int, int]:
        pid, rfd = _fork_writer(inherited, **self.kw)
        self.pids[WRITER_INDEX] = pid
        return pid, rfd

    def run(self) -> None:
        started = time.monotonic()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._start()
            while True:
                sig = signal.sigtimedwait(_STOP_SIGNALS, 0.1)
                if sig is not None:
                    raise _Stop(sig)
                self._reap()
        except _Stop as stop:
            info = stop.args[0] if stop.args else None
            self.stop_reason = signal.Signals(info.si_signo).name if info else "signal"
        finally:
            try:
                self._stop_all()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info(
            "zoneslice serve stopped (%s) after %.1f s: %s",
            self.stop_reason,
            time.monotonic() - started,
            _summary(self.kw["stats_dir"]),
        )

    def _start(self) -> None:
        pipes: dict[int, int] = {}
        try:
            if self.kw.get("role") is not None:
                _, rfd = self._spawn_writer()
                pipes[rfd] = WRITER_INDEX
            for i in range(self.n):
                _, rfd = self._spawn(i, list(pipes))
                pipes[rfd] = i
            status = _wait_ready(pipes, time.monotonic() + READY_TIMEOUT)
        finally:
            for fd in pipes:
                os.close(fd)
        bad = {pipes[fd]: line for fd, line in status.items() if line != "ok"}
        bad.update({i: "did not start in time" for fd, i in pipes.items() if fd not in status})
        if bad:
            i, why = sorted(bad.items())[0]
            raise ServeError(f"{_child_name(i)} failed to start: {why or 'exited'}")
        info = ServerInfo(
            self.kw["slice_db"],
            self.listen,
            [pid for i, pid in self.pids.items() if i != WRITER_INDEX],
            self.kw["stats_dir"],
            self.meta,
            self.pids.get(WRITER_INDEX),
        )
        stats_mod.write_json(self.kw["stats_dir"] / stats_mod.SERVER_FILE, _server_json(info))
        log.info(_start_line(info))
        if self.on_ready:
            self.on_ready(info)

    def _reap(self) -> None:
        for index, pid in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            del self.pids[index]
            now = time.monotonic()
            limit, window = RESTARTS_WINDOW
            self.deaths = [t for t in self.deaths if now - t < window] + [now]
            log.warning(
                "%s (pid %d) died (%s); restarting",
                _child_name(index),
                pid,
                _exit_text(status),
            )
            if len(self.deaths) > limit:
                raise ServeError(f"workers died {len(self.deaths)} times in {window:.0f} s")
            _, rfd = self._spawn_writer() if index == WRITER_INDEX else self._spawn(index)
            try:
                line = _wait_ready({rfd: index}, now + READY_TIMEOUT).get(rfd, "")
            finally:
                os.close(rfd)
            if line != "ok":
                log.error("%s failed to restart: %s", _child_name(index), line or "exited")

    def _stop_all(self) -> None:
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        left = dict(self.pids)
        while left and time.monotonic() < deadline:
            for i, pid in list(left.items()):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    del left[i]
            if left:
                time.sleep(0.02)
        for i, pid in left.items():
            log.warning("%s (pid %d) did not stop in %.0f s; killed", _child_name(i), pid, STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()


def _child_name(index: int) -> str:
    return "writer" if index == WRITER_INDEX else f"worker {index}"


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


# ------------------------------------------------------------------ in the background


class Background:
    """``serve`` in a forked child process, for tests, benches and node wiring.

    ``with Background(slice_db, [("127.0.0.1", 0)], workers=2) as srv:`` waits
    until every worker answers; ``srv.info.listen`` holds the real ports;
    leaving the block sends SIGTERM and waits (``srv.exitcode`` is then 0).
    """

    def __init__(
        self,
        source: Source,
        listen: Sequence[tuple[str, int]],
        workers: int = 1,
        *,
        start_timeout: float = 60.0,
        **kw: Any,
    ) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_background_main, args=(send, source, list(listen), workers, kw), daemon=False
        )
        self.info: ServerInfo | None = None
        self.exitcode: int | None = None
        self.process.start()
        send.close()
        try:
            if not self._recv.poll(start_timeout):
                raise ServeError(f"server did not start in {start_timeout:.0f} s")
            try:
                kind, value = self._recv.recv()
            except EOFError:
                raise ServeError("server exited before it was ready") from None
            if kind == "error":
                raise ServeError(value)
            self.info = value
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.exitcode = self.process.exitcode
        self._recv.close()
        return self.exitcode

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _background_main(
    send: Any, source: Source, listen: list[tuple[str, int]], workers: int, kw: dict[str, Any]
) -> None:
    def ready(info: ServerInfo) -> None:
        send.send(("ready", info))

    try:
        serve(source, listen, workers, on_ready=ready, **kw)
    except ZonesliceError as exc:
        with contextlib.suppress(OSError):
            send.send(("error", str(exc)))
        sys.exit(1)
