"""The VTA ISA: 128-bit instructions and 32-bit micro-ops, encoded bit for bit.

Instructions are dataclasses (`Load`, `Store`, `Gemm`, `Alu`, `Finish`) carrying the four
dependency flags; micro-ops are `Uop`. An `ISA` (one per `VTAConfig`, from `isa_for(cfg)`)
encodes them to Python ints (bit 0 = least significant) and decodes ints back; bytes are
little-endian, 16 per instruction and 4 per micro-op, exactly as VTA's runtime writes them
to DRAM. Field positions follow VTA's `hw_spec.h`: the fields are C bit-fields of uint64_t
words, so a field that would straddle bit 64 starts at bit 64 instead, leaving a gap. Index
widths follow the configuration's buffer depths; for the published 1x16 configuration:

    every insn  opcode[2:0] pop_prev[3] pop_next[4] push_prev[5] push_next[6]
    LOAD/STORE  memory_type[9:7] sram_base[25:10] dram_base[57:26] (gap 63:58)
                y_size[79:64] x_size[95:80] x_stride[111:96]
                y_pad_0[115:112] y_pad_1[119:116] x_pad_0[123:120] x_pad_1[127:124]
    GEMM        reset_reg[7] uop_bgn[20:8] uop_end[34:21] iter_out[48:35] iter_in[62:49]
                (gap 63) dst_factor_out[74:64] dst_factor_in[85:75] src_factor_out[96:86]
                src_factor_in[107:97] wgt_factor_out[117:108] wgt_factor_in[127:118]
    ALU         bits 62:0 as GEMM (gap 63) dst_factor_out[74:64] dst_factor_in[85:75]
                src_factor_out[96:86] src_factor_in[107:97] alu_opcode[110:108]
                use_imm[111] imm[127:112] (signed)
    FINISH      opcode and flags only
    uop         dst_idx[10:0] src_idx[21:11] wgt_idx[31:22]

Encoding refuses a value that does not fit its field (FieldRangeError names the instruction,
field, width and value); decoding refuses unknown opcodes and, unless strict=False, set bits
in the gaps.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Iterable, Optional, Sequence, Union

import numpy as np

from ...errors import MctvmError
from .config import VTAConfig, load_config

__all__ = [
    "Opcode", "MemId", "AluOp", "Module", "Field", "ISA", "isa_for",
    "Insn", "MemInsn", "Load", "Store", "Gemm", "Alu", "Finish", "Uop",
    "ISAError", "FieldRangeError", "DecodeError",
    "INS_BITS", "INS_BYTES", "UOP_BITS", "UOP_BYTES", "LOOP_ITER_WIDTH",
    "encode", "decode", "encode_uop", "decode_uop", "insns_to_bytes", "insns_from_bytes",
    "uops_to_bytes", "uops_from_bytes", "insns_to_array", "insns_from_array",
    "uops_to_array", "uops_from_array", "to_words", "from_words", "route", "disassemble",
]

INS_BITS = 128
INS_BYTES = 16
UOP_BITS = 32
UOP_BYTES = 4
_MASK128 = (1 << INS_BITS) - 1
_MASK64 = (1 << 64) - 1

# Widths fixed by the ISA (VTA's hw_spec_const.h); buffer index widths come from the config.
OPCODE_WIDTH = 3
MEMOP_ID_WIDTH = 3
MEMOP_SRAM_ADDR_WIDTH = 16
MEMOP_DRAM_ADDR_WIDTH = 32
MEMOP_SIZE_WIDTH = 16
MEMOP_STRIDE_WIDTH = 16
MEMOP_PAD_WIDTH = 4
LOOP_ITER_WIDTH = 14
ALU_OPCODE_WIDTH = 3
ALU_IMM_WIDTH = 16


class Opcode(IntEnum):
    LOAD = 0
    STORE = 1
    GEMM = 2
    FINISH = 3
    ALU = 4


class MemId(IntEnum):
    UOP = 0
    WGT = 1
    INP = 2
    ACC = 3
    OUT = 4
    ACC_8BIT = 5   # only in some VTA variants


class AluOp(IntEnum):
    MIN = 0
    MAX = 1
    ADD = 2
    SHR = 3
    MUL = 4   # absent in the Xilinx and Chisel hardware


class Module(IntEnum):
    """The three VTA modules that fetch routes instructions to."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2


