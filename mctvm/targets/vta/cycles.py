"""The VTA cycle model's parameters and the counters a simulation reports.

Timing (see simulator.py for the event-driven engine):

    GEMM   gemm_overhead + iter_out * iter_in * (uop_end - uop_bgn)       one uop per cycle
    ALU    alu_overhead + iter_out * iter_in * n_uops * II                II = alu_ii
                                                                          (alu_ii_imm with imm)
    LOAD/STORE (any memory)  the single shared DRAM port moves bus_width bits per cycle:
           a transfer needs sum over rows of ceil(row_bytes / bus_bytes) beats of it; the
           port is arbitrated per burst (dram_burst_beats): a new transfer waits at most one
           burst of the transfer in flight, then shares the port with its rest (its own
           duration grows by the overlapped beats; the port's total work is conserved, the
           earlier transfer's end is not revised), then dma_latency cycles; zero-padding
           elements cost one SRAM write cycle each (no DRAM traffic)
    x_size = 0 (token-only), FINISH: one cycle

Each module runs its instructions in order; an instruction starts when its module is free,
its dependency tokens have been pushed (a token is available at the end of the instruction
that pushed it), and fetch has dispatched it; DMA additionally waits for the DRAM port.
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Dict

__all__ = ["TimingParams", "SimStats"]


@dataclass(frozen=True)
class TimingParams:
    gemm_overhead: int = 4        # pipeline fill per GEMM instruction
    alu_overhead: int = 4
    alu_ii: int = 2               # cycles per ALU uop (vector/src form)
    alu_ii_imm: int = 2           # with an immediate (1 on the Chisel design)
    dma_latency: int = 32         # AXI read/write latency per DMA instruction
    dram_burst_beats: int = 64    # port arbitration granularity (AXI burst length)
    finish_cycles: int = 1
    token_only_cycles: int = 1


@dataclass
class SimStats:
    """Counters of one simulation run (bytes, uops, instructions, cycles) and derived rates."""

    freq_mhz: float
    ops_per_cycle: int
    peak_gops: float
    bytes_loaded: Dict[str, int] = field(default_factory=lambda: {"uop": 0, "wgt": 0,
                                                                  "inp": 0, "acc": 0})
    bytes_stored: int = 0
    insn_bytes: int = 0
    insns: Dict[str, int] = field(default_factory=dict)
    gemm_uops: int = 0            # MAC uops (reset GEMMs excluded)
    gemm_reset_uops: int = 0
    alu_uops: int = 0
    module_busy: Dict[str, int] = field(default_factory=lambda: {"load": 0, "compute": 0,
                                                                 "store": 0})
    gemm_cycles: int = 0
    alu_cycles: int = 0
    dram_busy: int = 0
    total_cycles: int = 0
    wall_seconds: float = 0.0

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes_loaded.values()) + self.bytes_stored

    @property
    def utilization(self) -> float:
        """GEMM core utilisation: GEMM uops (one per cycle at best) / total cycles."""
        return self.gemm_uops / self.total_cycles if self.total_cycles else 0.0

    @property
    def seconds(self) -> float:
        return self.total_cycles / (self.freq_mhz * 1e6)

    @property
    def gops(self) -> float:
        """Achieved GOPS at the board clock (2 ops per MAC of every GEMM uop issued)."""
        if not self.total_cycles:
            return 0.0
        return self.gemm_uops * self.ops_per_cycle * self.freq_mhz / 1e3 / self.total_cycles

    @property
    def sim_uops_per_second(self) -> float:
        return (self.gemm_uops + self.alu_uops) / self.wall_seconds if self.wall_seconds else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(bytes_total=self.bytes_total, utilization=self.utilization,
                 gops=self.gops, seconds=self.seconds)
        return d

    def summary(self) -> str:
        b = self.bytes_loaded
        return (f"{self.total_cycles} cycles ({self.seconds * 1e3:.3f} ms), util "
                f"{self.utilization:.1%}, {self.gops:.2f}/{self.peak_gops:.1f} GOPS; "
                f"gemm uops {self.gemm_uops}, alu uops {self.alu_uops}; bytes in "
                f"inp {b['inp']} wgt {b['wgt']} uop {b['uop']} acc {b['acc']}, "
                f"out {self.bytes_stored}; busy load {self.module_busy['load']} compute "
                f"{self.module_busy['compute']} store {self.module_busy['store']} "
                f"dram {self.dram_busy}")
