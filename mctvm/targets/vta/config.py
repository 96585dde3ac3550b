"""One VTA hardware configuration, loaded from JSON; every derived size follows from it.

The JSON format is VTA's own (`config/*.json` in apache/tvm-vta): the board `TARGET`, a
`HW_VER`, and the log2 sizes `LOG_*`. Everything else (block shapes, element sizes, buffer
depths, ISA field widths, the board clock, bus width, host triple, peak throughput) is derived
here, as TVM's old `vta/environment.py` and `config/pkg_config.py` did. Board parameters come
from the `TARGET`; the clock and the bus width may be overridden by the optional keys
`FPGA_FREQ` (MHz) and `LOG_BUS_WIDTH` (log2 of the AXI width in bits).

    cfg = load_config("pynq")          # a shipped name, a path to a JSON file, or a dict
    cfg.BLOCK_IN, cfg.INP_BUFF_DEPTH, cfg.INP_ELEM_BYTES   # 16, 2048, 16
    cfg.MODEL                          # '1x16_i8w8a32_15_15_18_17'
    cfg.PEAK_GOPS                      # 51.2
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from ...errors import TargetError

__all__ = [
    "VTAConfig", "VTAConfigError", "BOARDS", "DEFAULT_CONFIG", "CONFIG_DIR", "MEMORIES",
    "load_config", "default_config", "available_configs",
]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = "sim"

#: The on-chip memories, indexed by their ISA memory id (UOP=0, WGT=1, INP=2, ACC=3, OUT=4).
MEMORIES = ("uop", "wgt", "inp", "acc", "out")

# ISA facts the configuration must respect (see isa.py; VTA's hw_spec_const.h).
_INS_BITS = 128
_UOP_BITS = 32
_LOG_UOP_WIDTH = 5          # a micro-op is 32 bits
_LOOP_ITER_WIDTH = 14
_SRAM_ADDR_WIDTH = 16       # LOAD/STORE sram_base
_ALU_FIXED_BITS = 3 + 1 + 16  # alu_opcode, use_imm, imm


class VTAConfigError(TargetError):
    """A VTA configuration is malformed: names the key, the bad value and what is allowed."""

    def __init__(self, message: str, key: Optional[str] = None, source: Optional[str] = None):
        self.key = key
        self.source = source
        prefix = f"VTA config {source}: " if source else "VTA config: "
        super().__init__(prefix + message)


@dataclass(frozen=True)
class Board:
    """What a board brings: FPGA part, clock, AXI width, and the host CPU that drives it."""

    name: str
    fpga_device: str
    fpga_family: str
    freq_mhz: int
    log_bus_width: int            # log2 of the AXI data width in bits
    host_triple: str
    host_mcpu: Optional[str]
    driver: str                   # which runtime driver stack runs it


# pkg_config.py of apache/tvm-vta; sim/tsim use the pynq parameters.
BOARDS = {
    "pynq": Board("pynq", "xc7z020clg484-1", "zynq-7000", 100, 6,
                  "armv7-none-linux-gnueabihf", "cortex-a9", "pynq"),
    "ultra96": Board("ultra96", "xczu3eg-sbva484-1-e", "zynq-ultrascale+", 333, 7,
                     "aarch64-linux-gnu", "cortex-a53", "pynq"),
    "zcu104": Board("zcu104", "xczu7ev-ffvc1156-2-e", "zynq-ultrascale+", 333, 7,
                    "aarch64-linux-gnu", "cortex-a53", "pynq"),
    "de10nano": Board("de10nano", "5CSEBA6U23I7", "Cyclone V", 100, 6,
                      "armv7-none-linux-gnueabihf", "cortex-a9", "de10nano"),
    "sim": Board("sim", "xc7z020clg484-1", "zynq-7000", 100, 6,
                 "x86_64-linux-gnu", None, "sim"),
    "tsim": Board("tsim", "xc7z020clg484-1", "zynq-7000", 100, 6,
                  "x86_64-linux-gnu", None, "tsim"),
}

# key -> (allowed values, what they mean). The data widths are fixed: the ISA, the simulator
# and every published bitstream are int8 inputs/weights/outputs with int32 accumulators.
_RANGES = {
    "LOG_INP_WIDTH": ((3,), "3 (int8 inputs)"),
    "LOG_WGT_WIDTH": ((3,), "3 (int8 weights)"),
    "LOG_ACC_WIDTH": ((5,), "5 (int32 accumulators)"),
    "LOG_BATCH": (tuple(range(0, 5)), "0..4 (BATCH 1..16)"),
    "LOG_BLOCK": (tuple(range(2, 7)), "2..6 (BLOCK 4..64)"),
    "LOG_UOP_BUFF_SIZE": (tuple(range(10, 16)), "10..15 (1 KiB..32 KiB of 4-byte uops)"),
    "LOG_INP_BUFF_SIZE": (tuple(range(8, 23)), "8..22 (256 B..4 MiB)"),
    "LOG_WGT_BUFF_SIZE": (tuple(range(8, 23)), "8..22 (256 B..4 MiB)"),
    "LOG_ACC_BUFF_SIZE": (tuple(range(8, 23)), "8..22 (256 B..4 MiB)"),
    "ACC_DEP_DISTANCE": (tuple(range(1, 9)), "1..8"),
    "FPGA_FREQ": (tuple(range(1, 2001)), "1..2000 (MHz)"),
    "LOG_BUS_WIDTH": (tuple(range(5, 11)), "5..10 (32..1024-bit AXI)"),
}

_REQUIRED = (
    "TARGET", "LOG_INP_WIDTH", "LOG_WGT_WIDTH", "LOG_ACC_WIDTH", "LOG_BATCH", "LOG_BLOCK",
    "LOG_UOP_BUFF_SIZE", "LOG_INP_BUFF_SIZE", "LOG_WGT_BUFF_SIZE", "LOG_ACC_BUFF_SIZE",
)
_OPTIONAL = ("HW_VER", "ACC_DEP_DISTANCE", "FPGA_FREQ", "LOG_BUS_WIDTH")
ALLOWED_KEYS = _REQUIRED + _OPTIONAL


@dataclass(frozen=True)
class VTAConfig:
    """A VTA hardware configuration. Fields are the JSON keys; the rest are derived properties.

    Construct it with `load_config` (or `VTAConfig.from_dict` / `from_json`); direct
    construction validates too. Instances are immutable and hashable, so lowering, simulator
    and cycle model can cache per configuration.
    """

    TARGET: str
    LOG_INP_WIDTH: int
    LOG_WGT_WIDTH: int
    LOG_ACC_WIDTH: int
    LOG_BATCH: int
    LOG_BLOCK: int
    LOG_UOP_BUFF_SIZE: int
    LOG_INP_BUFF_SIZE: int
    LOG_WGT_BUFF_SIZE: int
    LOG_ACC_BUFF_SIZE: int
    HW_VER: str = "0.0.2"
    #: a uop may not write the accumulator row written by any of the previous
    #: ACC_DEP_DISTANCE - 1 uops (the GEMM core's read-after-write pipeline hazard)
    ACC_DEP_DISTANCE: int = 3
    #: board clock in MHz; None: the board's own
    FPGA_FREQ: Optional[int] = None
    #: log2 of the AXI bus width in bits; None: the board's own
    LOG_BUS_WIDTH: Optional[int] = None
    #: where it was loaded from (for messages); not part of the configuration
    source: Optional[str] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        _validate(self)
        board = BOARDS[self.TARGET]
        if self.FPGA_FREQ is None:
            object.__setattr__(self, "FPGA_FREQ", board.freq_mhz)
        if self.LOG_BUS_WIDTH is None:
            object.__setattr__(self, "LOG_BUS_WIDTH", board.log_bus_width)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None) -> "VTAConfig":
        """Validate a dict of VTA JSON keys and build the configuration."""
        if not isinstance(data, Mapping):
            raise VTAConfigError(
                f"the configuration must be a JSON object, got {type(data).__name__}",
                source=source)
        unknown = [k for k in data if k not in ALLOWED_KEYS]
        if unknown:
            raise VTAConfigError(
                f"unknown key {unknown[0]!r}; allowed keys: {', '.join(ALLOWED_KEYS)}",
                key=str(unknown[0]), source=source)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise VTAConfigError(
                f"missing key {missing[0]!r}; required keys: {', '.join(_REQUIRED)}",
                key=missing[0], source=source)
        return cls(**dict(data), source=source)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "VTAConfig":
        """Load a VTA JSON configuration file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise VTAConfigError(f"file {path!r} does not exist", source=path) from None
        except json.JSONDecodeError as err:
            raise VTAConfigError(f"{path!r} is not valid JSON: {err}", source=path) from None
        return cls.from_dict(data, source=path)

    def replace(self, **changes) -> "VTAConfig":
        """A validated copy with some keys changed, e.g. cfg.replace(TARGET="ultra96")."""
        bad = [k for k in changes if k not in ALLOWED_KEYS]
        if bad:
            raise VTAConfigError(
                f"unknown key {bad[0]!r}; allowed keys: {', '.join(ALLOWED_KEYS)}", key=bad[0])
        # a new TARGET brings its own board clock and bus width unless given
        if "TARGET" in changes and changes["TARGET"] != self.TARGET:
            board = BOARDS.get(self.TARGET)
            if board and self.FPGA_FREQ == board.freq_mhz:
                changes.setdefault("FPGA_FREQ", None)
            if board and self.LOG_BUS_WIDTH == board.log_bus_width:
                changes.setdefault("LOG_BUS_WIDTH", None)
        return dataclasses.replace(self, source=None, **changes)

    def to_dict(self) -> dict:
        """The JSON keys (board overrides only when they differ from the board's own)."""
        out = {k: getattr(self, k) for k in ("TARGET", "HW_VER") + _REQUIRED[1:]}
        if self.ACC_DEP_DISTANCE != 3:
            out["ACC_DEP_DISTANCE"] = self.ACC_DEP_DISTANCE
        if self.FPGA_FREQ != self.board.freq_mhz:
            out["FPGA_FREQ"] = self.FPGA_FREQ
        if self.LOG_BUS_WIDTH != self.board.log_bus_width:
            out["LOG_BUS_WIDTH"] = self.LOG_BUS_WIDTH
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ------------------------------------------------------------------ board
    @property
    def board(self) -> Board:
        return BOARDS[self.TARGET]

    @property
    def FREQ_MHZ(self) -> int:
        return self.FPGA_FREQ

    @property
    def FPGA_DEVICE(self) -> str:
        return self.board.fpga_device

    @property
    def FPGA_FAMILY(self) -> str:
        return self.board.fpga_family

    @property
    def BUS_WIDTH(self) -> int:
        """AXI data width in bits."""
        return 1 << self.LOG_BUS_WIDTH

    @property
    def BUS_WIDTH_BYTES(self) -> int:
        return self.BUS_WIDTH // 8

    @property
    def HOST_TRIPLE(self) -> str:
        """LLVM triple of the CPU that drives the accelerator (runs the non-VTA layers)."""
        return self.board.host_triple

    @property
    def HOST_MCPU(self) -> Optional[str]:
        return self.board.host_mcpu

    @property
    def TARGET_HOST(self) -> str:
        """The TVM host target string, as vta/environment.py gave it."""
        if self.TARGET in ("sim", "tsim"):
            return "llvm"
        return f"llvm -mtriple={self.HOST_TRIPLE}"

    @property
    def IS_SIMULATOR(self) -> bool:
        return self.TARGET in ("sim", "tsim")

    # ------------------------------------------------------------------ data widths (bits)
    @property
    def LOG_OUT_WIDTH(self) -> int:
        return self.LOG_INP_WIDTH

    @property
    def INP_WIDTH(self) -> int:
        return 1 << self.LOG_INP_WIDTH

    @property
    def WGT_WIDTH(self) -> int:
        return 1 << self.LOG_WGT_WIDTH

    @property
    def ACC_WIDTH(self) -> int:
        return 1 << self.LOG_ACC_WIDTH

    @property
    def OUT_WIDTH(self) -> int:
        return 1 << self.LOG_OUT_WIDTH

    @property
    def INP_DTYPE(self) -> np.dtype:
        return np.dtype(f"int{self.INP_WIDTH}")

    @property
    def WGT_DTYPE(self) -> np.dtype:
        return np.dtype(f"int{self.WGT_WIDTH}")

    @property
    def ACC_DTYPE(self) -> np.dtype:
        return np.dtype(f"int{self.ACC_WIDTH}")

    @property
    def OUT_DTYPE(self) -> np.dtype:
        return np.dtype(f"int{self.OUT_WIDTH}")

    # ------------------------------------------------------------------ GEMM core shape
    @property
    def LOG_BLOCK_IN(self) -> int:
        return self.LOG_BLOCK

    @property
    def LOG_BLOCK_OUT(self) -> int:
        return self.LOG_BLOCK

    @property
    def BATCH(self) -> int:
        return 1 << self.LOG_BATCH

    @property
    def BLOCK_IN(self) -> int:
        return 1 << self.LOG_BLOCK_IN

    @property
    def BLOCK_OUT(self) -> int:
        return 1 << self.LOG_BLOCK_OUT

    @property
    def MACS_PER_CYCLE(self) -> int:
        """Multiply-accumulates of one GEMM uop: (BATCH x BLOCK_IN) . (BLOCK_OUT x BLOCK_IN)^T."""
        return self.BATCH * self.BLOCK_IN * self.BLOCK_OUT

    @property
    def OPS_PER_CYCLE(self) -> int:
        return 2 * self.MACS_PER_CYCLE

    @property
    def PEAK_GOPS(self) -> float:
        """Peak throughput at the board clock: one GEMM uop per cycle, 2 ops per MAC."""
        return self.OPS_PER_CYCLE * self.FPGA_FREQ / 1e3

    # ------------------------------------------------------------------ buffer sizes (bytes)
    @property
    def LOG_OUT_BUFF_SIZE(self) -> int:
        return self.LOG_ACC_BUFF_SIZE + self.LOG_OUT_WIDTH - self.LOG_ACC_WIDTH

    @property
    def UOP_BUFF_SIZE(self) -> int:
        return 1 << self.LOG_UOP_BUFF_SIZE

    @property
    def INP_BUFF_SIZE(self) -> int:
        return 1 << self.LOG_INP_BUFF_SIZE

    @property
    def WGT_BUFF_SIZE(self) -> int:
        return 1 << self.LOG_WGT_BUFF_SIZE

    @property
    def ACC_BUFF_SIZE(self) -> int:
        return 1 << self.LOG_ACC_BUFF_SIZE

    @property
    def OUT_BUFF_SIZE(self) -> int:
        return 1 << self.LOG_OUT_BUFF_SIZE

    # ------------------------------------------------------------------ element sizes
    @property
    def INS_ELEM_BYTES(self) -> int:
        return _INS_BITS // 8

    @property
    def UOP_ELEM_BYTES(self) -> int:
        return _UOP_BITS // 8

    @property
    def INP_ELEM_BITS(self) -> int:
        return self.BATCH * self.BLOCK_IN * self.INP_WIDTH

    @property
    def WGT_ELEM_BITS(self) -> int:
        return self.BLOCK_OUT * self.BLOCK_IN * self.WGT_WIDTH

    @property
    def ACC_ELEM_BITS(self) -> int:
        return self.BATCH * self.BLOCK_OUT * self.ACC_WIDTH

    @property
    def OUT_ELEM_BITS(self) -> int:
        return self.BATCH * self.BLOCK_OUT * self.OUT_WIDTH

    @property
    def INP_ELEM_BYTES(self) -> int:
        return self.INP_ELEM_BITS // 8

    @property
    def WGT_ELEM_BYTES(self) -> int:
        return self.WGT_ELEM_BITS // 8

    @property
    def ACC_ELEM_BYTES(self) -> int:
        return self.ACC_ELEM_BITS // 8

    @property
    def OUT_ELEM_BYTES(self) -> int:
        return self.OUT_ELEM_BITS // 8

    # ------------------------------------------------------------------ buffer depths (elements)
    @property
    def LOG_UOP_BUFF_DEPTH(self) -> int:
        return self.LOG_UOP_BUFF_SIZE - _LOG_UOP_WIDTH + 3

    @property
    def LOG_INP_BUFF_DEPTH(self) -> int:
        return (self.LOG_INP_BUFF_SIZE - self.LOG_BATCH - self.LOG_BLOCK_IN
                - self.LOG_INP_WIDTH + 3)

    @property
    def LOG_WGT_BUFF_DEPTH(self) -> int:
        return (self.LOG_WGT_BUFF_SIZE - self.LOG_BLOCK_OUT - self.LOG_BLOCK_IN
                - self.LOG_WGT_WIDTH + 3)

    @property
    def LOG_ACC_BUFF_DEPTH(self) -> int:
        return (self.LOG_ACC_BUFF_SIZE - self.LOG_BATCH - self.LOG_BLOCK_OUT
                - self.LOG_ACC_WIDTH + 3)

    @property
    def LOG_OUT_BUFF_DEPTH(self) -> int:
        return (self.LOG_OUT_BUFF_SIZE - self.LOG_BATCH - self.LOG_BLOCK_OUT
                - self.LOG_OUT_WIDTH + 3)

    @property
    def UOP_BUFF_DEPTH(self) -> int:
        return 1 << self.LOG_UOP_BUFF_DEPTH

    @property
    def INP_BUFF_DEPTH(self) -> int:
        return 1 << self.LOG_INP_BUFF_DEPTH

    @property
    def WGT_BUFF_DEPTH(self) -> int:
        return 1 << self.LOG_WGT_BUFF_DEPTH

    @property
    def ACC_BUFF_DEPTH(self) -> int:
        return 1 << self.LOG_ACC_BUFF_DEPTH

    @property
    def OUT_BUFF_DEPTH(self) -> int:
        return 1 << self.LOG_OUT_BUFF_DEPTH

    # ------------------------------------------------------------------ per-memory lookups
    def _memory(self, mem) -> str:
        if isinstance(mem, str):
            name = mem.lower()
            if name in MEMORIES:
                return name
        else:
            try:
                idx = int(mem)
            except (TypeError, ValueError):
                idx = -1
            if 0 <= idx < len(MEMORIES):
                return MEMORIES[idx]
        raise ValueError(
            f"unknown VTA memory {mem!r}; use one of {', '.join(MEMORIES)} or memory ids 0..4")

    def elem_bytes(self, mem) -> int:
        """Bytes of one element of a memory ('uop', 'wgt', 'inp', 'acc', 'out' or its id)."""
        return getattr(self, f"{self._memory(mem).upper()}_ELEM_BYTES")

    def buff_depth(self, mem) -> int:
        """Elements a memory holds."""
        return getattr(self, f"{self._memory(mem).upper()}_BUFF_DEPTH")

    def buff_size(self, mem) -> int:
        """Bytes a memory holds."""
        return getattr(self, f"{self._memory(mem).upper()}_BUFF_SIZE")

    def elem_shape(self, mem) -> tuple:
        """Shape of one element: uop (), wgt (BLOCK_OUT, BLOCK_IN), inp (BATCH, BLOCK_IN),
        acc/out (BATCH, BLOCK_OUT)."""
        name = self._memory(mem)
        return {"uop": (), "wgt": (self.BLOCK_OUT, self.BLOCK_IN),
                "inp": (self.BATCH, self.BLOCK_IN), "acc": (self.BATCH, self.BLOCK_OUT),
                "out": (self.BATCH, self.BLOCK_OUT)}[name]

    def elem_dtype(self, mem) -> np.dtype:
        name = self._memory(mem)
        return {"uop": np.dtype("uint32"), "wgt": self.WGT_DTYPE, "inp": self.INP_DTYPE,
                "acc": self.ACC_DTYPE, "out": self.OUT_DTYPE}[name]

    def axi_beats(self, mem) -> int:
        """Bus beats to move one element of a memory over the AXI bus (at least 1)."""
        return max(1, -(-self.elem_bytes(mem) // self.BUS_WIDTH_BYTES))

    # ------------------------------------------------------------------ names
    @property
    def MODEL(self) -> str:
        """VTA's configuration string, e.g. '1x16_i8w8a32_15_15_18_17' (the bitstream name)."""
        return "{}x{}_i{}w{}a{}_{}_{}_{}_{}".format(
            self.BATCH, self.BLOCK_IN, self.INP_WIDTH, self.WGT_WIDTH, self.ACC_WIDTH,
            self.LOG_UOP_BUFF_SIZE, self.LOG_INP_BUFF_SIZE, self.LOG_WGT_BUFF_SIZE,
            self.LOG_ACC_BUFF_SIZE)

    @property
    def BITSTREAM(self) -> str:
        return self.MODEL

    @property
    def TARGET_MODEL(self) -> str:
        """Board and model, as TVM's `tvm.target.vta(model=...)` took it: 'pynq_1x16_...'."""
        return f"{self.TARGET}_{self.MODEL}"

    def summary(self) -> str:
        """A few readable lines: board, core, buffers."""
        return "\n".join([
            f"VTA {self.TARGET_MODEL} (HW {self.HW_VER})",
            f"  board   {self.FPGA_DEVICE}, {self.FPGA_FREQ} MHz, {self.BUS_WIDTH}-bit AXI, "
            f"host {self.HOST_TRIPLE}",
            f"  core    {self.BATCH}x{self.BLOCK_IN}x{self.BLOCK_OUT} int{self.INP_WIDTH} GEMM "
            f"-> int{self.ACC_WIDTH}, {self.OPS_PER_CYCLE} ops/cycle, "
            f"peak {self.PEAK_GOPS:.1f} GOPS",
            *(f"  {m:<7} {self.buff_depth(m):>6} x {self.elem_bytes(m):>3} B = "
              f"{self.buff_size(m) // 1024} KiB" for m in MEMORIES),
        ])

    def __str__(self):
        return self.TARGET_MODEL


def _validate(cfg: VTAConfig) -> None:
    src = cfg.source

    def fail(message, key):
        raise VTAConfigError(message, key=key, source=src)

    if not isinstance(cfg.TARGET, str):
        fail(f"key 'TARGET' must be a string, got {type(cfg.TARGET).__name__} {cfg.TARGET!r}",
             "TARGET")
    if cfg.TARGET not in BOARDS:
        fail(f"key 'TARGET' = {cfg.TARGET!r} is not a known board; allowed values: "
             f"{', '.join(BOARDS)}", "TARGET")
    if not isinstance(cfg.HW_VER, str) or not re.fullmatch(r"\d+\.\d+\.\d+", cfg.HW_VER):
        fail(f"key 'HW_VER' must be a version string like '0.0.2', got {cfg.HW_VER!r}",
             "HW_VER")
    for key, (allowed, text) in _RANGES.items():
        value = getattr(cfg, key)
        if value is None and key in _OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(f"key {key!r} must be an integer, got {type(value).__name__} {value!r}; "
                 f"allowed values: {text}", key)
        if int(value) not in allowed:
            fail(f"key {key!r} = {value} is out of range; allowed values: {text}", key)
        object.__setattr__(cfg, key, int(value))

    # The ISA's fields must hold every buffer index (see isa.py for the layouts).
    a, i, w, u = (cfg.LOG_ACC_BUFF_DEPTH, cfg.LOG_INP_BUFF_DEPTH, cfg.LOG_WGT_BUFF_DEPTH,
                  cfg.LOG_UOP_BUFF_DEPTH)
    for key, depth, mem in (("LOG_ACC_BUFF_SIZE", a, "accumulator"),
                            ("LOG_INP_BUFF_SIZE", i, "input"),
                            ("LOG_WGT_BUFF_SIZE", w, "weight")):
        if depth < 0:
            fail(f"key {key!r} = {getattr(cfg, key)} is too small: the {mem} buffer must "
                 f"hold at least one element with LOG_BATCH={cfg.LOG_BATCH}, "
                 f"LOG_BLOCK={cfg.LOG_BLOCK}", key)
        if depth > _SRAM_ADDR_WIDTH:
            fail(f"key {key!r} = {getattr(cfg, key)} gives a {mem} buffer of 2**{depth} "
                 f"elements, beyond the {_SRAM_ADDR_WIDTH}-bit sram_base of LOAD/STORE", key)
    if 8 + u + (u + 1) + 2 * _LOOP_ITER_WIDTH > 64:
        fail(f"key 'LOG_UOP_BUFF_SIZE' = {cfg.LOG_UOP_BUFF_SIZE} gives 2**{u} uops; "
             "uop_bgn/uop_end of GEMM/ALU fit at most 2**13 (LOG_UOP_BUFF_SIZE <= 15)",
             "LOG_UOP_BUFF_SIZE")
    need = a + max(a, i) + w
    if need > _UOP_BITS:
        fail(f"keys LOG_ACC_BUFF_SIZE/LOG_INP_BUFF_SIZE/LOG_WGT_BUFF_SIZE give buffer depths "
             f"2**{a}/2**{i}/2**{w}: a micro-op needs {a}+{max(a, i)}+{w} = {need} index bits "
             f"but has {_UOP_BITS}", "LOG_ACC_BUFF_SIZE")
    need = 2 * (a + i + w)
    if need > 64:
        fail(f"keys LOG_ACC_BUFF_SIZE/LOG_INP_BUFF_SIZE/LOG_WGT_BUFF_SIZE give buffer depths "
             f"2**{a}/2**{i}/2**{w}: the GEMM instruction's six index factors need {need} bits "
             "but have 64", "LOG_ACC_BUFF_SIZE")
    need = 4 * a + _ALU_FIXED_BITS
    if need > 64:
        fail(f"key 'LOG_ACC_BUFF_SIZE' = {cfg.LOG_ACC_BUFF_SIZE} gives 2**{a} accumulator "
             f"elements: the ALU instruction's four index factors and opcode/imm need {need} "
             "bits but have 64", "LOG_ACC_BUFF_SIZE")


# ---------------------------------------------------------------------- loading
def available_configs() -> list:
    """Names of the shipped configurations (the JSON files in configs/)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


@functools.lru_cache(maxsize=None)
def _load_shipped(name: str) -> VTAConfig:
    return VTAConfig.from_json(os.path.join(CONFIG_DIR, name + ".json"))


def load_config(spec: Union[None, str, os.PathLike, Mapping, VTAConfig] = None) -> VTAConfig:
    """A VTAConfig from a shipped name ('pynq', 'ultra96', 'de10nano', 'zcu104', 'sim', 'tsim',
    'sim_4x8'), a path to a VTA JSON file, a dict of its keys, or a VTAConfig (returned as is).
    None gives the default ('sim', the 1x16 core with pynq parameters)."""
    if spec is None:
        return _load_shipped(DEFAULT_CONFIG)
    if isinstance(spec, VTAConfig):
        return spec
    if isinstance(spec, Mapping):
        return VTAConfig.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in available_configs():
            return _load_shipped(text)
        if text.endswith(".json") or os.sep in text or os.path.exists(text):
            return VTAConfig.from_json(text)
        raise VTAConfigError(
            f"no shipped configuration named {text!r}; use one of "
            f"{', '.join(available_configs())}, a path to a VTA JSON file, or a dict")
    raise VTAConfigError(
        f"cannot make a VTA configuration from a {type(spec).__name__}: {spec!r}")


def default_config() -> VTAConfig:
    """The default configuration: 'sim' (1x16_i8w8a32_15_15_18_17 at pynq parameters)."""
    return load_config(None)
