"""Lower an integer conv2d / dense layer with its requantisation to a VTA program.

    prog = lower_conv2d(x, w, bias, stride=1, padding=1, shift=8, relu=True, cfg="pynq")
    res = simulate(prog)
    y = read_output(prog, res.dram)                        # NCHW int8
    assert (y == reference_conv2d(x, w, bias, stride=1, padding=1, shift=8, relu=True)).all()

What the program computes (int32 arithmetic that wraps, as the hardware):

    acc = conv2d(x, w)                      int8 x int8 -> int32 (GEMM)
    acc = acc + (bias + 2**(shift-1))       ALU ADD (vector: bias rows loaded into ACC)
    acc = acc >> shift                      ALU SHR imm (arithmetic)
    acc = max(min(acc, clip_hi), clip_lo)   ALU MIN, MAX imm  (clip_lo 0 with relu)
    out = int8(acc)                         truncating STORE (exact after the clip)

Schedule (TVM's shape): the output is tiled over output-channel blocks (tco), rows (th) and
columns (tw), the reduction over input-channel blocks (tci); tiles are chosen by a small
cost model so that with `virtual_threads=2` two copies of every tile fit in half of each
SRAM (double buffering): the loads of step k+1 run while step k computes, the store of tile
t while tile t+1 computes, synchronised by the dependency tokens (load waits on
compute->load before reusing a half, compute on load->compute for data and on
store->compute before reusing an accumulator half, store on compute->store). Layers that do
not fit are tiled, never rejected.

Micro-op kernels: one uop per weight block of the step's weight tile (dst = output block's
accumulator rows, src = input block shifted by (kh, kw), wgt = the block's SRAM slot),
iterated over the tile's output rows (iter_out) and columns (iter_in) with the factors
(tw, 1) / (stride*tw_in, stride). Uops are ordered output-block innermost so consecutive
uops write different accumulator rows; where a tile has fewer than three output blocks
(or zero blocks break the rotation), a uop writes one of up to three replica accumulators,
summed by ALU ADDs at the tile's end, so the uop hazard rule (no write to the row of either
of the two previous uops) always holds.

Sparsity (MCQ): a weight block (BLOCK_OUT x BLOCK_IN) that is all zero is neither stored in
the DRAM image, loaded nor multiplied: weight tiles are stored compactly in DRAM, tile by
tile, holding only their non-zero blocks; program.meta counts the blocks, bytes and GEMM uops
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import MctvmError, ShapeError
from .config import VTAConfig, load_config
from .isa import Alu, AluOp, Finish, Gemm, Load, MemId, Store, Uop
from .packing import ceil_div, pack_activation, pack_bias, pack_weight, unpack_acc
from .program import DRAMImage, VTAProgram

__all__ = ["VTALoweringError", "Tiling", "lower_conv2d", "lower_dense", "read_output",
           "reference_conv2d", "reference_dense", "choose_tiling", "run_layer"]


class VTALoweringError(MctvmError, ValueError):
    """A layer cannot be lowered to VTA (names the operand or parameter and why)."""


@dataclass(frozen=True)
class Tiling:
    tco: int     # output-channel blocks per tile
    tci: int     # input-channel blocks per reduction step
    th: int      # output rows per tile
    tw: int      # output columns per tile


# ---------------------------------------------------------------------- references
def _wrap32(v):
    return ((np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


def _pads(padding) -> tuple:
    """int, (ph, pw) or (top, left, bottom, right) -> (top, left, bottom, right)."""
    if np.isscalar(padding):
        p = int(padding)
        return p, p, p, p
    p = tuple(int(v) for v in padding)
    if len(p) == 2:
        return p[0], p[1], p[0], p[1]
    if len(p) == 4:
        return p
    raise VTALoweringError(f"padding must be an int, (ph, pw) or (top, left, bottom, right), "
                           f"got {padding!r}")


def _strides(stride) -> tuple:
    if np.isscalar(stride):
        return int(stride), int(stride)
    s = tuple(int(v) for v in stride)
    if len(s) != 2:
        raise VTALoweringError(f"stride must be an int or (sh, sw), got {stride!r}")
    return s


def _requant_ref(acc, bias, shift, clip_lo, clip_hi):
    acc = _wrap32(acc)
    if bias is not None:
        acc = _wrap32(acc + np.asarray(bias, np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2)))
    if shift > 0:
        acc = _wrap32(acc + (1 << (shift - 1)))
        acc = acc >> shift
    return np.clip(acc, clip_lo, clip_hi).astype(np.int8)


def reference_conv2d(x, w, bias=None, *, stride=1, padding=0, groups=1, shift=0, relu=False,
                     clip=None):
    """The numpy integer reference of what lower_conv2d's program computes (NCHW int8)."""
    x = np.asarray(x).astype(np.int64)
    w = np.asarray(w).astype(np.int64)
    sh, sw = _strides(stride)
    pt, pl, pb, pr = _pads(padding)
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH = (H + pt + pb - KH) // sh + 1
    OW = (W + pl + pr - KW) // sw + 1
    acc = np.zeros((N, O, OH, OW), np.int64)
    Og = O // groups
    for g in range(groups):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        for kh in range(KH):
            for kw in range(KW):
                patch = xs[:, :, kh:kh + (OH - 1) * sh + 1:sh, kw:kw + (OW - 1) * sw + 1:sw]
                acc[:, g * Og:(g + 1) * Og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * Og:(g + 1) * Og, :, kh, kw])
    lo, hi = _clip(relu, clip)
    return _requant_ref(acc, bias, shift, lo, hi)


