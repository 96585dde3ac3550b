"""A bit-exact behavioural simulator of VTA with an event-driven cycle model.

    result = simulate(program)                 # or Simulator(cfg, timing).run(program)
    result.dram.read("out")                    # the DRAM image after the run (a copy)
    result.stats.total_cycles, result.stats.utilization, result.stats.gops

Execution follows the spec: fetch dispatches the instruction stream in order to three
command queues (STORE -> store; LOAD INP/WGT -> load; everything else -> compute; 512 deep),
each module runs its queue in order, popping dependency tokens before an instruction and
pushing them after it on the four token queues (load->compute, compute->load,
compute->store, store->compute). The engine always runs next the module whose next
instruction can start earliest (module free, tokens pushed, instruction dispatched, and for
DMA the single DRAM port free), so the functional order is the timed order. When no module
can start and the program has not finished, it raises VTADeadlockError naming, for every
module, the instruction it waits at and the token queue it waits on; it never hangs.

Data: int8 inputs/weights, int32 accumulators that wrap, GEMM/ALU write the accumulator and
(its low 8 bits) the output buffer, STORE copies the output buffer (a truncation of the
accumulator, never a saturation) to DRAM. Every SRAM/uop/DRAM access is bound-checked
(VTASramError names the instruction index and the memory); the GEMM pipeline hazard (a uop
writing the accumulator row written by one of the previous ACC_DEP_DISTANCE-1 uops of the
same instruction) raises VTAHazardError unless check_hazards=False.

GEMM and ALU inner loops are vectorised with numpy (GEMM products in float32 BLAS, exact
because every partial sum of int8 products of one uop stays below 2**24).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ...errors import MctvmError
from .config import VTAConfig, load_config
from .cycles import SimStats, TimingParams
from .isa import Alu, AluOp, Finish, Gemm, Load, MemId, Module, Store, isa_for, route
from .program import DRAMImage, VTAProgram

__all__ = ["Simulator", "SimResult", "simulate", "VTASimError", "VTASramError",
           "VTADeadlockError", "VTAHazardError", "QUEUE_DEPTH"]

QUEUE_DEPTH = 512
_MOD = {Module.LOAD: "load", Module.COMPUTE: "compute", Module.STORE: "store"}
_QNAME = {"l2c": "load->compute", "c2l": "compute->load", "c2s": "compute->store",
          "s2c": "store->compute"}
# (module, flag) -> token queue
_POPS = {(Module.LOAD, "pop_next"): "c2l", (Module.COMPUTE, "pop_prev"): "l2c",
         (Module.COMPUTE, "pop_next"): "s2c", (Module.STORE, "pop_prev"): "c2s"}
_PUSHES = {(Module.LOAD, "push_next"): "l2c", (Module.COMPUTE, "push_prev"): "c2l",
           (Module.COMPUTE, "push_next"): "c2s", (Module.STORE, "push_prev"): "s2c"}


class VTASimError(MctvmError, RuntimeError):
    """A VTA program cannot run (names the instruction index and why)."""

    def __init__(self, message: str, index: Optional[int] = None):
        self.index = index
        super().__init__(message)


class VTASramError(VTASimError):
    """An access outside an SRAM buffer, the uop buffer or the DRAM image."""

    def __init__(self, message: str, index: int, memory: str):
        self.memory = memory
        super().__init__(message, index)


class VTAHazardError(VTASimError):
    """A GEMM writes an accumulator row that one of the previous uops still writes."""


class VTADeadlockError(VTASimError):
    """No module can make progress and the program has not finished."""

    def __init__(self, message: str, waits: dict):
        self.waits = waits
        super().__init__(message)


@dataclass
class SimResult:
    dram: DRAMImage
    stats: SimStats
    tokens_left: Dict[str, int]
    trace: Optional[list] = None      # (index, module, start, end) when trace=True


def _wrap32(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v, np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


class Simulator:
    """Runs VTA programs of one configuration. Reusable; each run starts with zeroed SRAMs."""

    def __init__(self, cfg=None, timing: Optional[TimingParams] = None,
                 check_hazards: bool = True, queue_depth: int = QUEUE_DEPTH):
        self.cfg: VTAConfig = load_config(cfg)
        self.timing = timing or TimingParams()
        self.check_hazards = check_hazards
        self.queue_depth = int(queue_depth)
        self.isa = isa_for(self.cfg)
        self._uop_fields = {f.name: f for f in self.isa.uop_layout}

    # ================================================================== driver
    def run(self, program: VTAProgram, dram: Optional[DRAMImage] = None,
            trace: bool = False) -> SimResult:
        cfg = self.cfg
        if load_config(program.cfg) != cfg:
            raise VTASimError(f"the program is for {program.cfg}, the simulator for {cfg}")
        insns = list(program.insns)
        if not any(isinstance(x, Finish) for x in insns):
            raise VTASimError("the program has no FINISH instruction; every VTA program ends "
                              "with FINISH")
        self.dram = (dram if dram is not None else program.dram).copy()
        t0 = time.perf_counter()
        self._reset_state()
        st = self.stats = SimStats(cfg.FPGA_FREQ, cfg.OPS_PER_CYCLE, cfg.PEAK_GOPS)
        st.insn_bytes = 16 * len(insns)
        tm = self.timing
        routes = [route(x) for x in insns]
        for k, x in enumerate(insns):
            self._check_flags(k, x, routes[k])
            st.insns[x.name] = st.insns.get(x.name, 0) + 1

        queues = {m: [] for m in Module}          # (index, dispatch time)
        heads = {m: 0 for m in Module}
        free = {m: 0 for m in Module}
        tokens = {q: collections.deque() for q in _QNAME}
        fetch_ptr, fetch_clock, n = 0, 0, len(insns)
        port_free = 0
        end_time = 0
        tr = [] if trace else None

        while True:
            # fetch: dispatch in order while the target queue has room
            while fetch_ptr < n:
                m = routes[fetch_ptr]
                if len(queues[m]) - heads[m] >= self.queue_depth:
                    break
                queues[m].append((fetch_ptr, fetch_clock))
                fetch_ptr += 1
            # pick the module that can start earliest
            best, best_t = None, None
            for m in Module:
                if heads[m] >= len(queues[m]):
                    continue
                k, disp = queues[m][heads[m]]
                x = insns[k]
                t = max(free[m], disp)
                ok = True
                for flag in ("pop_prev", "pop_next"):
                    if getattr(x, flag):
                        q = tokens[_POPS[(m, flag)]]
                        if not q:
                            ok = False
                            break
                        t = max(t, q[0])
                if ok and (best_t is None or t < best_t):
                    best, best_t = m, t
            if best is None:
                if fetch_ptr >= n and all(heads[m] >= len(queues[m]) for m in Module):
                    break
                self._deadlock(insns, routes, queues, heads, tokens, fetch_ptr)
            m = best
            k, _ = queues[m][heads[m]]
            x = insns[k]
            blocked_fetch = fetch_ptr < n and routes[fetch_ptr] == m
            heads[m] += 1
            if blocked_fetch:
                fetch_clock = max(fetch_clock, best_t)
            for flag in ("pop_prev", "pop_next"):
                if getattr(x, flag):
                    tokens[_POPS[(m, flag)]].popleft()
            start = best_t
            # ---- execute and time
            if isinstance(x, (Load, Store)):
                beats, pad = self._exec_mem(k, x)
                if x.x_size == 0 or x.y_size == 0:
                    end = start + tm.token_only_cycles
                else:
                    # the port arbitrates per burst: wait at most one burst of the
                    # transfer in flight, then share the port with what is left of it
                    start = max(start, min(port_free, start + tm.dram_burst_beats))
                    shared = min(beats, max(port_free - start, 0))
                    port_free = max(port_free, start) + beats
                    st.dram_busy += beats
                    end = start + beats + shared + tm.dma_latency + pad
            elif isinstance(x, Gemm):
                L = self._exec_gemm(k, x)
                end = start + tm.gemm_overhead + L
                st.gemm_cycles += end - start
            elif isinstance(x, Alu):
                L = self._exec_alu(k, x)
                ii = tm.alu_ii_imm if x.use_imm else tm.alu_ii
                end = start + tm.alu_overhead + L * ii
                st.alu_cycles += end - start
            elif isinstance(x, Finish):
                end = start + tm.finish_cycles
            else:  # pragma: no cover
                raise VTASimError(f"instruction #{k}: cannot execute {x!r}", k)
            st.module_busy[_MOD[m]] += end - start
            free[m] = end
            end_time = max(end_time, end)
            for flag in ("push_prev", "push_next"):
                if getattr(x, flag):
                    tokens[_PUSHES[(m, flag)]].append(end)
            if tr is not None:
                tr.append((k, _MOD[m], start, end))

        st.total_cycles = end_time
        st.wall_seconds = time.perf_counter() - t0
        return SimResult(self.dram, st, {_QNAME[q]: len(v) for q, v in tokens.items()}, tr)

    # ================================================================== checks
    @staticmethod
    def _check_flags(k: int, x, m: Module) -> None:
        for flag in ("pop_prev", "pop_next"):
            if getattr(x, flag) and (m, flag) not in _POPS:
                raise VTASimError(
                    f"instruction #{k} ({_describe(x)}) runs on the {_MOD[m]} module and sets "
                    f"{flag}, but the {_MOD[m]} module has no "
                    f"{'previous' if flag == 'pop_prev' else 'next'} module to pop from", k)
        for flag in ("push_prev", "push_next"):
            if getattr(x, flag) and (m, flag) not in _PUSHES:
                raise VTASimError(
                    f"instruction #{k} ({_describe(x)}) runs on the {_MOD[m]} module and sets "
                    f"{flag}, but the {_MOD[m]} module has no "
                    f"{'previous' if flag == 'push_prev' else 'next'} module to push to", k)

    def _deadlock(self, insns, routes, queues, heads, tokens, fetch_ptr):
        waits, lines = {}, []
        for m in Module:
            name = _MOD[m]
            if heads[m] < len(queues[m]):
                k, _ = queues[m][heads[m]]
                x = insns[k]
                missing = [f"{_QNAME[_POPS[(m, f)]]} ({f})" for f in ("pop_prev", "pop_next")
                           if getattr(x, f) and not tokens[_POPS[(m, f)]]]
                waits[name] = (k, [_POPS[(m, f)] for f in ("pop_prev", "pop_next")
                                   if getattr(x, f) and not tokens[_POPS[(m, f)]]])
                lines.append(f"{name}: waits at instruction #{k} ({_describe(x)}) for a token "
                             f"on {' and '.join(missing)}")
            elif fetch_ptr < len(insns) and routes[fetch_ptr] == m:
                waits[name] = (fetch_ptr, ["fetch"])
                lines.append(f"{name}: idle, its next instruction #{fetch_ptr} is not fetched")
            else:
                waits[name] = None
                lines.append(f"{name}: finished")
        if fetch_ptr < len(insns):
            lines.append(f"fetch: stalled at instruction #{fetch_ptr} "
                         f"({_describe(insns[fetch_ptr])}): the {_MOD[routes[fetch_ptr]]} "
                         f"command queue is full ({self.queue_depth})")
        lines.append("tokens queued: " + ", ".join(f"{_QNAME[q]}={len(v)}"
                                                   for q, v in tokens.items()))
        raise VTADeadlockError("VTA deadlock: no module can make progress.\n  "
                               + "\n  ".join(lines), waits)

    # ================================================================== state
    def _reset_state(self):
        c = self.cfg
        self.sram = {
            "inp": np.zeros((c.INP_BUFF_DEPTH,) + c.elem_shape("inp"), c.INP_DTYPE),
            "wgt": np.zeros((c.WGT_BUFF_DEPTH,) + c.elem_shape("wgt"), c.WGT_DTYPE),
            "acc": np.zeros((c.ACC_BUFF_DEPTH,) + c.elem_shape("acc"), c.ACC_DTYPE),
            "out": np.zeros((c.OUT_BUFF_DEPTH,) + c.elem_shape("out"), c.OUT_DTYPE),
        }
        d = c.UOP_BUFF_DEPTH
        self.uop_dst = np.zeros(d, np.int64)
        self.uop_src = np.zeros(d, np.int64)
        self.uop_wgt = np.zeros(d, np.int64)

    # ================================================================== LOAD / STORE
    def _exec_mem(self, k: int, x) -> tuple:
        """Run a LOAD/STORE; returns (bus beats, padding elements)."""
        c, st = self.cfg, self.stats
        try:
            mem = MemId(x.memory_type)
        except ValueError:
            raise VTASimError(f"instruction #{k}: unknown memory_type {x.memory_type}", k)
        is_load = isinstance(x, Load)
        if is_load and mem not in (MemId.UOP, MemId.WGT, MemId.INP, MemId.ACC):
            raise VTASimError(f"instruction #{k} ({_describe(x)}): LOAD supports UOP, WGT, "
                              f"INP and ACC, not {mem.name}", k)
        if not is_load and mem != MemId.OUT:
            raise VTASimError(f"instruction #{k} ({_describe(x)}): STORE supports OUT only, "
                              f"not {mem.name}", k)
        if x.x_size == 0 or x.y_size == 0:
            return 0, 0
        name = mem.name.lower()
        eb = c.elem_bytes(name)
        ys, xs, stride = x.y_size, x.x_size, x.x_stride
        if ys > 1 and stride < xs:
            raise VTASimError(f"instruction #{k} ({_describe(x)}): x_stride {stride} is "
                              f"smaller than x_size {xs}", k)
        # DRAM range
        last = (x.dram_base + (ys - 1) * stride + xs) * eb
        if last > self.dram.nbytes:
            raise VTASramError(
                f"instruction #{k} ({_describe(x)}): DRAM access bytes "
                f"[{x.dram_base * eb}, {last}) beyond the DRAM image of {self.dram.nbytes} "
                f"bytes (region {self.dram.region_at(x.dram_base * eb)!r})", k, "dram")
        if is_load:
            w = x.x_pad_0 + xs + x.x_pad_1
            h = x.y_pad_0 + ys + x.y_pad_1
        else:
            w, h = xs, ys
        depth = c.buff_depth(name)
        if x.sram_base + w * h > depth:
            raise VTASramError(
                f"instruction #{k} ({_describe(x)}): writes {name} SRAM elements "
                f"[{x.sram_base}, {x.sram_base + w * h}) but the {name} buffer holds {depth}"
                if is_load else
                f"instruction #{k} ({_describe(x)}): reads out SRAM elements "
                f"[{x.sram_base}, {x.sram_base + w * h}) but the out buffer holds {depth}",
                k, name)
        buf = self.dram.buf
        rb = xs * eb
        beats = ys * -(-rb // c.BUS_WIDTH_BYTES)
        if is_load:
            rows = [buf[(x.dram_base + y * stride) * eb:(x.dram_base + y * stride) * eb + rb]
                    for y in range(ys)]
            block = np.zeros((h, w, eb), np.uint8)
            block[x.y_pad_0:x.y_pad_0 + ys, x.x_pad_0:x.x_pad_0 + xs] = \
                np.stack(rows).reshape(ys, xs, eb)
            flat = block.reshape(-1)
            st.bytes_loaded[name] += ys * rb
            if mem == MemId.UOP:
                words = flat.view("<u4").astype(np.int64)
                sl = slice(x.sram_base, x.sram_base + w * h)
                for attr, f in (("uop_dst", "dst_idx"), ("uop_src", "src_idx"),
                                ("uop_wgt", "wgt_idx")):
                    fld = self._uop_fields[f]
                    getattr(self, attr)[sl] = (words >> fld.lo) & ((1 << fld.width) - 1)
            else:
                arr = self.sram[name]
                arr[x.sram_base:x.sram_base + w * h] = flat.view(arr.dtype).reshape(
                    (w * h,) + arr.shape[1:])
            return beats, w * h - ys * xs
        # STORE: the out buffer (low 8 bits of the accumulator) to DRAM
        data = self.sram["out"][x.sram_base:x.sram_base + w * h]
        data = np.ascontiguousarray(data).view(np.uint8).reshape(ys, rb)
        for y in range(ys):
            o = (x.dram_base + y * stride) * eb
            buf[o:o + rb] = data[y]
        st.bytes_stored += ys * rb
        return beats, 0

    # ================================================================== GEMM / ALU
    def _indices(self, k: int, x, src_mem: str) -> tuple:
        c = self.cfg
        ub, ue = x.uop_bgn, x.uop_end
        if ue > c.UOP_BUFF_DEPTH or ub > ue:
            raise VTASramError(f"instruction #{k} ({_describe(x)}): uops [{ub}, {ue}) outside "
                               f"the uop buffer of {c.UOP_BUFF_DEPTH}", k, "uop")
        io, ii = x.iter_out, x.iter_in
        i = np.arange(io, dtype=np.int64)[:, None, None]
        j = np.arange(ii, dtype=np.int64)[None, :, None]
        a = (self.uop_dst[None, None, ub:ue] + i * x.dst_factor_out
             + j * x.dst_factor_in).reshape(-1)
        s = (self.uop_src[None, None, ub:ue] + i * x.src_factor_out
             + j * x.src_factor_in).reshape(-1)
        w = None
        if isinstance(x, Gemm):
            w = (self.uop_wgt[None, None, ub:ue] + i * x.wgt_factor_out
                 + j * x.wgt_factor_in).reshape(-1)
        if a.size:
            checks = [("acc", a, c.ACC_BUFF_DEPTH, "dst"), (src_mem, s, c.buff_depth(src_mem),
                                                           "src")]
            if w is not None:
                checks.append(("wgt", w, c.WGT_BUFF_DEPTH, "wgt"))
            for mem, idx, depth, what in checks:
                if (isinstance(x, Gemm) and x.reset_reg and what != "dst"):
                    continue
                if isinstance(x, Alu) and x.use_imm and what == "src":
                    continue
                bad = np.flatnonzero(idx >= depth)
                if bad.size:
                    p = int(bad[0])
                    n = max(ue - ub, 1)
                    raise VTASramError(
                        f"instruction #{k} ({_describe(x)}): {what} index {int(idx[p])} "
                        f"outside the {mem} buffer of {depth} elements (uop {ub + p % n}, "
                        f"iteration i={p // n // max(ii, 1)}, j={p // n % max(ii, 1)})",
                        k, mem)
        return a, s, w

    def _exec_gemm(self, k: int, x: Gemm) -> int:
        a, s, w = self._indices(k, x, "inp")
        L = a.size
        if not L:
            return 0
        st = self.stats
        dist = self.cfg.ACC_DEP_DISTANCE - 1
        if self.check_hazards:
            for d in range(1, dist + 1):
                bad = np.flatnonzero(a[d:] == a[:-d])
                if bad.size:
                    p = int(bad[0]) + d
                    raise VTAHazardError(
                        f"instruction #{k} ({_describe(x)}): GEMM uop #{p} of the loop nest "
                        f"writes accumulator row {int(a[p])}, written {d} uop(s) before; a uop "
                        f"may not write the row of any of the previous {dist} uops", k)
        acc, out = self.sram["acc"], self.sram["out"]
        if x.reset_reg:
            acc[a] = 0
            out[a] = 0
            st.gemm_reset_uops += L
            return L
        st.gemm_uops += L
        inp = self.sram["inp"]
        wgt = self.sram["wgt"]
        B, BO = acc.shape[1], acc.shape[2]
        res = np.empty((L, B, BO), np.float32)
        uw, inv_w = np.unique(w, return_inverse=True)
        if L >= 8 * uw.size:
            order = np.argsort(inv_w, kind="stable")
            bounds = np.searchsorted(inv_w[order], np.arange(uw.size + 1))
            wf = wgt[uw].astype(np.float32)
            for g in range(uw.size):
                rows = order[bounds[g]:bounds[g + 1]]
                res[rows] = inp[s[rows]].astype(np.float32) @ wf[g].T
        else:
            for c0 in range(0, L, 8192):
                c1 = min(L, c0 + 8192)
                res[c0:c1] = np.einsum("lbi,loi->lbo", inp[s[c0:c1]].astype(np.float32),
                                       wgt[w[c0:c1]].astype(np.float32))
        ua, inv_a = np.unique(a, return_inverse=True)
        tot = np.zeros((ua.size, B, BO), np.int64)
        np.add.at(tot, inv_a, res.astype(np.int64))
        new = _wrap32(acc[ua].astype(np.int64) + tot)
        acc[ua] = new
        out[ua] = new.astype(out.dtype)
        return L

    def _exec_alu(self, k: int, x: Alu) -> int:
        a, s, _ = self._indices(k, x, "acc")
        L = a.size
        if not L:
            return 0
        self.stats.alu_uops += L
        acc, out = self.sram["acc"], self.sram["out"]
        if x.reset_reg:
            acc[a] = 0
            out[a] = 0
            return L
        try:
            op = AluOp(x.alu_opcode)
        except ValueError:
            raise VTASimError(f"instruction #{k}: unknown ALU opcode {x.alu_opcode}", k)
        vectorisable = np.unique(a).size == L
        if vectorisable and not x.use_imm:
            first = np.full(acc.shape[0], L, np.int64)
            first[a] = np.arange(L)
            vectorisable = not np.any(first[s] < np.arange(L))
        if vectorisable:
            lhs = acc[a].astype(np.int64)
            rhs = np.int64(x.imm) if x.use_imm else acc[s].astype(np.int64)
            new = _alu(op, lhs, rhs)
            acc[a] = new
            out[a] = new.astype(out.dtype)
        else:                                   # sequential semantics, uop by uop
            for p in range(L):
                lhs = acc[a[p]].astype(np.int64)
                rhs = np.int64(x.imm) if x.use_imm else acc[s[p]].astype(np.int64)
                new = _alu(op, lhs, rhs)
                acc[a[p]] = new
                out[a[p]] = new.astype(out.dtype)
        return L


def _alu(op: AluOp, lhs: np.ndarray, rhs) -> np.ndarray:
    if op == AluOp.MIN:
        r = np.minimum(lhs, rhs)
    elif op == AluOp.MAX:
        r = np.maximum(lhs, rhs)
    elif op == AluOp.ADD:
        r = lhs + rhs
    elif op == AluOp.SHR:
        sh = np.broadcast_to(np.asarray(rhs, np.int64), np.shape(lhs))
        right = np.clip(sh, 0, 63)
        left = np.clip(-sh, 0, 63)
        r = np.where(sh >= 0, lhs >> right, _wrap32(lhs << left).astype(np.int64))
    else:  # MUL (simulator only; absent on the Xilinx and Chisel hardware)
        r = _wrap32(lhs) .astype(np.int64) * _wrap32(np.asarray(rhs)).astype(np.int64)
    return _wrap32(r)


def _describe(x) -> str:
    name = x.name
    if isinstance(x, (Load, Store)):
        try:
            return f"{name} {MemId(x.memory_type).name}"
        except ValueError:
            return name
    if isinstance(x, Alu):
        try:
            return f"ALU {AluOp(x.alu_opcode).name}"
        except ValueError:
            return "ALU"
    return name


def simulate(program: VTAProgram, timing: Optional[TimingParams] = None,
             check_hazards: bool = True, trace: bool = False) -> SimResult:
    """Run a program on a fresh simulator of its configuration."""
    return Simulator(program.cfg, timing, check_hazards).run(program, trace=trace)
