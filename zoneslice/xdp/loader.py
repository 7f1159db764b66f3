"""HotPath: compile bpf/hot_answer.c with bcc, attach it, fill and drain its maps.

Policy (as Knot's bpf-user.c and NSD's xdp-server.c): attach only when the
interface has no XDP program (never replace someone else's), detach in
``__exit__`` -- also when the body raised -- and only if the program attached
is still ours (the kernel checks that atomically: XDP_FLAGS_REPLACE with our
fd). Mode ``auto`` tries native (driver) mode and falls back to generic.

Map writes: exact entries in one batch syscall per chunk; delegation entries
(an LPM trie, which has no batch op) one by one. Both maps are
BPF_F_NO_PREALLOC, so a replaced answer is freed only after an RCU grace
period: a concurrent reader sees the old or the new answer, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoneslice.errors import XdpError
from zoneslice.xdp import _libbpf as lb
from zoneslice.xdp import maps

PROG_NAME = "zs_hot_answer"
MODES = ("auto", "native", "generic")


def bpf_dir() -> Path:
    """Where hot_answer.c and zs_maps.h live (ZONESLICE_BPF_DIR overrides)."""
    env = os.environ.get("ZONESLICE_BPF_DIR")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "bpf"
    if not (d / "hot_answer.c").is_file():
        raise XdpError(f"{d}: no hot_answer.c (set ZONESLICE_BPF_DIR)")
    return d


@dataclass
class Options:
    """Compile-time sizes and run-time configuration of the program."""

    port: int = 53
    max_exact: int = 16384
    max_deleg: int = 16384
    body_max: int = maps.BODY_MAX
    max_udp: int = 1232
    max_udp6: int = 1220
    addresses: list[str] | None = None  # None: the interface's own addresses; []: any
    cookie_flags: int = 0  # maps.CF_COOKIE_* the engine is known to allow dropping
    verify_udp_csum: bool = True  # off when clients sit behind a veth with tx checksum offload
    extra_cflags: list[str] = field(default_factory=list)

    def cflags(self) -> list[str]:
        return [
            "-w",
            f"-I{bpf_dir()}",
            f"-DZS_MAX_EXACT={self.max_exact}",
            f"-DZS_MAX_DELEG={self.max_deleg}",
            f"-DZS_BODY_MAX={self.body_max}",
            f"-DZS_MAX_SLOTS={maps.MAX_SLOTS}",
            *self.extra_cflags,
        ]


def program_text(opts: Options | None = None) -> str:
    """The C bcc would compile, with zs_maps.h inlined and the -D sizes as #defines (``--ebpf``)."""
    opts = opts or Options()
    d = bpf_dir()
    src = (d / "hot_answer.c").read_text()
    hdr = (d / "zs_maps.h").read_text()
    defines = "".join(
        f"#define {m.group(1)} {m.group(2)}\n"
        for f in opts.cflags()
        if (m := re.fullmatch(r"-D(\w+)=(.*)", f))
    )
    return src.replace('#include "zs_maps.h"\n', defines + hdr)


