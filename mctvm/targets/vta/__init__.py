"""The VTA target: configuration, ISA and data layouts of a VTA-compatible accelerator.

    config   VTAConfig loaded from VTA's JSON; every derived size (blocks, element bytes,
             buffer depths, ISA field widths, board clock, bus width, host triple, peak GOPS)
    isa      128-bit instructions and 32-bit micro-ops: dataclasses, encode/decode, bytes,
             disassembler
    packing  NCHW <-> NCHW{b}n{c}c, OIHW <-> OIHW{o}o{i}i, accumulator and bias layouts

Plain numpy; nothing here imports TVM. The facts it follows are in the VTA spec
(apache/tvm-vta hw_spec.h, config/*.json).
"""

from .config import (
    BOARDS, CONFIG_DIR, DEFAULT_CONFIG, MEMORIES, VTAConfig, VTAConfigError, available_configs,
    default_config, load_config,
)
from .isa import (
    ISA, Alu, AluOp, DecodeError, FieldRangeError, Finish, Gemm, Insn, ISAError, Load, MemId,
    MemInsn, Module, Opcode, Store, Uop, disassemble, isa_for,
)
from .packing import (
    VTALayoutError, pack_acc, pack_activation, pack_bias, pack_weight, unpack_acc,
    unpack_activation, unpack_bias, unpack_weight,
)

__all__ = [
    "BOARDS", "CONFIG_DIR", "DEFAULT_CONFIG", "MEMORIES", "VTAConfig", "VTAConfigError",
    "available_configs", "default_config", "load_config",
    "ISA", "Alu", "AluOp", "DecodeError", "FieldRangeError", "Finish", "Gemm", "Insn",
    "ISAError", "Load", "MemId", "MemInsn", "Module", "Opcode", "Store", "Uop", "disassemble",
    "isa_for",
    "VTALayoutError", "pack_acc", "pack_activation", "pack_bias", "pack_weight", "unpack_acc",
    "unpack_activation", "unpack_bias", "unpack_weight",
]
