"""Key and value packing for the XDP maps, frames, and the --ebpf program text (no root)."""

from __future__ import annotations

import ctypes as ct
import re
import struct
from pathlib import Path

import dns.name

from zoneslice.xdp import frames, maps
from zoneslice.xdp.loader import Options, bpf_dir, program_text


def test_keys_are_reversed_lowercased_names_after_the_variant():
    k = maps.exact_key(b"\x03WwW\x07Example\x03com\x00", 28, maps.V_EDNS_DO)
    assert len(k) == 4 + maps.KEY_DATA
    assert struct.unpack_from("=I", k)[0] == 28
    assert k[4] == maps.V_EDNS_DO
    assert k[5:22] == b"\x00moc\x03elpmaxe\x07www\x03"
    assert k[22:] == bytes(len(k) - 22)


def test_a_cut_is_a_bit_prefix_of_every_name_below_it():
    cut = dns.name.from_text("example.com.").to_wire()
    d = maps.deleg_key(cut, maps.V_PLAIN)
    plen = struct.unpack_from("=I", d)[0]
    assert plen == 8 * (1 + len(cut))
    below = maps.exact_key(b"\x01a\x03WWW" + cut, 1, maps.V_PLAIN)
    assert below[4 : 4 + plen // 8] == d[4 : 4 + plen // 8]
    other = maps.exact_key(b"\x08xexample\x03com\x00", 1, maps.V_PLAIN)
    assert other[4 : 4 + plen // 8] != d[4 : 4 + plen // 8]


def test_value_layout_matches_the_c_struct():
    header = (bpf_dir() / "zs_maps.h").read_text()
    assert f"#define ZS_MAX_FIX {maps.MAX_FIX}" in header
    assert f"#define ZS_BODY_MAX {maps.BODY_MAX}" in header
    names = re.findall(r"#define ZS_C_([A-Z_]+) (\d+)", header)
    counters = {n.lower(): int(v) for n, v in names if n != "MAX"}
    assert counters == {n: i for i, n in enumerate(maps.COUNTERS)}
    v = maps.AnswerValue(0x8400, 0x0110, 1, 0, 1, b"\xc0\x0c" + b"x" * 31, [(0, 4)], 11)
    packed = v.pack()
    assert len(packed) == ct.sizeof(maps.answer_struct())
    a = maps.answer_struct().from_buffer_copy(packed)
    assert (a.flags, a.copy_mask, a.len, a.nfix, a.deleg_len) == (0x8400, 0x0110, 33, 1, 11)
    assert bytes(a.body[:2]) == b"\0\0", "fix-up words are zero in the stored body"
    assert a.csum == maps.ones_sum(b"\0\0" + b"x" * 31)
    assert (a.fix_pos[0], a.fix_val[0]) == (0, 4)


def test_unpack_inverts_pack_and_keeps_the_hit_slot():
    v = maps.AnswerValue(0x8400, 0x0110, 1, 2, 0, b"\x01\x02\xc0\x0c\x05", [(2, 3)], 4, 777)
    back = maps.AnswerValue.unpack(v.pack())
    assert back.pack() == v.pack()
    assert (back.slot, back.deleg_len, back.fixups) == (777, 4, [(2, 3)])
    assert back.body == b"\x01\x02\x00\x00\x05"  # fix-up words are stored as zero
    assert maps.answer_struct().slot.offset == 18


def test_render_rewrites_pointers_for_the_cut_offset():
    body = b"\xc0\x0c\x00\x02\x00\x01\x00\x00\x00\x3c\x00\x06\x03ns1\xc0\x0c"
    v = maps.AnswerValue(0x8000, 0x0100, 0, 1, 0, body, [(0, 0), (16, 0)], 13)
    question = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    msg = v.render(struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0), question, cut=4)
    assert msg[:4] == b"\x00\x07\x81\x00"
    assert msg[12 + len(question) : 14 + len(question)] == b"\xc0\x10"
    assert msg.endswith(b"\x03ns1\xc0\x10")


def test_frames_round_trip_with_valid_checksums():
    for src, dst in (("10.53.0.2", "10.53.0.1"), ("fd00:53::2", "fd00:53::1")):
        fr = frames.udp_frame(src, dst, 40000, 53, b"hello dns", vlan=5)
        u = frames.parse_udp(fr)
        assert u is not None and u.problems == []
        assert (u.src, u.dst, u.sport, u.dport, u.payload, u.vlans) == (
            src,
            dst,
            40000,
            53,
            b"hello dns",
            [5],
        )
        bad = fr[:-1] + bytes([fr[-1] ^ 1])
        assert "bad UDP checksum" in frames.parse_udp(bad).problems
        back = frames.udp_frame(
            dst, src, 53, 40000, b"x", vlan=5, src_mac=u.dst_mac, dst_mac=u.src_mac
        )
        assert frames.reply_problems(u, frames.parse_udp(back)) == []


def test_program_text_inlines_the_header_and_sizes():
    text = program_text(Options(max_exact=77, body_max=1000))
    assert "#define ZS_MAX_EXACT 77" in text and "#define ZS_BODY_MAX 1000" in text
    assert '#include "zs_maps.h"' not in text
    assert Path(bpf_dir(), "hot_answer.c").read_text().split('#include "zs_maps.h"')[1] in text