def iface_addresses(iface: str) -> list[str]:
    """IPv4 and IPv6 addresses configured on ``iface`` (from /proc and ioctl-free sources)."""
    out: list[str] = []
    try:
        for line in Path("/proc/thread-self/net/if_inet6").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[5] == iface:
                out.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(parts[0])))
    except OSError:
        pass
    import fcntl

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", iface.encode()[:15])
        res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR: primary IPv4 address
        out.append(socket.inet_ntoa(res[20:24]))
    except OSError:
        pass
    finally:
        s.close()
    return out


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block in network namespace ``name`` (this thread only); None: stay where we are.

    Netlink (attach, detach, interface lookups) and sockets opened or processes
    forked inside the block belong to that namespace; maps and programs do not care.
    """
    if not name:
        yield
        return
    libc = ct.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    except OSError as exc:
        os.close(home)
        raise XdpError(f"no network namespace {name!r}: {exc}") from exc
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise XdpError(
                f"cannot enter network namespace {name!r}: {os.strerror(ct.get_errno())}"
            )
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise XdpError(f"cannot return from network namespace {name!r}")
    finally:
        os.close(target)
        os.close(home)


def _addr_key(addr: str) -> bytes:
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(addr)


class HotPath:
    """The hot-answer XDP program on one interface (or unattached, for PROG_TEST_RUN)."""

    def __init__(
        self,
        iface: str | None = None,
        *,
        mode: str = "auto",
        options: Options | None = None,
        netns: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise XdpError(f"XDP mode {mode!r} is not one of {', '.join(MODES)}")
        self.iface = iface
        self.netns = netns
        self.mode = mode
        self.opts = options or Options()
        self.attached_mode: str | None = None
        self._bpf: Any = None
        self._fn: Any = None
        self._ifindex = 0
        self._answer_size = ct.sizeof(maps.answer_struct(self.opts.body_max))
        self._exact_keys: set[bytes] = set()
        self._deleg_keys: set[bytes] = set()

    # -- life cycle --------------------------------------------------------
    def __enter__(self) -> HotPath:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Compile, load, configure and (if an interface was given) attach."""
        try:
            from bcc import BPF
        except ImportError as exc:
            raise XdpError(f"bcc is not importable: {exc}") from exc
        try:
            self._bpf = BPF(
                src_file=str(bpf_dir() / "hot_answer.c").encode(), cflags=self.opts.cflags()
            )
            self._fn = self._bpf.load_func(PROG_NAME.encode(), BPF.XDP)
        except Exception as exc:  # bcc raises bare Exception
            self._bpf = None
            raise XdpError(f"could not build or load the XDP program: {exc}") from exc
        try:
            self.configure()
            if self.iface:
                self.attach(self.iface, netns=self.netns)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Detach (if the attached program is still ours) and free the program and maps."""
        try:
            self.detach()
        finally:
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None
                self._fn = None

    @property
    def prog_fd(self) -> int:
        if self._fn is None:
            raise XdpError("the XDP program is not loaded")
        return int(self._fn.fd)

    @property
    def prog_id(self) -> int:
        return lb.prog_id(self.prog_fd)

    def attach(self, iface: str, *, mode: str | None = None, netns: str | None = None) -> None:
        """Attach to ``iface`` (in namespace ``netns``, None: ours) unless it runs an XDP program."""
        if self.attached_mode:
            raise XdpError(f"already attached to {self.iface}")
        if mode is not None:
            if mode not in MODES:
                raise XdpError(f"XDP mode {mode!r} is not one of {', '.join(MODES)}")
            self.mode = mode
        self.netns = netns
        self.iface = iface
        with in_netns(self.netns):
            self._attach_here()
        if self.opts.addresses is None:
            self.configure()

    def _attach_here(self) -> None:
        assert self.iface
        try:
            self._ifindex = socket.if_nametoindex(self.iface)
        except OSError as exc:
            raise XdpError(f"no interface {self.iface!r}") from exc
        tries = {"auto": ["native", "generic"], "native": ["native"], "generic": ["generic"]}
        errors = []
        for m in tries[self.mode]:
            flags = lb.XDP_FLAGS_UPDATE_IF_NOEXIST | (
                lb.XDP_FLAGS_DRV_MODE if m == "native" else lb.XDP_FLAGS_SKB_MODE
            )
            rc = lb.lib().bpf_xdp_attach(self._ifindex, self.prog_fd, flags, None)
            if rc == 0:
                self.attached_mode = m
                return
            errors.append(f"{m}: {os.strerror(-rc)}")
        raise XdpError(f"could not attach XDP to {self.iface}: {'; '.join(errors)}")

    def _mode_flag(self) -> int:
        return lb.XDP_FLAGS_DRV_MODE if self.attached_mode == "native" else lb.XDP_FLAGS_SKB_MODE

    def attached_id(self) -> int:
        """Id of the program attached on our interface in our mode (0: none)."""
        pid = ct.c_uint32(0)
        with in_netns(self.netns):
            rc = lb.lib().bpf_xdp_query_id(self._ifindex, self._mode_flag(), ct.byref(pid))
        lb.check(rc, "xdp query")
        return pid.value

    def detach(self) -> None:
        """Detach if attached and the attached program is still ours; else leave it alone."""
        if not self.attached_mode:
            return
        opts = lb.XdpAttachOpts(ct.sizeof(lb.XdpAttachOpts), self.prog_fd)
        try:
            with in_netns(self.netns):
                rc = lb.lib().bpf_xdp_detach(
                    self._ifindex, self._mode_flag() | lb.XDP_FLAGS_REPLACE, ct.byref(opts)
                )
        except XdpError:
            rc = -19  # the namespace is gone, and the interface with it
        self.attached_mode = None
        # -EEXIST: something else is attached now; it is not ours to remove. -ENODEV: iface gone.
        if rc < 0 and -rc not in (17, 19, 6):
            raise XdpError(f"could not detach XDP from {self.iface}: {os.strerror(-rc)}")

    # -- configuration -----------------------------------------------------
    def _fd(self, name: str) -> int:
        if self._bpf is None:
            raise XdpError("the XDP program is not loaded")
        return int(self._bpf[name.encode()].map_fd)

    def configure(self, *, enabled: bool = True) -> None:
        """Write zs_config (port, payload size, flags) and the served addresses."""
        o = self.opts
        flags = (maps.CF_ENABLED if enabled else 0) | o.cookie_flags
        if o.verify_udp_csum:
            flags |= maps.CF_VERIFY_CSUM
        addrs = o.addresses
        if addrs is None:
            with in_netns(self.netns):
                addrs = iface_addresses(self.iface) if self.iface else []
        if addrs:
            flags |= maps.CF_ADDR_FILTER
            one = ct.c_uint8(1)
            for a in addrs:
                k = ct.create_string_buffer(_addr_key(a), 16)
                lb.check(
                    lb.lib().bpf_map_update_elem(self._fd("zs_addrs"), k, ct.byref(one), 0),
                    "zs_addrs update",
                )
        cfg = maps.Config(flags, o.port, o.max_udp, o.max_udp6, 0)
        zero = ct.c_uint32(0)
        lb.check(
            lb.lib().bpf_map_update_elem(self._fd("zs_config"), ct.byref(zero), ct.byref(cfg), 0),
            "zs_config update",
        )

    def set_enabled(self, enabled: bool) -> None:
        """Switch answering on or off at once (off: every packet passes)."""
        self.configure(enabled=enabled)

    # -- entries -----------------------------------------------------------
    def load(self, entries: Iterable[tuple[str, bytes, bytes]], chunk: int = 1024) -> int:
        """Insert or replace entries ``(kind, key, value)``, kind "exact" or "deleg"; returns count."""
        exact: list[tuple[bytes, bytes]] = []
        n = 0
        for kind, key, value in entries:
            if len(value) != self._answer_size:
                raise XdpError(f"value of {len(value)} octets, the map wants {self._answer_size}")
            if kind == "exact":
                exact.append((key, value))
                if len(exact) >= chunk:
                    n += self._update_batch(exact)
                    exact = []
            elif kind == "deleg":
                self._update("zs_deleg", key, value)
                self._deleg_keys.add(key)
                n += 1
            else:
                raise XdpError(f"unknown entry kind {kind!r}")
        if exact:
            n += self._update_batch(exact)
        return n

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        k = ct.create_string_buffer(key, len(key))
        v = ct.create_string_buffer(value, len(value))
        lb.check(lb.lib().bpf_map_update_elem(self._fd(name), k, v, 0), f"{name} update")

    def _update_batch(self, items: list[tuple[bytes, bytes]]) -> int:
        keys = b"".join(k for k, _ in items)
        vals = b"".join(v for _, v in items)
        kb = ct.create_string_buffer(keys, len(keys))
        vb = ct.create_string_buffer(vals, len(vals))
        count = ct.c_uint32(len(items))
        bo = lb.MapBatchOpts(ct.sizeof(lb.MapBatchOpts), 0, 0)
        rc = lb.lib().bpf_map_update_batch(
            self._fd("zs_exact"), kb, vb, ct.byref(count), ct.byref(bo)
        )
        if rc < 0:
            for k, v in items:
                self._update("zs_exact", k, v)
        self._exact_keys.update(k for k, _ in items)
        return len(items)

    def invalidate(self, keys: Iterable[tuple[str, bytes]] | None = None) -> int:
        """Delete entries ``(kind, key)``; None deletes all. Returns how many were present.

        When this returns, no packet that arrives later is answered from them.
        """
        if keys is None:
            keys = [("exact", k) for k in self._exact_keys] + [
                ("deleg", k) for k in self._deleg_keys
            ]
        n = 0
        for kind, key in list(keys):
            name = "zs_exact" if kind == "exact" else "zs_deleg"
            k = ct.create_string_buffer(key, len(key))
            rc = lb.lib().bpf_map_delete_elem(self._fd(name), k)
            if rc == 0:
                n += 1
            elif rc != -2:
                lb.check(rc, f"{name} delete")
            (self._exact_keys if kind == "exact" else self._deleg_keys).discard(key)
        return n

    def lookup(self, kind: str, key: bytes) -> bytes | None:
        """The value stored under ``key`` (for tests and inspection)."""
        name = "zs_exact" if kind == "exact" else "zs_deleg"
        k = ct.create_string_buffer(key, len(key))
        v = ct.create_string_buffer(self._answer_size)
        rc = lb.lib().bpf_map_lookup_elem(self._fd(name), k, v)
        return v.raw if rc == 0 else None

    @property
    def entry_count(self) -> dict[str, int]:
        return {"exact": len(self._exact_keys), "deleg": len(self._deleg_keys)}

    def hits(self, slots: Iterable[int]) -> dict[int, int]:
        """XDP answers sent per hit-counter slot since it was last reset (summed over CPUs)."""
        ncpu = lb.num_cpus()
        fd = self._fd("zs_hits")
        buf = ct.create_string_buffer(8 * ncpu)
        out = {}
        for slot in slots:
            k = ct.c_uint32(slot)
            lb.check(lb.lib().bpf_map_lookup_elem(fd, ct.byref(k), buf), "zs_hits lookup")
            out[slot] = sum(struct.unpack(f"={ncpu}Q", buf.raw))
        return out

    def reset_hits(self, slots: Iterable[int]) -> None:
        """Zero the hit counters of ``slots`` (before a slot is given to another key)."""
        fd = self._fd("zs_hits")
        zeros = ct.create_string_buffer(8 * lb.num_cpus())
        for slot in slots:
            k = ct.c_uint32(slot)
            lb.check(lb.lib().bpf_map_update_elem(fd, ct.byref(k), zeros, 0), "zs_hits reset")

    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed: answered_*, pass_* by reason, err_*."""
        ncpu = lb.num_cpus()
        fd = self._fd("zs_counters")
        out = {}
        buf = ct.create_string_buffer(8 * ncpu)
        for idx, name in enumerate(maps.COUNTERS):
            k = ct.c_uint32(idx)
            lb.check(lb.lib().bpf_map_lookup_elem(fd, ct.byref(k), buf), "counters")
            out[name] = sum(struct.unpack(f"={ncpu}Q", buf.raw))
        return out
