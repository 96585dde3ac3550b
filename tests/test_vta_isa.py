"""VTA ISA: bit positions from the spec, known patterns, round trips, range checks, bytes,
the disassembler."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mctvm.targets.vta import isa as visa
from mctvm.targets.vta.isa import (
    Alu, AluOp, DecodeError, FieldRangeError, Finish, Gemm, ISAError, Load, MemId, Module,
    Opcode, Store, Uop, decode, decode_uop, disassemble, encode, encode_uop, isa_for,
)

ISA16 = isa_for("sim")
ISA48 = isa_for("sim_4x8")

# The spec's table, section 2: name -> (hi, lo), for the 1x16 configuration.
HEAD = {"opcode": (2, 0), "pop_prev": (3, 3), "pop_next": (4, 4), "push_prev": (5, 5),
        "push_next": (6, 6)}
SPEC_MEM = {**HEAD, "memory_type": (9, 7), "sram_base": (25, 10), "dram_base": (57, 26),
            "y_size": (79, 64), "x_size": (95, 80), "x_stride": (111, 96),
            "y_pad_0": (115, 112), "y_pad_1": (119, 116), "x_pad_0": (123, 120),
            "x_pad_1": (127, 124)}
LOOP = {"reset_reg": (7, 7), "uop_bgn": (20, 8), "uop_end": (34, 21), "iter_out": (48, 35),
        "iter_in": (62, 49)}
SPEC_GEMM = {**HEAD, **LOOP, "dst_factor_out": (74, 64), "dst_factor_in": (85, 75),
             "src_factor_out": (96, 86), "src_factor_in": (107, 97),
             "wgt_factor_out": (117, 108), "wgt_factor_in": (127, 118)}
SPEC_ALU = {**HEAD, **LOOP, "dst_factor_out": (74, 64), "dst_factor_in": (85, 75),
            "src_factor_out": (96, 86), "src_factor_in": (107, 97), "alu_opcode": (110, 108),
            "use_imm": (111, 111), "imm": (127, 112)}
SPEC_FINISH = dict(HEAD)
SPEC_UOP = {"dst_idx": (10, 0), "src_idx": (21, 11), "wgt_idx": (31, 22)}


def positions(fields):
    return {f.name: (f.hi, f.lo) for f in fields}


@pytest.mark.parametrize("kind, spec", [("LOAD", SPEC_MEM), ("STORE", SPEC_MEM),
                                        ("GEMM", SPEC_GEMM), ("ALU", SPEC_ALU),
                                        ("FINISH", SPEC_FINISH)])
def test_layout_is_the_spec(kind, spec):
    assert positions(ISA16.layout(kind)) == spec
    # the gaps: everything not in a field
    used = 0
    for hi, lo in spec.values():
        used |= ((1 << (hi - lo + 1)) - 1) << lo
    assert ISA16.reserved_mask(kind) == ((1 << 128) - 1) & ~used


def test_gaps_where_the_spec_puts_them():
    assert ISA16.reserved_mask("LOAD") == ((1 << 6) - 1) << 58          # gap[63:58]
    assert ISA16.reserved_mask("GEMM") == 1 << 63                         # gap[63]
    assert ISA16.reserved_mask("ALU") == 1 << 63
    assert positions(ISA16.uop_layout) == SPEC_UOP
    assert ISA16.field("ALU", "imm").signed


def test_batched_layout_follows_the_buffer_depths():
    # 4x8: acc/inp depth 2**10, wgt 2**12 -> narrower dst/src factors, wider wgt factors
    gemm = positions(ISA48.layout("GEMM"))
    assert {k: gemm[k] for k in LOOP} == LOOP
    assert gemm["dst_factor_out"] == (73, 64) and gemm["wgt_factor_in"] == (127, 116)
    assert positions(ISA48.uop_layout) == {"dst_idx": (9, 0), "src_idx": (19, 10),
                                           "wgt_idx": (31, 20)}
    assert positions(ISA48.layout("LOAD")) == SPEC_MEM


# ---------------------------------------------------------------------- known bit patterns
def bit(n):
    return 1 << n


@pytest.mark.parametrize("insn, word", [
    (Load(), 0),
    (Load(x_size=1), bit(80)),
    (Store(x_size=1), 1 | bit(80)),
    (Load(pop_prev=True), bit(3)),
    (Load(pop_next=True), bit(4)),
    (Load(push_prev=True), bit(5)),
    (Load(push_next=True), bit(6)),
    (Load(memory_type=MemId.INP), 2 << 7),
    (Load(memory_type=MemId.OUT), 4 << 7),
    (Load(sram_base=1), bit(10)),
    (Load(sram_base=0xFFFF), 0xFFFF << 10),
    (Load(dram_base=1), bit(26)),
    (Load(dram_base=0xFFFFFFFF), 0xFFFFFFFF << 26),
    (Load(y_size=1), bit(64)),
    (Load(x_stride=1), bit(96)),
    (Load(y_pad_0=1), bit(112)),
    (Load(y_pad_1=1), bit(116)),
    (Load(x_pad_0=1), bit(120)),
    (Load(x_pad_1=15), 15 << 124),
    (Gemm(), 2),
    (Gemm(reset_reg=True), 2 | bit(7)),
    (Gemm(uop_bgn=1), 2 | bit(8)),
    (Gemm(uop_bgn=2**13 - 1), 2 | ((2**13 - 1) << 8)),
    (Gemm(uop_end=1), 2 | bit(21)),
    (Gemm(uop_end=2**14 - 1), 2 | (sum(bit(k) for k in range(21, 35)))),
    (Gemm(iter_out=1), 2 | bit(35)),
    (Gemm(iter_in=1), 2 | bit(49)),
    (Gemm(dst_factor_out=1), 2 | bit(64)),
    (Gemm(dst_factor_in=1), 2 | bit(75)),
    (Gemm(src_factor_out=1), 2 | bit(86)),
    (Gemm(src_factor_in=1), 2 | bit(97)),
    (Gemm(wgt_factor_out=1), 2 | bit(108)),
    (Gemm(wgt_factor_in=1), 2 | bit(118)),
    (Gemm(wgt_factor_in=1023), 2 | (1023 << 118)),
    (Alu(), 4),
    (Alu(src_factor_in=1), 4 | bit(97)),
    (Alu(alu_opcode=AluOp.SHR), 4 | (3 << 108)),
    (Alu(alu_opcode=AluOp.MAX), 4 | bit(108)),
    (Alu(use_imm=True), 4 | bit(111)),
    (Alu(imm=1), 4 | bit(112)),
    (Alu(imm=-1), 4 | (0xFFFF << 112)),
    (Alu(imm=-32768), 4 | (0x8000 << 112)),
    (Alu(imm=32767), 4 | (0x7FFF << 112)),
    (Finish(), 3),
    (Finish(pop_next=True), 3 | bit(4)),
    (Finish(pop_prev=True, push_next=True), 3 | bit(3) | bit(6)),
])
def test_known_bit_patterns(insn, word):
    assert encode(insn) == word
    assert decode(word) == insn
    assert type(decode(word)) is type(insn)


def test_a_whole_load_by_hand():
    insn = Load(memory_type=MemId.INP, sram_base=5, dram_base=0x1234, y_size=3, x_size=7,
                x_stride=9, y_pad_0=1, y_pad_1=2, x_pad_0=3, x_pad_1=4, pop_next=True,
                push_next=True)
    word = (0 | 1 << 4 | 1 << 6 | 2 << 7 | 5 << 10 | 0x1234 << 26 | 3 << 64 | 7 << 80
            | 9 << 96 | 1 << 112 | 2 << 116 | 3 << 120 | 4 << 124)
    assert encode(insn) == word
    assert insn.to_bytes() == word.to_bytes(16, "little")


def test_a_whole_gemm_and_alu_by_hand():
    g = Gemm(pop_prev=True, push_next=True, uop_bgn=10, uop_end=13, iter_out=4, iter_in=2,
             dst_factor_out=16, dst_factor_in=1, src_factor_out=18, src_factor_in=1,
             wgt_factor_out=0, wgt_factor_in=9)
    word = (2 | 1 << 3 | 1 << 6 | 10 << 8 | 13 << 21 | 4 << 35 | 2 << 49 | 16 << 64 | 1 << 75
            | 18 << 86 | 1 << 97 | 9 << 118)
    assert encode(g) == word
    a = Alu(uop_bgn=0, uop_end=1, iter_out=1, iter_in=64, dst_factor_in=1, src_factor_in=1,
            alu_opcode=AluOp.ADD, use_imm=True, imm=-128)
    word = (4 | 1 << 21 | 1 << 35 | 64 << 49 | 1 << 75 | 1 << 97 | 2 << 108 | 1 << 111
            | (0x10000 - 128) << 112)
    assert encode(a) == word
    assert decode(word).imm == -128


def test_finish_encoding():
    assert encode(Finish()) == Opcode.FINISH == 3
    assert Finish().to_bytes() == b"\x03" + bytes(15)
    assert decode(3) == Finish()
    # FINISH is the opcode (and flags) only: other bits are refused unless strict=False
    with pytest.raises(DecodeError, match="outside its fields"):
        decode(3 | bit(7))
    assert decode(3 | bit(100), strict=False) == Finish()


def test_decode_gives_enums():
    insn = decode(encode(Load(memory_type=2)))
    assert insn.memory_type is MemId.INP
    assert decode(encode(Alu(alu_opcode=3))).alu_opcode is AluOp.SHR
    assert isinstance(decode(encode(Gemm(reset_reg=1))).reset_reg, bool)


# ---------------------------------------------------------------------- round trips
def _strategy(isa, cls):
    fields = {}
    for f in isa.layout(cls.KIND):
        if f.name == "opcode":
            continue
        if f.width == 1:
            fields[f.name] = st.booleans()
        else:
            fields[f.name] = st.integers(f.min_value, f.max_value)
    return st.builds(cls, **fields)


@pytest.mark.parametrize("isa", [ISA16, ISA48], ids=["1x16", "4x8"])
@pytest.mark.parametrize("cls", [Load, Store, Gemm, Alu, Finish])
def test_random_round_trip(isa, cls):
    @settings(max_examples=60, deadline=None)
    @given(_strategy(isa, cls))
    def check(insn):
        word = isa.encode(insn)
        assert 0 <= word < 2**128
        assert word & isa.reserved_mask(cls) == 0
        assert word & 7 == cls.OPCODE
        back = isa.decode(word)
        assert type(back) is cls and back == insn
        assert isa.encode(back) == word
        lo, hi = visa.to_words(word)
        assert visa.from_words(lo, hi) == word

    check()


@pytest.mark.parametrize("isa", [ISA16, ISA48], ids=["1x16", "4x8"])
def test_random_uop_round_trip(isa):
    a, s, w = (f.width for f in isa.uop_layout)

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 2**a - 1), st.integers(0, 2**s - 1), st.integers(0, 2**w - 1))
    def check(dst, src, wgt):
        u = Uop(dst, src, wgt)
        word = isa.encode_uop(u)
        assert 0 <= word < 2**32
        assert isa.decode_uop(word) == u

    check()


def test_every_word_decodes_to_itself():
    rng = np.random.default_rng(1)
    for _ in range(200):
        word = int.from_bytes(rng.bytes(16), "little")
        op = word & 7
        if op > 4:
            with pytest.raises(DecodeError, match="unknown opcode"):
                decode(word)
            continue
        insn = decode(word, strict=False)
        assert encode(insn) == word & ~ISA16.reserved_mask(insn.KIND)


# ---------------------------------------------------------------------- range checks
@pytest.mark.parametrize("insn, field, width, value", [
    (Gemm(uop_bgn=2**13), "uop_bgn", 13, 8192),
    (Gemm(uop_end=2**14), "uop_end", 14, 16384),
    (Gemm(iter_out=2**14), "iter_out", 14, 16384),
    (Gemm(iter_in=-1), "iter_in", 14, -1),
    (Gemm(dst_factor_out=2048), "dst_factor_out", 11, 2048),
    (Gemm(wgt_factor_in=1024), "wgt_factor_in", 10, 1024),
    (Alu(imm=32768), "imm", 16, 32768),
    (Alu(imm=-32769), "imm", 16, -32769),
    (Alu(alu_opcode=8), "alu_opcode", 3, 8),
    (Alu(src_factor_out=2048), "src_factor_out", 11, 2048),
    (Load(sram_base=2**16), "sram_base", 16, 65536),
    (Load(dram_base=2**32), "dram_base", 32, 2**32),
    (Load(x_pad_0=16), "x_pad_0", 4, 16),
    (Store(y_size=-1), "y_size", 16, -1),
    (Store(memory_type=8), "memory_type", 3, 8),
    (Finish(pop_next=2), "pop_next", 1, 2),
])
def test_range_checks(insn, field, width, value):
    with pytest.raises(FieldRangeError) as info:
        encode(insn)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.field, err.width, err.value) == (field, width, value)
    msg = str(err)
    assert f"{insn.OPCODE.name}.{field} = {value}" in msg and f"{width}-bit" in msg


def test_range_checks_follow_the_config():
    # 4x8: the acc index factors are 10 bits, the weight ones 12
    with pytest.raises(FieldRangeError, match="dst_factor_out = 1024.*10-bit"):
        ISA48.encode(Gemm(dst_factor_out=1024))
    assert ISA48.decode(ISA48.encode(Gemm(wgt_factor_out=4095))).wgt_factor_out == 4095
    with pytest.raises(FieldRangeError, match="uop.wgt_idx = 1024 .*10-bit"):
        encode_uop(Uop(0, 0, 1024))
    assert ISA48.decode_uop(ISA48.encode_uop(Uop(0, 0, 4095))).wgt_idx == 4095


def test_bad_values_and_words():
    with pytest.raises(ISAError, match="GEMM.iter_in must be an integer, got float"):
        encode(Gemm(iter_in=1.5))
    assert encode(Gemm(iter_in=np.int64(3))) == 2 | 3 << 49
    with pytest.raises(DecodeError, match="unknown opcode 5"):
        decode(5)
    with pytest.raises(DecodeError, match="0..2\\*\\*128-1"):
        decode(1 << 128)
    with pytest.raises(DecodeError, match="bits 58, 60; its unused bits are 63:58"):
        decode(bit(60) | bit(58))
    assert decode(bit(63), strict=False) == Load()
    with pytest.raises(DecodeError, match="GEMM .*bits 63; its unused bits are 63"):
        decode(2 | bit(63))
    with pytest.raises(ISAError):
        encode(visa.MemInsn())   # neither LOAD nor STORE


# ---------------------------------------------------------------------- micro-ops
def test_uop_bit_patterns():
    assert encode_uop(Uop(1, 0, 0)) == 1
    assert encode_uop(Uop(0, 1, 0)) == bit(11)
    assert encode_uop(Uop(0, 0, 1)) == bit(22)
    assert encode_uop(Uop(2047, 2047, 1023)) == 2**32 - 1
    assert encode_uop((5, 6, 7)) == 5 | 6 << 11 | 7 << 22
    assert decode_uop(5 | 6 << 11 | 7 << 22) == Uop(5, 6, 7)
    with pytest.raises(FieldRangeError, match="uop.dst_idx = 2048 .*11-bit"):
        encode_uop(Uop(2048, 0, 0))
    with pytest.raises(FieldRangeError, match="uop.src_idx"):
        encode_uop(Uop(0, -1, 0))
    with pytest.raises(DecodeError):
        decode_uop(2**32)


# ---------------------------------------------------------------------- bytes and arrays
PROGRAM = [
    Load(memory_type=MemId.UOP, y_size=1, x_size=3, x_stride=3),
    Load(memory_type=MemId.INP, dram_base=0x1000, y_size=16, x_size=1, x_stride=16,
         x_pad_1=1, push_next=True),
    Load(memory_type=MemId.WGT, dram_base=0x20, y_size=1, x_size=9, x_stride=9,
         sram_base=3, push_next=True),
    Gemm(reset_reg=True, uop_bgn=0, uop_end=3, iter_out=4, iter_in=2, dst_factor_in=1),
    Gemm(uop_bgn=0, uop_end=3, iter_out=4, iter_in=2, dst_factor_out=16, dst_factor_in=1,
         src_factor_in=1, wgt_factor_in=1, pop_prev=True, push_prev=True),
    Alu(alu_opcode=AluOp.SHR, use_imm=True, imm=-8, uop_end=1, iter_out=1, iter_in=8,
        dst_factor_in=1, src_factor_in=1, push_next=True),
    Store(memory_type=MemId.OUT, dram_base=0x4000, y_size=8, x_size=1, x_stride=8,
          pop_prev=True, push_prev=True),
    Store(memory_type=MemId.OUT),
    Finish(pop_next=True),
]
UOPS = [Uop(1, 2, 3), Uop(4, 5, 6), Uop(7, 8, 9)]


@pytest.mark.parametrize("isa", [ISA16, ISA48], ids=["1x16", "4x8"])
def test_byte_serialisation_round_trip(isa):
    data = isa.insns_to_bytes(PROGRAM)
    assert len(data) == 16 * len(PROGRAM)
    for k, insn in enumerate(PROGRAM):
        assert int.from_bytes(data[16 * k:16 * k + 16], "little") == isa.encode(insn)
    assert isa.insns_from_bytes(data) == PROGRAM
    arr = isa.insns_to_array(PROGRAM)
    assert arr.shape == (len(PROGRAM), 2) and arr.dtype == np.dtype("<u8")
    assert arr.tobytes() == data
    assert [visa.from_words(lo, hi) for lo, hi in arr.tolist()] == [isa.encode(i)
                                                                    for i in PROGRAM]
    assert isa.insns_from_array(arr) == PROGRAM
    assert isa.insns_to_bytes([isa.encode(i) for i in PROGRAM]) == data   # ints work too

    udata = isa.uops_to_bytes(UOPS)
    assert len(udata) == 4 * len(UOPS)
    assert np.frombuffer(udata, "<u4").tolist() == [isa.encode_uop(u) for u in UOPS]
    assert isa.uops_from_bytes(udata) == UOPS
    assert isa.uops_from_array(isa.uops_to_array(UOPS)) == UOPS
    assert isa.insns_to_array([]).shape == (0, 2) and isa.uops_to_bytes([]) == b""


def test_byte_order_is_little_endian():
    data = visa.insns_to_bytes([Load(x_size=1), Finish()])
    assert data[:16] == bytes(10) + b"\x01" + bytes(5)      # bit 80 = byte 10, bit 0
    assert data[16:] == b"\x03" + bytes(15)
    assert visa.uops_to_bytes([Uop(0, 0, 1)]) == bytes([0, 0, 0x40, 0])   # bit 22
    with pytest.raises(DecodeError, match="multiple of 16"):
        visa.insns_from_bytes(bytes(17))
    with pytest.raises(DecodeError, match="multiple of 4"):
        visa.uops_from_bytes(bytes(6))


def test_routing():
    assert [visa.route(i) for i in PROGRAM] == [
        Module.COMPUTE, Module.LOAD, Module.LOAD, Module.COMPUTE, Module.COMPUTE,
        Module.COMPUTE, Module.STORE, Module.STORE, Module.COMPUTE]


# ---------------------------------------------------------------------- disassembler
def test_disassembler():
    text = disassemble(PROGRAM, UOPS * 3)
    lines = text.splitlines()
    # header, one line per instruction, header, uops 8 to a line
    assert len(lines) == 1 + len(PROGRAM) + 1 + 2
    insn_lines = lines[1:1 + len(PROGRAM)]
    assert insn_lines[0].split()[:3] == ["0", "LOAD", "UOP"]
    assert "x_size=3" in insn_lines[0] and "deps=-" in insn_lines[0]
    assert insn_lines[1].split()[1:3] == ["LOAD", "INP"]
    assert "dram_base=0x00001000" in insn_lines[1] and "x_pad_1=1" in insn_lines[1]
    assert "deps=push_next" in insn_lines[1]
    assert "GEMM" in insn_lines[3] and "reset_reg=1" in insn_lines[3]
    for field in ("uop_bgn=0", "uop_end=3", "iter_out=4", "iter_in=2", "dst_factor_out=16",
                  "wgt_factor_in=1", "deps=pop_prev,push_prev"):
        assert field in insn_lines[4]
    assert insn_lines[5].split()[1:3] == ["ALU", "SHR"]
    assert "use_imm=1" in insn_lines[5] and "imm=-8" in insn_lines[5]
    assert insn_lines[6].split()[1:3] == ["STORE", "OUT"] and "y_size=8" in insn_lines[6]
    assert "no-op" in insn_lines[7]
    assert insn_lines[8].split()[1:] == ["FINISH", "deps=pop_next"]
    assert lines[-3].startswith("; 9 micro-ops")
    assert lines[-2].split() == ["0"] + ["1,2,3", "4,5,6", "7,8,9"] * 2 + ["1,2,3", "4,5,6"]
    assert lines[-1].split() == ["8", "7,8,9"]
    # raw words disassemble the same way
    assert disassemble([encode(i) for i in PROGRAM]) == disassemble(PROGRAM)