def reference_dense(x, w, bias=None, *, shift=0, relu=False, clip=None):
    acc = np.asarray(x).astype(np.int64) @ np.asarray(w).astype(np.int64).T
    lo, hi = _clip(relu, clip)
    return _requant_ref(acc, bias, shift, lo, hi)


def _clip(relu, clip):
    if clip is not None:
        lo, hi = int(clip[0]), int(clip[1])
    else:
        lo, hi = (0 if relu else -128), 127
    if not -128 <= lo <= hi <= 127:
        raise VTALoweringError(f"clip range must lie within int8 [-128, 127], got [{lo}, {hi}]")
    return lo, hi


# ---------------------------------------------------------------------- operand checks
def _as_int8(a, what: str, cfg: VTAConfig) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise VTALoweringError(f"{what} has dtype {a.dtype}; VTA computes on integer int8 "
                               "operands (quantise first)")
    if a.dtype != np.int8 and a.size and (a.min() < -128 or a.max() > 127):
        raise VTALoweringError(
            f"{what} has dtype {a.dtype} with values in [{a.min()}, {a.max()}]; VTA's "
            f"{'input' if what == 'x' else 'weight'} width is int8 (LOG_INP_WIDTH="
            f"{cfg.LOG_INP_WIDTH}, LOG_WGT_WIDTH={cfg.LOG_WGT_WIDTH}): rescale the operand "
            "to [-128, 127] (MCQ counts above 127 need a bit-plane split, not implemented)")
    return a.astype(np.int8)


# ---------------------------------------------------------------------- tiling
def _acc_rows_per_block(tco: int, sparse: bool) -> int:
    """Worst-case accumulator rows per output position for tiles of up to tco blocks."""
    if sparse:
        return 3 * tco
    return max(tco, 4) if tco >= 2 else 3


def _cands(n: int) -> np.ndarray:
    return np.array(sorted({ceil_div(n, k) for k in range(1, n + 1)}))


