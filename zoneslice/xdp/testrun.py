"""BPF_PROG_TEST_RUN from Python: run a loaded XDP program on a frame.

Uses libbpf's ``bpf_prog_test_run_opts`` through ctypes (Debian libbpf1), on
the program fd bcc gives (``BPF.load_func(...).fd``). The kernel copies the
frame into a page with XDP headroom, runs the program and copies the result
back, so what comes out is exactly what XDP_TX would send.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from dataclasses import dataclass

from zoneslice.errors import XdpError
from zoneslice.xdp._libbpf import lib as _libbpf

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


class _TestRunOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class _XdpMd(ct.Structure):
    _fields_ = [
        ("data", ct.c_uint32),
        ("data_end", ct.c_uint32),
        ("data_meta", ct.c_uint32),
        ("ingress_ifindex", ct.c_uint32),
        ("rx_queue_index", ct.c_uint32),
        ("egress_ifindex", ct.c_uint32),
    ]


@dataclass
class RunResult:
    action: int
    frame: bytes
    duration_ns: int

    @property
    def name(self) -> str:
        return ACTIONS.get(self.action, str(self.action))


def run(prog_fd: int, frame: bytes, *, repeat: int = 1, out_size: int = 4096) -> RunResult:
    """Run the program once (or ``repeat`` times on the same buffer) on ``frame``."""
    lib = _libbpf()
    inbuf = ct.create_string_buffer(frame, len(frame))
    outbuf = ct.create_string_buffer(out_size)
    opts = _TestRunOpts()
    opts.sz = ct.sizeof(opts)
    opts.data_in = ct.cast(inbuf, ct.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ct.cast(outbuf, ct.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    rc = lib.bpf_prog_test_run_opts(prog_fd, ct.addressof(opts))
    if rc != 0:
        err = ct.get_errno() or -rc
        raise XdpError(
            f"BPF_PROG_TEST_RUN failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
        )
    return RunResult(opts.retval, outbuf.raw[: opts.data_size_out], opts.duration)


def run_live(prog_fd: int, frame: bytes, *, repeat: int, ifindex: int = 1, batch: int = 64) -> int:
    """Per-frame cost in ns with BPF_F_TEST_XDP_LIVE_FRAMES: the frame is reset before every run.

    XDP_TX frames go to ``ifindex`` (loopback by default, which drops them).
    """
    lib = _libbpf()
    inbuf = ct.create_string_buffer(frame, len(frame))
    md = _XdpMd()
    md.data = 0
    md.data_end = len(frame)
    md.ingress_ifindex = ifindex
    opts = _TestRunOpts()
    opts.sz = ct.sizeof(opts)
    opts.data_in = ct.cast(inbuf, ct.c_void_p)
    opts.data_size_in = len(frame)
    opts.ctx_in = ct.cast(ct.pointer(md), ct.c_void_p)
    opts.ctx_size_in = ct.sizeof(md)
    opts.repeat = repeat
    opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    opts.batch_size = batch
    rc = lib.bpf_prog_test_run_opts(prog_fd, ct.addressof(opts))
    if rc != 0:
        err = ct.get_errno() or -rc
        raise XdpError(f"BPF_PROG_TEST_RUN (live frames) failed: {os.strerror(err)}")
    return opts.duration
