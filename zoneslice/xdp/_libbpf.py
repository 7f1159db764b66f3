"""The few libbpf calls zoneslice needs, through ctypes (Debian libbpf1).

bcc compiles and loads; libbpf attaches with replace semantics (so detaching
never removes someone else's program), writes maps in batches and runs
BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import os

from zoneslice.errors import XdpError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

_lib: ct.CDLL | None = None


class XdpAttachOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("old_prog_fd", ct.c_int)]


class MapBatchOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


def lib() -> ct.CDLL:
    """libbpf, loaded once, with argument types declared."""
    global _lib
    if _lib is not None:
        return _lib
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        L = ct.CDLL(path, use_errno=True)
        vp, i, u32 = ct.c_void_p, ct.c_int, ct.c_uint32
        sigs = {
            "bpf_xdp_attach": [i, i, u32, vp],
            "bpf_xdp_detach": [i, u32, vp],
            "bpf_xdp_query_id": [i, i, ct.POINTER(u32)],
            "bpf_map_update_elem": [i, vp, vp, ct.c_uint64],
            "bpf_map_lookup_elem": [i, vp, vp],
            "bpf_map_delete_elem": [i, vp],
            "bpf_map_update_batch": [i, vp, vp, ct.POINTER(u32), vp],
            "bpf_map_delete_batch": [i, vp, ct.POINTER(u32), vp],
            "bpf_obj_get_info_by_fd": [i, vp, ct.POINTER(u32)],
            "libbpf_num_possible_cpus": [],
            "bpf_prog_test_run_opts": [i, vp],
        }
        for name, args in sigs.items():
            fn = getattr(L, name)
            fn.argtypes = args
            fn.restype = ct.c_int
    except (OSError, AttributeError) as exc:
        raise XdpError(f"libbpf (libbpf1) is not usable: {exc}") from exc
    _lib = L
    return L


def check(rc: int, what: str) -> int:
    """Raise XdpError with errno text when a libbpf call failed (rc < 0)."""
    if rc < 0:
        err = -rc if rc != -1 else (ct.get_errno() or 1)
        raise XdpError(f"{what}: {os.strerror(err)}")
    return rc


def prog_id(fd: int) -> int:
    """Kernel id of the program behind ``fd``."""
    buf = ct.create_string_buffer(256)
    n = ct.c_uint32(256)
    check(lib().bpf_obj_get_info_by_fd(fd, ct.cast(buf, ct.c_void_p), ct.byref(n)), "prog info")
    return int.from_bytes(buf.raw[4:8], "little")


def num_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "number of CPUs")