def choose_tiling(cfg: VTAConfig, OB: int, CB: int, OH: int, OW: int, KH: int, KW: int,
                  sh: int, sw: int, nbuf: int = 2, sparse: bool = False) -> Tiling:
    """The tile sizes of least estimated cycles that fit 1/nbuf of every SRAM."""
    inp_h = cfg.INP_BUFF_DEPTH // nbuf
    wgt_h = cfg.WGT_BUFF_DEPTH // nbuf
    acc_h = cfg.ACC_BUFF_DEPTH // nbuf
    uop_max = cfg.UOP_BUFF_DEPTH // 2
    KK = KH * KW
    if KK > min(wgt_h, uop_max):
        raise VTALoweringError(
            f"a {KH}x{KW} kernel needs {KK} weight blocks per step; the uop/weight buffers "
            f"hold {min(wgt_h, uop_max)} per kernel: the uop kernel would overflow the uop "
            "buffer")
    tco, tci, th, tw = np.meshgrid(_cands(OB), _cands(CB), _cands(OH), _cands(OW),
                                   indexing="ij")
    tco, tci, th, tw = (a.reshape(-1) for a in (tco, tci, th, tw))
    th_in = (th - 1) * sh + KH
    tw_in = (tw - 1) * sw + KW
    rows = np.array([_acc_rows_per_block(int(t), sparse) for t in range(OB + 1)])
    fits = ((tci * th_in * tw_in <= inp_h) & (tco * tci * KK <= wgt_h)
            & (tco * tci * KK <= uop_max) & (tco + rows[tco] * th * tw <= acc_h)
            & (sh * tw_in < 2048) & (th * tw <= 4096))
    if not fits.any():
        raise VTALoweringError(
            f"no tile of this layer fits the SRAMs of {cfg} (inp {inp_h}, wgt {wgt_h}, acc "
            f"{acc_h} elements per buffer half); the kernel {KH}x{KW} with stride "
            f"({sh}, {sw}) is too large")
    tco, tci, th, tw, th_in, tw_in = (a[fits] for a in (tco, tci, th, tw, th_in, tw_in))
    bus = cfg.BUS_WIDTH_BYTES
    n_ci = -(-CB // tci)
    n_tiles = (-(-OB // tco)) * (-(-OH // th)) * (-(-OW // tw))
    gemm = tco * tci * KK * th * tw + 8
    dma_inp = tci * (th_in * -(-tw_in * cfg.INP_ELEM_BYTES // bus) + 40)
    dma_wgt = tco * tci * KK * cfg.WGT_ELEM_BYTES / bus + 40
    n_sp = (-(-OH // th)) * (-(-OW // tw))
    reuse = (n_ci == 1) & (n_sp > nbuf)
    dma_wgt = np.where(reuse, dma_wgt * nbuf / n_sp, dma_wgt)
    dma = dma_inp + dma_wgt
    step = np.maximum(gemm, dma) if nbuf > 1 else gemm + dma
    end = 2 * 4 * tco * th * tw + tco * (th * -(-tw * cfg.OUT_ELEM_BYTES // bus) + 40)
    tile_cost = n_ci * step + (end if nbuf == 1 else np.maximum(end - step, 0) + 40)
    cost = n_tiles * tile_cost
    best = int(np.argmin(cost))
    return Tiling(int(tco[best]), int(tci[best]), int(th[best]), int(tw[best]))


# ---------------------------------------------------------------------- uop cache
class _UopCache:
    """Kernels in the uop SRAM (bump allocation, flushed when full) and their DRAM copies."""

    def __init__(self, depth: int):
        self.depth = depth
        self.sram = {}
        self.top = 0
        self.dram = {}
        self.words = []
        self.loads = []            # LOAD UOP instructions whose dram_base is region-relative

    def get(self, kernel: tuple, out: list) -> int:
        """SRAM offset of the kernel; appends a LOAD UOP to `out` when it is not resident."""
        if kernel in self.sram:
            return self.sram[kernel]
        n = len(kernel)
        if n > self.depth:
            raise VTALoweringError(f"a uop kernel of {n} micro-ops overflows the uop buffer "
                                   f"of {self.depth}")
        if self.top + n > self.depth:
            self.sram.clear()
            self.top = 0
        if kernel not in self.dram:
            self.dram[kernel] = len(self.words)
            self.words.extend(kernel)
        off = self.top
        ld = Load(memory_type=MemId.UOP, sram_base=off, dram_base=self.dram[kernel], y_size=1,
                  x_size=n, x_stride=n)
        out.append(ld)
        self.loads.append(ld)
        self.sram[kernel] = off
        self.top += n
        return off


# ---------------------------------------------------------------------- lowering
class _NeedsSparseBudget(Exception):
    pass


def _hazard_free_order(blocks) -> list:
    """(block index, replica) pairs: blocks in (cb, kh, kw) order, each time preferring the
    first remaining block whose output block differs from the previous two uops'; when none
    does, a replica accumulator keeps the written rows distinct."""
    pending = sorted(range(len(blocks)), key=lambda i: (blocks[i][1:], blocks[i][0]))
    out, hist = [], []
    while pending:
        last = {ob for ob, _ in hist[-2:]}
        pick = next((p for p, i in enumerate(pending[:64]) if blocks[i][0] not in last), 0)
        i = pending.pop(pick)
        ob = blocks[i][0]
        r = 0
        while (ob, r) in hist[-2:]:
            r += 1
        hist.append((ob, r))
        out.append((i, r))
    return out


def lower_conv2d(x, w, bias=None, *, stride=1, padding=0, groups: int = 1, shift: int = 0,
                 relu: bool = False, clip=None, cfg=None, virtual_threads: int = 2,
                 skip_zero_blocks: bool = True, tiling: Optional[Tiling] = None) -> VTAProgram:
    """A VTA program computing requant(conv2d(x, w) + bias) for NCHW int8 x, OIHW int8 w
    (dilation 1; groups in whole BLOCK_IN/BLOCK_OUT channel blocks), int32 bias.

    Tiles are first sized for dense kernels; if zero blocks leave some tile needing more
    replica accumulators than that budget, the layer is re-tiled with the sparse budget."""
    kw = dict(stride=stride, padding=padding, groups=groups, shift=shift, relu=relu,
              clip=clip, cfg=cfg, virtual_threads=virtual_threads,
              skip_zero_blocks=skip_zero_blocks, tiling=tiling)
    try:
        return _lower_conv2d(x, w, bias, sparse_budget=False, **kw)
    except _NeedsSparseBudget:
        return _lower_conv2d(x, w, bias, sparse_budget=True, **kw)


def _lower_conv2d(x, w, bias, *, stride, padding, groups, shift, relu, clip, cfg,
                  virtual_threads, skip_zero_blocks, tiling, sparse_budget) -> VTAProgram:
    cfg = load_config(cfg)
    x = _as_int8(x, "x", cfg)
    w = _as_int8(w, "w", cfg)
    if x.ndim != 4 or w.ndim != 4:
        raise VTALoweringError(f"conv2d takes NCHW x and OIHW w, got shapes {x.shape}, "
                               f"{w.shape}")
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    sh, sw = _strides(stride)
    pt, pl, pb, pr = _pads(padding)
    if min(sh, sw) < 1:
        raise VTALoweringError(f"stride must be >= 1, got {stride!r}")
    if min(pt, pl, pb, pr) < 0 or max(pt, pl, pb, pr) > 15:
        raise VTALoweringError(f"padding {padding!r}: VTA's LOAD pads 0..15 elements per side")
    if groups < 1 or C % groups or O % groups or Cg * groups != C:
        raise VTALoweringError(f"groups={groups} with {C} input / {O} output channels and "
                               f"weight shape {w.shape}: channels must split evenly")
    BI, BO, B = cfg.BLOCK_IN, cfg.BLOCK_OUT, cfg.BATCH
    if groups > 1 and (Cg % BI or (O // groups) % BO):
        raise VTALoweringError(
            f"groups={groups}: VTA needs whole channel blocks per group ({Cg} input channels "
            f"per group must be a multiple of BLOCK_IN={BI}, {O // groups} output channels a "
            f"multiple of BLOCK_OUT={BO}); depthwise convolution is not supported")
    if virtual_threads not in (1, 2):
        raise VTALoweringError(f"virtual_threads must be 1 or 2, got {virtual_threads}")
    OH = (H + pt + pb - KH) // sh + 1
    OW = (W + pl + pr - KW) // sw + 1
    if OH < 1 or OW < 1:
        raise ShapeError(f"conv2d output would be empty: input {H}x{W}, kernel {KH}x{KW}, "
                         f"padding {padding!r}, stride {stride!r}")
    lo, hi = _clip(relu, clip)
    if not 0 <= shift <= 15:
        raise VTALoweringError(f"shift must be 0..15 (ALU SHR by an immediate), got {shift}")
    if bias is not None:
        bias = np.asarray(bias).reshape(-1)
        if bias.shape != (O,) or not np.issubdtype(bias.dtype, np.integer):
            raise VTALoweringError(f"bias must be {O} integers, got {bias.dtype} {bias.shape}")
        if bias.min() < -2**31 or bias.max() >= 2**31:
            raise VTALoweringError("bias must fit int32")

    nbuf = virtual_threads
    NB, CB, OB = ceil_div(N, B), ceil_div(C, BI), ceil_div(O, BO)
    OBg = OB // groups if groups > 1 else OB
    CBg = CB // groups if groups > 1 else CB
    KK = KH * KW

    # ---- weights: packed blocks and which are non-zero
    wp = pack_weight(w, cfg)                              # (OB, CBg, KH, KW, BO, BI)
    nz = np.any(wp != 0, axis=(-2, -1)) if skip_zero_blocks else np.ones(wp.shape[:4], bool)
    sparse = sparse_budget and not nz.all()
    if tiling is None:
        tiling = choose_tiling(cfg, OBg, CBg, OH, OW, KH, KW, sh, sw, nbuf, sparse)
    else:
        tiling = Tiling(min(tiling.tco, OBg), min(tiling.tci, CBg), min(tiling.th, OH),
                        min(tiling.tw, OW))
        t = tiling
        need = dict(inp=t.tci * ((t.th - 1) * sh + KH) * ((t.tw - 1) * sw + KW),
                    wgt=t.tco * t.tci * KH * KW,
                    acc=t.tco + _acc_rows_per_block(t.tco, sparse) * t.th * t.tw)
        for mem, n in need.items():
            if min(t.tco, t.tci, t.th, t.tw) < 1 or n > cfg.buff_depth(mem) // nbuf:
                raise VTALoweringError(
                    f"tiling {t} needs {n} {mem} elements per buffer, more than the "
                    f"{cfg.buff_depth(mem) // nbuf} of 1/{nbuf} of the {mem} SRAM")
    tco, tci, th, tw = tiling.tco, tiling.tci, tiling.th, tiling.tw

    # ---- DRAM image
    img = DRAMImage(cfg)
    r_inp = img.add("inp", pack_activation(x, cfg), "inp")
    folded = None
    if bias is not None or shift > 0:
        b = np.zeros(O, np.int64) if bias is None else bias.astype(np.int64)
        folded = _wrap32(b + ((1 << (shift - 1)) if shift > 0 else 0)).astype(np.int32)
        if not folded.any():
            folded = None
    r_bias = img.add("bias", pack_bias(folded, cfg), "acc") if folded is not None else None
    r_out = img.alloc("out", NB * OB * OH * OW, "out")

    inp_h = cfg.INP_BUFF_DEPTH // nbuf
    wgt_h = cfg.WGT_BUFF_DEPTH // nbuf
    acc_h = cfg.ACC_BUFF_DEPTH // nbuf
    uops = _UopCache(cfg.UOP_BUFF_DEPTH)

    # weight tiles, compact, in DRAM order
    wtiles = {}                                           # (g, oct, cit) -> (offset, blocks)
    wblocks = []
    stats = dict(blocks_total=0, blocks_skipped=0, wgt_bytes_skipped=0, gemm_uops_skipped=0)
    for g in range(groups):
        for oc0 in range(0, OBg, tco):
            for ci0 in range(0, CBg, tci):
                blocks = []
                for ob in range(oc0, min(OBg, oc0 + tco)):
                    for cb in range(ci0, min(CBg, ci0 + tci)):
                        for kh in range(KH):
                            for kw in range(KW):
                                if nz[g * OBg + ob, cb, kh, kw]:
                                    blocks.append((ob - oc0, cb - ci0, kh, kw))
                wtiles[(g, oc0, ci0)] = (len(wblocks), blocks)
                wblocks.extend(wp[g * OBg + oc0 + b[0], ci0 + b[1], b[2], b[3]] for b in blocks)
    r_wgt = img.add("wgt", np.array(wblocks, np.int8).reshape(-1, BO, BI)
                    if wblocks else np.zeros((0, BO, BI), np.int8), "wgt")
    # a zero source for input tiles that lie wholly in the padding
    th_in_max, tw_in_max = (th - 1) * sh + KH, (tw - 1) * sw + KW
    r_zero = None

    # ---- tiles and steps
    tiles = []
    for g in range(groups):
        for nb in range(NB):
            for oc0 in range(0, OBg, tco):
                for oh0 in range(0, OH, th):
                    for ow0 in range(0, OW, tw):
                        t = dict(g=g, nb=nb, oc0=oc0, tco=min(tco, OBg - oc0), oh0=oh0,
                                 th=min(th, OH - oh0), ow0=ow0, tw=min(tw, OW - ow0), steps=[])
                        P = t["th"] * t["tw"]
                        for ci0 in range(0, CBg, tci):
                            _, blocks = wtiles[(g, oc0, ci0)]
                            full = t["tco"] * min(tci, CBg - ci0) * KK
                            stats["blocks_total"] += full
                            stats["blocks_skipped"] += full - len(blocks)
                            stats["gemm_uops_skipped"] += (full - len(blocks)) * P
                            if blocks:
                                t["steps"].append(ci0)
                        tiles.append(t)
    n_steps = sum(len(t["steps"]) for t in tiles)
    n_tiles = len(tiles)

    insns = []
    wgt_in_half = [None] * nbuf
    orders = {}
    k = 0                                                 # global step index
    for ti, t in enumerate(tiles):
        g, nb, tco_t, th_t, tw_t = t["g"], t["nb"], t["tco"], t["th"], t["tw"]
        P = th_t * tw_t
        th_in, tw_in = (th_t - 1) * sh + KH, (tw_t - 1) * sw + KW
        HWin = th_in * tw_in
        acc_base = (ti % nbuf) * acc_h
        bias_base = acc_base
        data = acc_base + tco
        # kernels of every step first: the tile's replica count
        kernels, step_uops, R = [], [], 1
        for ci0 in t["steps"]:
            off, blocks = wtiles[(g, t["oc0"], ci0)]
            kernels.append((ci0, off, blocks))
            key = (g, t["oc0"], ci0)
            if key not in orders:
                orders[key] = _hazard_free_order(blocks)
            us = [(ob, r, cb * HWin + kh * tw_in + kw, i)
                  for ob, r, (_, cb, kh, kw), i in ((blocks[i][0], r, blocks[i], i)
                                                    for i, r in orders[key])]
            R = max([R] + [u[1] + 1 for u in us])
            step_uops.append(us)
        if tco + R * tco_t * P > acc_h:
            raise _NeedsSparseBudget()
        rows = R * tco_t * P
        tile_start = True

        def compute_head(out: list):
            """The tile's first compute instructions: bias into ACC, reset."""
            if r_bias is not None:
                out.append(Load(memory_type=MemId.ACC, sram_base=bias_base,
                                dram_base=r_bias.addr + g * OBg + t["oc0"], y_size=1,
                                x_size=tco_t, x_stride=tco_t))
            off = uops.get(((data, 0, 0),), out)
            out.append(Gemm(reset_reg=True, uop_bgn=off, uop_end=off + 1, iter_out=rows,
                            iter_in=1, dst_factor_out=1))

        for si, (ci0, off, blocks) in enumerate(kernels):
            hk = k % nbuf
            inp_base, wgt_base = hk * inp_h, hk * wgt_h
            tci_t = min(tci, CBg - ci0)
            # ---- load module
            loads = []
            wkey = (g, t["oc0"], ci0)
            if wgt_in_half[hk] != wkey:
                loads.append(Load(memory_type=MemId.WGT, sram_base=wgt_base,
                                  dram_base=r_wgt.addr + off, y_size=1, x_size=len(blocks),
                                  x_stride=len(blocks)))
                wgt_in_half[hk] = wkey
            ih0, iw0 = t["oh0"] * sh - pt, t["ow0"] * sw - pl
            y0, y1 = max(ih0, 0), min(ih0 + th_in, H)
            x0, x1 = max(iw0, 0), min(iw0 + tw_in, W)
            for c in range(tci_t):
                cbg = g * CBg + ci0 + c
                sram = inp_base + c * HWin
                if y1 > y0 and x1 > x0:
                    loads.append(Load(
                        memory_type=MemId.INP, sram_base=sram,
                        dram_base=r_inp.addr + ((nb * CB + cbg) * H + y0) * W + x0,
                        y_size=y1 - y0, x_size=x1 - x0, x_stride=W, y_pad_0=y0 - ih0,
                        y_pad_1=ih0 + th_in - y1, x_pad_0=x0 - iw0, x_pad_1=iw0 + tw_in - x1))
                else:
                    if r_zero is None:
                        r_zero = img.alloc("zeros", th_in_max * tw_in_max, "inp")
                    loads.append(Load(memory_type=MemId.INP, sram_base=sram,
                                      dram_base=r_zero.addr, y_size=th_in, x_size=tw_in,
                                      x_stride=tw_in))
            loads[0].pop_next = k >= nbuf
            loads[-1].push_next = True
            insns.extend(loads)
            # ---- compute module
            comp = []
            if tile_start:
                head = []
                compute_head(head)
                first = next(x for x in head if not (isinstance(x, Load)
                                                     and x.memory_type == MemId.UOP))
                first.pop_next = ti >= nbuf
                comp.extend(head)
                tile_start = False
            kern = tuple((data + (r * tco_t + ob) * P, inp_base + src, wgt_base + i)
                         for ob, r, src, i in step_uops[si])
            uo = uops.get(kern, comp)
            comp.append(Gemm(uop_bgn=uo, uop_end=uo + len(kern), iter_out=th_t, iter_in=tw_t,
                             dst_factor_out=tw_t, dst_factor_in=1, src_factor_out=sh * tw_in,
                             src_factor_in=sw, pop_prev=True, push_prev=k + nbuf < n_steps))
            insns.extend(comp)
            k += 1
        # ---- tile end: replicas, bias, shift, clip; then store
        comp = []
        if tile_start:                       # a tile with no non-zero weight block
            compute_head(comp)
            first = next(x for x in comp if not (isinstance(x, Load)
                                                 and x.memory_type == MemId.UOP))
            first.pop_next = ti >= nbuf
        n = tco_t * P
        for r in range(1, R):
            uo = uops.get(((data, data + r * n, 0),), comp)
            comp.append(Alu(alu_opcode=AluOp.ADD, uop_bgn=uo, uop_end=uo + 1, iter_out=n,
                            iter_in=1, dst_factor_out=1, src_factor_out=1))
        if r_bias is not None:
            uo = uops.get(((data, bias_base, 0),), comp)
            comp.append(Alu(alu_opcode=AluOp.ADD, uop_bgn=uo, uop_end=uo + 1, iter_out=tco_t,
                            iter_in=P, dst_factor_out=P, dst_factor_in=1, src_factor_out=1,
                            src_factor_in=0))
        uo = uops.get(((data, 0, 0),), comp)
        imm_ops = ([(AluOp.SHR, shift)] if shift else []) + [(AluOp.MIN, hi), (AluOp.MAX, lo)]
        for op, imm in imm_ops:
            comp.append(Alu(alu_opcode=op, use_imm=True, imm=imm, uop_bgn=uo, uop_end=uo + 1,
                            iter_out=n, iter_in=1, dst_factor_out=1))
        comp[-1].push_next = True
        insns.extend(comp)
        stores = []
        for ob in range(tco_t):
            obg = g * OBg + t["oc0"] + ob
            stores.append(Store(memory_type=MemId.OUT, sram_base=data + ob * P,
                                dram_base=r_out.addr + ((nb * OB + obg) * OH + t["oh0"]) * OW
                                + t["ow0"], y_size=th_t, x_size=tw_t, x_stride=OW))
        stores[0].pop_prev = True
        stores[-1].push_prev = ti + nbuf < n_tiles
        insns.extend(stores)
    insns.append(Finish())

    r_uop = img.add_uops("uop", [Uop(*u) for u in uops.words] or [Uop()])
    for ld in uops.loads:
        ld.dram_base += r_uop.addr
    stats["wgt_bytes_skipped"] = stats["blocks_skipped"] * cfg.WGT_ELEM_BYTES
    meta = dict(op="conv2d", x_shape=(N, C, H, W), w_shape=tuple(w.shape),
                out_shape=(N, O, OH, OW), stride=(sh, sw), padding=(pt, pl, pb, pr),
                groups=groups, shift=shift, clip=(lo, hi), virtual_threads=nbuf,
                tiling=dict(tco=tco, tci=tci, th=th, tw=tw), tiles=n_tiles, steps=n_steps,
                macs=int(N * O * OH * OW * Cg * KK), uops=len(uops.words), **stats)
    return VTAProgram(cfg, insns, img, meta)


def lower_dense(x, w, bias=None, *, shift: int = 0, relu: bool = False, clip=None, cfg=None,
                virtual_threads: int = 2, skip_zero_blocks: bool = True,
                tiling: Optional[Tiling] = None) -> VTAProgram:
    """A VTA program computing requant(x @ w.T + bias) for (N, C) int8 x, (O, C) int8 w."""
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise VTALoweringError(f"dense takes x (N, C) and w (O, C), got {x.shape}, {w.shape}")
    prog = lower_conv2d(x[:, :, None, None], w[:, :, None, None], bias, shift=shift,
                        relu=relu, clip=clip, cfg=cfg, virtual_threads=virtual_threads,
                        skip_zero_blocks=skip_zero_blocks, tiling=tiling)
    prog.meta.update(op="dense", out_shape=(x.shape[0], w.shape[0]))
    return prog


def read_output(program: VTAProgram, dram: Optional[DRAMImage] = None) -> np.ndarray:
    """The layer's int8 output (NCHW, or (N, O) for dense) from a DRAM image after a run."""
    cfg = program.cfg
    dram = program.dram if dram is None else dram
    N, O, OH, OW = (program.meta["out_shape"] + (1, 1))[:4] if program.meta["op"] == "dense" \
        else program.meta["out_shape"]
    packed = dram.read("out").reshape(ceil_div(N, cfg.BATCH), ceil_div(O, cfg.BLOCK_OUT), OH,
                                      OW, cfg.BATCH, cfg.BLOCK_OUT)
    y = unpack_acc(packed, (N, O, OH, OW), cfg)
    return y.reshape(N, O) if program.meta["op"] == "dense" else y


def run_layer(program: VTAProgram, **kwargs):
    """Simulate and return (output, SimResult)."""
    from .simulator import simulate
    res = simulate(program, **kwargs)
    return read_output(program, res.dram), res