class ISAError(MctvmError, ValueError):
    """An instruction or micro-op cannot be encoded or decoded."""


class FieldRangeError(ISAError):
    """A field value does not fit its bit width (names the field, its width and the value)."""

    def __init__(self, kind: str, field: "Field", value):
        self.kind, self.field, self.value = kind, field.name, value
        self.width = field.width
        lo, hi = field.min_value, field.max_value
        sign = "signed " if field.signed else ""
        super().__init__(
            f"{kind}.{field.name} = {value} does not fit its {sign}{field.width}-bit field "
            f"(bits {field.hi}:{field.lo}); allowed {lo}..{hi}")


class DecodeError(ISAError):
    """A bit pattern is not a valid instruction or micro-op."""


# ---------------------------------------------------------------------- fields and layouts
@dataclass(frozen=True)
class Field:
    """A bit field: bits [lo, lo + width) of the instruction (or micro-op) word."""

    name: str
    lo: int
    width: int
    signed: bool = False

    @property
    def hi(self) -> int:
        return self.lo + self.width - 1

    @property
    def mask(self) -> int:
        """The field's bits in place."""
        return ((1 << self.width) - 1) << self.lo

    @property
    def min_value(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def insert(self, kind: str, value) -> int:
        """The value placed at the field's bits; FieldRangeError if it does not fit."""
        if isinstance(value, bool):
            value = int(value)
        try:
            v = operator.index(value)
        except TypeError:
            raise ISAError(
                f"{kind}.{self.name} must be an integer, got {type(value).__name__} "
                f"{value!r}") from None
        if not self.min_value <= v <= self.max_value:
            raise FieldRangeError(kind, self, v)
        return (v & ((1 << self.width) - 1)) << self.lo

    def extract(self, word: int) -> int:
        v = (word >> self.lo) & ((1 << self.width) - 1)
        if self.signed and v >> (self.width - 1):
            v -= 1 << self.width
        return v


def _place(spec: Sequence[tuple], unit: int, total: int, kind: str) -> tuple:
    """Lay out (name, width[, signed]) fields like C bit-fields of `unit`-bit words: a field
    that would straddle a word boundary starts at the next word."""
    fields, pos = [], 0
    for entry in spec:
        name, width = entry[0], entry[1]
        signed = bool(entry[2]) if len(entry) > 2 else False
        if (pos % unit) + width > unit:
            pos = (pos // unit + 1) * unit
        fields.append(Field(name, pos, width, signed))
        pos += width
    if pos > total:
        raise ISAError(f"{kind} fields need {pos} bits, more than {total}")
    return tuple(fields)


_DEP_FIELDS = (("pop_prev", 1), ("pop_next", 1), ("push_prev", 1), ("push_next", 1))
DEP_FLAGS = tuple(name for name, _ in _DEP_FIELDS)


# ---------------------------------------------------------------------- instruction objects
@dataclass(kw_only=True)
class Insn:
    """Base of every instruction: the four dependency-token flags.

    pop_prev / pop_next: wait for a token from the previous / next module before running;
    push_prev / push_next: send a token to the previous / next module after running
    (load -> compute -> store; see the spec's token table).
    """

    pop_prev: bool = False
    pop_next: bool = False
    push_prev: bool = False
    push_next: bool = False

    OPCODE: ClassVar[Opcode]
    KIND: ClassVar[str]           # layout name: "MEM", "GEMM", "ALU", "FINISH"

    @property
    def opcode(self) -> Opcode:
        return self.OPCODE

    @property
    def name(self) -> str:
        return self.OPCODE.name

    def fields(self) -> dict:
        """The instruction's own fields (without opcode and dependency flags), in ISA order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in DEP_FLAGS}

    def deps(self) -> dict:
        return {name: bool(getattr(self, name)) for name in DEP_FLAGS}

    def encode(self, cfg: Optional[VTAConfig] = None) -> int:
        return isa_for(cfg).encode(self)

    def to_bytes(self, cfg: Optional[VTAConfig] = None) -> bytes:
        return isa_for(cfg).encode(self).to_bytes(INS_BYTES, "little")


@dataclass(kw_only=True)
class MemInsn(Insn):
    """LOAD/STORE: a 2-D strided DMA of y_size rows of x_size elements (DRAM row stride
    x_stride), zero-padded on LOAD. Addresses, sizes and strides count elements of the memory
    named by memory_type, not bytes. x_size = 0 makes a no-op that only moves tokens."""

    memory_type: int = 0
    sram_base: int = 0
    dram_base: int = 0
    y_size: int = 0
    x_size: int = 0
    x_stride: int = 0
    y_pad_0: int = 0
    y_pad_1: int = 0
    x_pad_0: int = 0
    x_pad_1: int = 0

    KIND: ClassVar[str] = "MEM"


@dataclass(kw_only=True)
class Load(MemInsn):
    OPCODE: ClassVar[Opcode] = Opcode.LOAD


@dataclass(kw_only=True)
class Store(MemInsn):
    OPCODE: ClassVar[Opcode] = Opcode.STORE


@dataclass(kw_only=True)
class Gemm(Insn):
    """GEMM over uops [uop_bgn, uop_end) in an iter_out x iter_in loop nest; each uop index is
    offset by i*factor_out + j*factor_in. reset_reg writes zeros instead of accumulating."""

    reset_reg: bool = False
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 0
    iter_in: int = 0
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0

    OPCODE: ClassVar[Opcode] = Opcode.GEMM
    KIND: ClassVar[str] = "GEMM"


@dataclass(kw_only=True)
class Alu(Insn):
    """ALU: acc[dst] = op(acc[dst], imm if use_imm else acc[src]) on every lane, over the same
    loop nest as GEMM (src indexes the accumulator). imm is a signed 16-bit immediate."""

    reset_reg: bool = False
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 0
    iter_in: int = 0
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    alu_opcode: int = 0
    use_imm: bool = False
    imm: int = 0

    OPCODE: ClassVar[Opcode] = Opcode.ALU
    KIND: ClassVar[str] = "ALU"


@dataclass(kw_only=True)
class Finish(Insn):
    """End of the program (opcode and flags only)."""

    OPCODE: ClassVar[Opcode] = Opcode.FINISH
    KIND: ClassVar[str] = "FINISH"


@dataclass(frozen=True)
class Uop:
    """A micro-op: accumulator row dst_idx, source row src_idx (input buffer for GEMM,
    accumulator for ALU), weight row wgt_idx (GEMM only)."""

    dst_idx: int = 0
    src_idx: int = 0
    wgt_idx: int = 0

    def encode(self, cfg: Optional[VTAConfig] = None) -> int:
        return isa_for(cfg).encode_uop(self)


_CLASSES = {Opcode.LOAD: Load, Opcode.STORE: Store, Opcode.GEMM: Gemm, Opcode.ALU: Alu,
            Opcode.FINISH: Finish}

InsnLike = Union[Insn, int]
UopLike = Union[Uop, int, tuple]


def route(insn: Insn) -> Module:
    """The module fetch sends an instruction to: STORE -> store; LOAD of INP/WGT -> load;
    LOAD of UOP/ACC (and any other memory), GEMM, ALU, FINISH -> compute."""
    if isinstance(insn, Store):
        return Module.STORE
    if isinstance(insn, Load) and insn.memory_type in (MemId.INP, MemId.WGT):
        return Module.LOAD
    return Module.COMPUTE


# ---------------------------------------------------------------------- the ISA of a config
class ISA:
    """Encoder/decoder/disassembler for one VTA configuration (index widths follow its
    buffer depths). Get one with `isa_for(cfg)`."""

    def __init__(self, cfg: Optional[VTAConfig] = None):
        cfg = load_config(cfg)
        self.cfg = cfg
        a, i, w, u = (cfg.LOG_ACC_BUFF_DEPTH, cfg.LOG_INP_BUFF_DEPTH, cfg.LOG_WGT_BUFF_DEPTH,
                      cfg.LOG_UOP_BUFF_DEPTH)
        head = (("opcode", OPCODE_WIDTH),) + _DEP_FIELDS
        loop = (("reset_reg", 1), ("uop_bgn", u), ("uop_end", u + 1),
                ("iter_out", LOOP_ITER_WIDTH), ("iter_in", LOOP_ITER_WIDTH))
        self.layouts = {
            "MEM": _place(head + (
                ("memory_type", MEMOP_ID_WIDTH), ("sram_base", MEMOP_SRAM_ADDR_WIDTH),
                ("dram_base", MEMOP_DRAM_ADDR_WIDTH), ("y_size", MEMOP_SIZE_WIDTH),
                ("x_size", MEMOP_SIZE_WIDTH), ("x_stride", MEMOP_STRIDE_WIDTH),
                ("y_pad_0", MEMOP_PAD_WIDTH), ("y_pad_1", MEMOP_PAD_WIDTH),
                ("x_pad_0", MEMOP_PAD_WIDTH), ("x_pad_1", MEMOP_PAD_WIDTH)), 64, INS_BITS, "MEM"),
            "GEMM": _place(head + loop + (
                ("dst_factor_out", a), ("dst_factor_in", a),
                ("src_factor_out", i), ("src_factor_in", i),
                ("wgt_factor_out", w), ("wgt_factor_in", w)), 64, INS_BITS, "GEMM"),
            "ALU": _place(head + loop + (
                ("dst_factor_out", a), ("dst_factor_in", a),
                ("src_factor_out", a), ("src_factor_in", a),
                ("alu_opcode", ALU_OPCODE_WIDTH), ("use_imm", 1),
                ("imm", ALU_IMM_WIDTH, True)), 64, INS_BITS, "ALU"),
            "FINISH": _place(head, 64, INS_BITS, "FINISH"),
        }
        # src_idx indexes the input buffer (GEMM) or the accumulator (ALU): wide enough for both
        self.uop_layout = _place((("dst_idx", a), ("src_idx", max(a, i)), ("wgt_idx", w)),
                                 UOP_BITS, UOP_BITS, "uop")
        self._fields = {kind: {f.name: f for f in fs} for kind, fs in self.layouts.items()}
        self._reserved = {kind: _MASK128 & ~functools.reduce(operator.or_, (f.mask for f in fs))
                          for kind, fs in self.layouts.items()}
        self._uop_reserved = ((1 << UOP_BITS) - 1) & ~functools.reduce(
            operator.or_, (f.mask for f in self.uop_layout))

    def __repr__(self):
        return f"ISA({self.cfg.TARGET_MODEL})"

    # -------------------------------------------------------------- layout queries
    def layout(self, kind: Union[str, Opcode, type, Insn]) -> tuple:
        """The fields of an instruction kind ('MEM'/'LOAD'/'STORE', 'GEMM', 'ALU', 'FINISH',
        an Opcode, an instruction class or object) with their bit positions."""
        return self.layouts[self._kind(kind)]

    def field(self, kind, name: str) -> Field:
        return self._fields[self._kind(kind)][name]

    def reserved_mask(self, kind) -> int:
        """Bits that no field of this kind uses (the gaps); they encode as zero."""
        return self._reserved[self._kind(kind)]

    @staticmethod
    def _kind(kind) -> str:
        if isinstance(kind, Insn) or (isinstance(kind, type) and issubclass(kind, Insn)):
            return kind.KIND
        if isinstance(kind, Opcode):
            return _CLASSES[kind].KIND
        name = str(kind).upper()
        if name in ("LOAD", "STORE"):
            return "MEM"
        if name in ("MEM", "GEMM", "ALU", "FINISH"):
            return name
        raise ISAError(f"unknown instruction kind {kind!r}; use LOAD, STORE, GEMM, ALU, FINISH")

    # -------------------------------------------------------------- instructions
    def encode(self, insn: Insn) -> int:
        """The 128-bit instruction word as a Python int (bit 0 = least significant)."""
        if not isinstance(insn, Insn) or type(insn) in (Insn, MemInsn):
            raise ISAError(f"cannot encode {insn!r}: expected a Load, Store, Gemm, Alu or Finish")
        name = insn.OPCODE.name
        word = 0
        for f in self.layouts[insn.KIND]:
            value = insn.OPCODE if f.name == "opcode" else getattr(insn, f.name)
            word |= f.insert(name, value)
        return word

    def decode(self, word: int, strict: bool = True) -> Insn:
        """An instruction object from a 128-bit word. strict: refuse set bits in the gaps."""
        word = self._as_word(word, INS_BITS, "instruction")
        op = word & ((1 << OPCODE_WIDTH) - 1)
        try:
            cls = _CLASSES[Opcode(op)]
        except ValueError:
            raise DecodeError(
                f"unknown opcode {op} in instruction 0x{word:032x}; known opcodes: "
                + ", ".join(f"{o.name}={o.value}" for o in Opcode)) from None
        if strict and word & self._reserved[cls.KIND]:
            bits = _bit_ranges(word & self._reserved[cls.KIND])
            gaps = _bit_ranges(self._reserved[cls.KIND])
            raise DecodeError(
                f"{cls.OPCODE.name} instruction 0x{word:032x} has bits set outside its fields "
                f"(bits {bits}; its unused bits are {gaps}); pass strict=False to ignore them")
        values = {}
        for f in self.layouts[cls.KIND]:
            if f.name == "opcode":
                continue
            v = f.extract(word)
            if f.name in DEP_FLAGS or f.name in ("reset_reg", "use_imm"):
                v = bool(v)
            elif f.name == "memory_type" and v in MemId._value2member_map_:
                v = MemId(v)
            elif f.name == "alu_opcode" and v in AluOp._value2member_map_:
                v = AluOp(v)
            values[f.name] = v
        return cls(**values)

    # -------------------------------------------------------------- micro-ops
    def encode_uop(self, uop: UopLike) -> int:
        uop = _as_uop(uop)
        word = 0
        for f in self.uop_layout:
            word |= f.insert("uop", getattr(uop, f.name))
        return word

    def decode_uop(self, word: int, strict: bool = True) -> Uop:
        word = self._as_word(word, UOP_BITS, "micro-op")
        if strict and word & self._uop_reserved:
            raise DecodeError(f"micro-op 0x{word:08x} has bits set outside its fields "
                              f"(bits {_bit_ranges(word & self._uop_reserved)})")
        return Uop(**{f.name: f.extract(word) for f in self.uop_layout})

    @staticmethod
    def _as_word(word, bits: int, what: str) -> int:
        try:
            w = operator.index(word)
        except TypeError:
            raise DecodeError(f"a {what} word must be an integer, got "
                              f"{type(word).__name__}") from None
        if not 0 <= w < (1 << bits):
            raise DecodeError(f"a {what} word must be in 0..2**{bits}-1, got {w:#x}")
        return w

    # -------------------------------------------------------------- streams
    def insns_to_bytes(self, insns: Iterable[InsnLike]) -> bytes:
        """Little-endian, 16 bytes per instruction: the DRAM image VTA's fetch module reads."""
        return b"".join(self._word(x).to_bytes(INS_BYTES, "little") for x in insns)

    def insns_from_bytes(self, data: bytes, strict: bool = True) -> list:
        data = bytes(data)
        if len(data) % INS_BYTES:
            raise DecodeError(f"an instruction stream is a multiple of {INS_BYTES} bytes, "
                              f"got {len(data)}")
        return [self.decode(int.from_bytes(data[k:k + INS_BYTES], "little"), strict)
                for k in range(0, len(data), INS_BYTES)]

    def insns_to_array(self, insns: Iterable[InsnLike]) -> np.ndarray:
        """(n, 2) uint64: [:, 0] bits 63..0, [:, 1] bits 127..64 (C-contiguous, so
        .tobytes() on a little-endian host is the instruction stream)."""
        words = [to_words(self._word(x)) for x in insns]
        return np.array(words, dtype="<u8").reshape(len(words), 2)

    def insns_from_array(self, array, strict: bool = True) -> list:
        arr = np.asarray(array)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DecodeError(f"an instruction array has shape (n, 2), got {arr.shape}")
        return [self.decode(from_words(int(lo), int(hi)), strict) for lo, hi in arr.tolist()]

    def uops_to_bytes(self, uops: Iterable[UopLike]) -> bytes:
        """Little-endian, 4 bytes per micro-op: the DRAM image of LOAD UOP."""
        return self.uops_to_array(uops).tobytes()

    def uops_from_bytes(self, data: bytes, strict: bool = True) -> list:
        data = bytes(data)
        if len(data) % UOP_BYTES:
            raise DecodeError(f"a micro-op stream is a multiple of {UOP_BYTES} bytes, "
                              f"got {len(data)}")
        return self.uops_from_array(np.frombuffer(data, dtype="<u4"), strict)

    def uops_to_array(self, uops: Iterable[UopLike]) -> np.ndarray:
        """(n,) little-endian uint32."""
        return np.array([self.encode_uop(u) for u in uops], dtype="<u4")

    def uops_from_array(self, array, strict: bool = True) -> list:
        return [self.decode_uop(int(w), strict) for w in np.asarray(array).reshape(-1).tolist()]

    def _word(self, x: InsnLike) -> int:
        return self.encode(x) if isinstance(x, Insn) else self._as_word(x, INS_BITS,
                                                                         "instruction")

    # -------------------------------------------------------------- disassembler
    def format_insn(self, insn: InsnLike, deps_width: int = 0) -> str:
        """One readable line: opcode (and memory or ALU op), dependency flags, fields."""
        if not isinstance(insn, Insn):
            insn = self.decode(insn, strict=False)
        deps = _deps_text(insn)
        name = insn.OPCODE.name
        if isinstance(insn, MemInsn):
            mem = _enum_name(MemId, insn.memory_type)
            head = f"{name:<6} {mem:<4}"
            body = (f"sram_base=0x{insn.sram_base:04x} dram_base=0x{insn.dram_base:08x} "
                    f"y_size={insn.y_size} x_size={insn.x_size} x_stride={insn.x_stride} "
                    f"y_pad_0={insn.y_pad_0} y_pad_1={insn.y_pad_1} "
                    f"x_pad_0={insn.x_pad_0} x_pad_1={insn.x_pad_1}")
            if insn.x_size == 0:
                body += "  (no-op: tokens only)"
        elif isinstance(insn, (Gemm, Alu)):
            if isinstance(insn, Alu):
                head = f"{name:<6} {_enum_name(AluOp, insn.alu_opcode):<4}"
            else:
                head = f"{name:<6} {'':<4}"
            body = (f"reset_reg={int(insn.reset_reg)} uop_bgn={insn.uop_bgn} "
                    f"uop_end={insn.uop_end} iter_out={insn.iter_out} iter_in={insn.iter_in} "
                    f"dst_factor_out={insn.dst_factor_out} dst_factor_in={insn.dst_factor_in} "
                    f"src_factor_out={insn.src_factor_out} src_factor_in={insn.src_factor_in}")
            if isinstance(insn, Gemm):
                body += (f" wgt_factor_out={insn.wgt_factor_out} "
                         f"wgt_factor_in={insn.wgt_factor_in}")
            else:
                body += f" use_imm={int(insn.use_imm)} imm={insn.imm}"
        else:
            head, body = f"{name:<6} {'':<4}", ""
        return f"{head} deps={deps:<{deps_width}} {body}".rstrip()

    def disassemble(self, insns: Iterable[InsnLike] = (), uops: Optional[Iterable[UopLike]] = None,
                    per_line: int = 8) -> str:
        """A program listing: one line per instruction, then the micro-ops compactly as
        dst,src,wgt triples, `per_line` to a line."""
        lines = []
        insns = [x if isinstance(x, Insn) else self.decode(x, strict=False) for x in insns]
        if insns:
            width = max(len(_deps_text(x)) for x in insns)
            lines.append(f"; {len(insns)} instructions ({self.cfg.TARGET_MODEL})")
            lines += [f"{k:5d}  {self.format_insn(x, width)}" for k, x in enumerate(insns)]
        if uops is not None:
            uops = [u if isinstance(u, Uop) else
                    (self.decode_uop(u, strict=False) if not isinstance(u, tuple) else Uop(*u))
                    for u in uops]
            lines.append(f"; {len(uops)} micro-ops (dst,src,wgt)")
            for k in range(0, len(uops), per_line):
                row = "  ".join(f"{u.dst_idx},{u.src_idx},{u.wgt_idx}"
                                for u in uops[k:k + per_line])
                lines.append(f"{k:5d}  {row}")
        return "\n".join(lines)


def _deps_text(insn: Insn) -> str:
    return ",".join(n for n in DEP_FLAGS if getattr(insn, n)) or "-"


def _enum_name(enum, value) -> str:
    return enum(value).name if value in enum._value2member_map_ else f"?{int(value)}"


def _bit_ranges(mask: int) -> str:
    """'63:58, 127' style description of the set bits of a mask."""
    out, bit = [], 0
    while mask >> bit:
        if (mask >> bit) & 1:
            start = bit
            while (mask >> (bit + 1)) & 1:
                bit += 1
            out.append(str(bit) if bit == start else f"{bit}:{start}")
        bit += 1
    return ", ".join(out)


def _as_uop(u: UopLike) -> Uop:
    if isinstance(u, Uop):
        return u
    if isinstance(u, tuple):
        return Uop(*u)
    raise ISAError(f"expected a Uop or a (dst_idx, src_idx, wgt_idx) tuple, got {u!r}")


# ---------------------------------------------------------------------- module-level helpers
@functools.lru_cache(maxsize=None)
def _isa_cached(cfg: VTAConfig) -> ISA:
    return ISA(cfg)


def isa_for(cfg=None) -> ISA:
    """The ISA of a configuration (a VTAConfig, a shipped name, a path, a dict; None: default)."""
    return _isa_cached(load_config(cfg))


def to_words(value: int) -> tuple:
    """A 128-bit instruction word as two uint64 words (low, high)."""
    value = operator.index(value)
    if not 0 <= value <= _MASK128:
        raise ISAError(f"a 128-bit word must be in 0..2**128-1, got {value:#x}")
    return value & _MASK64, value >> 64


def from_words(lo: int, hi: int) -> int:
    """The 128-bit word from its low and high uint64 words."""
    lo, hi = int(lo), int(hi)
    if not (0 <= lo <= _MASK64 and 0 <= hi <= _MASK64):
        raise ISAError(f"uint64 words must be in 0..2**64-1, got {lo:#x}, {hi:#x}")
    return lo | (hi << 64)


def encode(insn: Insn, cfg=None) -> int:
    return isa_for(cfg).encode(insn)


def decode(word: int, cfg=None, strict: bool = True) -> Insn:
    return isa_for(cfg).decode(word, strict)


def encode_uop(uop: UopLike, cfg=None) -> int:
    return isa_for(cfg).encode_uop(uop)


def decode_uop(word: int, cfg=None, strict: bool = True) -> Uop:
    return isa_for(cfg).decode_uop(word, strict)


def insns_to_bytes(insns, cfg=None) -> bytes:
    return isa_for(cfg).insns_to_bytes(insns)


def insns_from_bytes(data: bytes, cfg=None, strict: bool = True) -> list:
    return isa_for(cfg).insns_from_bytes(data, strict)


def insns_to_array(insns, cfg=None) -> np.ndarray:
    return isa_for(cfg).insns_to_array(insns)


def insns_from_array(array, cfg=None, strict: bool = True) -> list:
    return isa_for(cfg).insns_from_array(array, strict)


def uops_to_bytes(uops, cfg=None) -> bytes:
    return isa_for(cfg).uops_to_bytes(uops)


def uops_from_bytes(data: bytes, cfg=None, strict: bool = True) -> list:
    return isa_for(cfg).uops_from_bytes(data, strict)


def uops_to_array(uops, cfg=None) -> np.ndarray:
    return isa_for(cfg).uops_to_array(uops)


def uops_from_array(array, cfg=None, strict: bool = True) -> list:
    return isa_for(cfg).uops_from_array(array, strict)


def disassemble(insns=(), uops=None, cfg=None, per_line: int = 8) -> str:
    return isa_for(cfg).disassemble(insns, uops, per_line)
