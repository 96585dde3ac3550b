"""Run-time MCQ activation sampling as a TIR kernel (CPU and CUDA).

Per sample of a batch x (batch first, float32) the kernel computes what
`mctvm.mcq.activation_counts(x, K, xi, scan_block=SCAN_BLOCK)` computes, count for count:

    n = elements per sample,  N = floor(K * n + 1/2)    (fixed at build time: shapes are static)
    cs_i = cumsum |x| in float64, as a blocked scan (below);  f = cs_{n-1}
    r = N / f (once per scan block);  y_i = cs_i * r,  y_{n-1} = N   (N * P_i, P_i = cs_i / f,
    with one division per block instead of one per value: the count loop was division bound)
    k = floor(y);  c_i = k + (y - k > xi)  (= ceil(y - xi), exactly)
    count_i = sign(x_i) * (c_i - c_{i-1}),  c_{-1} = 0
    scale = f / N (float64, stored as float32); all counts 0 and scale 0 where f == 0

with one xi per call shared by the whole batch, drawn in the kernel from the run-time seed:
xi = uniform01(seed, stream, counter=0) (Philox4x32-10, see `random.py`); `xi_for(seed,
stream)` gives the same number in numpy. Counts beyond the output type are saturated to
its symmetric range ([-127, 127] for int8, [-32767, 32767] for int16), or to [0, 255] for
uint8, never wrapped, and counted in `stats`. uint8 counts are for non-negative inputs: they
store |count| (the caller proves x >= 0, see passes/non_negative.py).

Blocked scan. A sample is cut into blocks of SCAN_BLOCK values. Each block sums |x| from 0
(local_i, float64) in SIMD lanes, in the order of `mcq._lane_scan`: chunks of LANES values
scanned in-register in three shift-and-add steps, the chunks' totals carried serially (the
serial one-value-at-a-time scan was bound by the latency of its adds; this runs 1.6x
faster on a Zen 5). Block bases add up serially (base_0 = 0, base_{j+1} = base_j +
local_last of block j); cs_i = base_j + local_i. The end of block j is then exactly
base_{j+1}, so c just before block j+1 is c(base_{j+1}), which that block computes on its
own: blocks are independent once the bases are known, and the hits telescope to exactly N.
cs is non-decreasing, so hits are never negative. Against the strictly serial float64 scan
(the paper's order, `activation_counts` without scan_block) only the rounding differs: a
count moves by at most 1, rarely, with the same total. Schedules: CPU, a batch runs one
task per sample (its values stay in cache through the stages), one sample runs its blocks
in parallel (up to SERIAL_MAX values, serially); the count loop over a block's values runs
in SIMD lanes too. CUDA, one thread per block (the same scan order, with scalars), then per
sample.

Floating-point order. LLVM never reassociates floating-point adds without fast-math flags,
which TVM's default llvm target does not set, so each scan sums in the order it is written
in. The scan's lane shifts multiply by 0 or 1, exactly, so the FMAs LLVM may form there
round as the separate add does. The one other product that feeds an addition is
y = N * P, used by both floor(y) and y - k; a fused multiply-add (TVM's LLVM target allows
FP-op fusion, `AllowFPOpFusion = Fast`) would compute N * P - k unrounded and could flip a
comparison with xi. y is bound once (a Let), and LLVM's x86 backend only fuses a product
with a single use (its FMA fusion is not "aggressive"), so no FMA is formed there
(tests/test_kernel_activation_sampling.py checks the assembly for fmsub forms). On CUDA,
where nvcc fuses aggressively, the product is `__dmul_rn`, which is never contracted.
floor(y) is the truncation of y (y >= 0 and y <= N < 2**52).

Fused max pool. With `pool=MaxPool2d(...)` the kernel reads the pool's input and samples
its output (flattened in row-major order: a reshape between pool and GEMM is free). On the
CPU each task first pools its sample into a buffer of its own (one sample: its channel
planes in parallel), which the stages read while it is in cache; 2x2 windows of stride 2
read each input row as 64-bit pairs, max(lo, hi), in SIMD lanes. On CUDA one thread per
channel plane pools into a global buffer first. The counts are those of the unfused kernel
on the pooled tensor.

Parameters of the PrimFunc (destination-passing style, as R.call_tir expects):

    x      float32[shape]         the activations, batch first (with a pool: its input,
                                  float32[batch, channels, height, width])
    seed   int64[1]               the 64-bit seed (its bits; lo/hi words form the Philox key)
    counts out_dtype[shape]       signed hit counts (uint8: unsigned)
    scale  float32[batch]         f / N per sample (0 where f == 0)
    stats  int32[batch, 3]        [nonzero counts, max |count| before saturation
                                   (clipped to 2**31 - 1), saturated elements]

Non-finite inputs give unspecified counts (the numpy reference refuses them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..mcq import SCAN_LANES
from .random import seed_words, uniform01, uniform01_np

__all__ = ["sampling_prim_func", "cuda_sampling_prim_func", "xi_for", "num_samples",
           "COUNT_LIMITS", "MaxPool2d"]

# saturation ranges: symmetric for signed counts, [0, 255] for uint8
COUNT_LIMITS = {"int8": 127, "int16": 32767, "int32": 2**31 - 1, "uint8": 255}
_MAX_N = 2**52  # as in mctvm.mcq: N * P must stay exact-integer-safe in float64
_INT32_MAX = 2**31 - 1
# elements per scan block: the blocks of a sample are scanned in parallel (see the doc)
SCAN_BLOCK = 1024
# values of a scan block summed side by side in SIMD lanes (mcq._lane_scan; 8, as the
# float64x8 annotation of the CPU scan below spells it)
LANES = SCAN_LANES
# a single sample up to this many values is sampled by one thread: two parallel launches cost
# more than they save there (1x128x3x3: 4.6 -> 1.6 us, 1x64x14x14: 10.7 -> 8.2 us measured)
SERIAL_MAX = 1 << 14


@dataclass(frozen=True)
class MaxPool2d:
    """A max pool over NCHW input (`channels`, `height`, `width` per sample), without padding
    or dilation, fused ahead of the sampling: the kernel samples its output."""

    channels: int
    height: int
    width: int
    size: tuple[int, int]
    stride: tuple[int, int]

    @property
    def output_hw(self) -> tuple[int, int]:
        return tuple((i - k) // s + 1 for i, k, s in zip((self.height, self.width), self.size,
                                                       self.stride))

    @property
    def input_size(self) -> int:
        """Values per sample the kernel reads."""
        return self.channels * self.height * self.width

    def window_max(self, xv, top):
        """The max over the window whose top-left value is xv[top] (xv: the input flattened)."""
        from tvm import tirx

        value = xv[top]
        for kh in range(self.size[0]):
            for kw in range(self.size[1]):
                if kh or kw:
                    value = tirx.max(value, xv[top + kh * self.width + kw])
        return value


def xi_for(seed: int, stream: int) -> float:
    """The xi the kernel draws for (seed, stream): uniform01_np(seed, stream, 0)."""
    return float(uniform01_np(seed, stream, 0))


def num_samples(K: float, n: int) -> int:
    """N = floor(K * n + 1/2), as mctvm.mcq computes it."""
    return math.floor(K * n + 0.5)


def _check(shape, K, stream, out_dtype):
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of ints (batch first), got {shape!r}") from None
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(
            f"shape must have a batch axis and positive extents, got {shape}; "
            "pass a static shape such as (batch, channels, height, width)"
        )
    try:
        k = float(K)
    except (TypeError, ValueError):
        k = float("nan")
    if isinstance(K, bool) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"K must be a positive finite number, got {K!r}")
    out_dtype = str(out_dtype)
    if out_dtype not in COUNT_LIMITS:
        raise ValueError(f"out_dtype must be one of {sorted(COUNT_LIMITS)}, got {out_dtype!r}")
    stream = int(stream)
    if not 0 <= stream < 2**32:
        raise ValueError(f"stream must be in [0, 2**32), got {stream}")
    n = int(np.prod(shape[1:], dtype=np.int64))
    if shape[0] * n >= 2**31:
        raise ValueError(
            f"x of shape {shape} has {shape[0] * n} elements, beyond the kernel's int32 "
            "indexing; sample it in smaller batches"
        )
    N = num_samples(k, n)
    if N < 1:
        raise ValueError(
            f"K={K} with {n} values per sample gives N = floor(K*n + 1/2) = 0 samples; "
            f"use K >= {0.5 / n:.3g}"
        )
    if N > _MAX_N:
        raise ValueError(f"K={K} with {n} values per sample gives N={N} > 2**52; use a smaller K")
    return shape, k, stream, out_dtype, n, N


def _build(shape, K, stream, out_dtype, device, threads_per_block, name, pool):
    from tvm import tirx
    from tvm.script import tirx as T

    shape, K, stream, out_dtype, n, N = _check(shape, K, stream, out_dtype)
    B = shape[0]
    if pool is None:
        x_shape, n_in = shape, n
    else:
        n_in = _check_pool(pool, shape, n)
        x_shape = (B, pool.channels, pool.height, pool.width)
    lim = COUNT_LIMITS[out_dtype]
    Nf = float(N)  # exact: N <= 2**52
    L = min(SCAN_BLOCK, n)
    nb = (n + L - 1) // L  # scan blocks per sample
    tasks = B * nb
    cdt = "int32" if N <= _INT32_MAX else "int64"  # c_i <= N
    cuda = device == "cuda"

    if cuda:

        def times(p, r):  # never contracted into an FMA by nvcc
            return tirx.call_pure_extern("float64", "__dmul_rn", p, r)

    else:

        def times(p, r):
            return p * r

    def lane_shift(v, k):
        # lanes l >= k take v[l - k], the others 0: a rotation times a 0/1 vector. (LLVM makes
        # a zero-filling shuffle or a bit mask a vexpandpd, which made the scan 3x slower on
        # Zen 5.) v + lane_shift(v, k) may become an FMA: the product is exact, so the sum is
        # the same.
        ones = tirx.Shuffle([tirx.Broadcast(tirx.FloatImm("float64", 0.0), LANES),
                             tirx.Broadcast(tirx.FloatImm("float64", 1.0), LANES)],
                            [tirx.IntImm("int32", LANES + l if l >= k else l)
                             for l in range(LANES)])
        return tirx.Shuffle([v], [tirx.IntImm("int32", (l - k) % LANES)
                                  for l in range(LANES)]) * ones

    def lane_scan(v):
        # the running sum of v's lanes, mcq._lane_scan's three steps
        for k in (1, 2, 4):
            v = v + lane_shift(v, k)
        return v

    def last_lane(v):
        return tirx.Shuffle([v], [tirx.IntImm("int32", LANES - 1)] * LANES)

    def xi_expr(seed_value):
        return uniform01(*seed_words(seed_value), stream, 0)

    def ceil_count(p, r, xi):
        # c = ceil(p * r - xi) (r = N / f), exactly. y is bound once (a Let), so its product
        # has two uses and is never contracted into an FMA.
        y = tirx.Var("y", "float64")
        k = tirx.Cast(cdt, y)  # = floor(y): y >= 0
        c = k + tirx.Cast(cdt, y - tirx.Cast("float64", k) > xi)
        return tirx.Let(y, times(p, r), c)

    if out_dtype.startswith("uint"):

        @T.macro
        def store_count(cv, i, q, x):  # non-negative inputs: the count is |count|
            cv[i] = q

    else:

        @T.macro
        def store_count(cv, i, q, x):
            cv[i] = T.if_then_else(x < T.float32(0), -q, q)

    if cuda:

        @T.macro
        def block_cumsum(xv, x0, cs, cs0, j):
            # stage 1, scan block j of the sample at xv[x0:] from 0, in mcq._lane_scan's order
            # with scalars: each chunk of LANES values scanned in three steps (descending, so
            # in place is the same as side by side), then the running carry added
            length = T.min(L, n - j * L)
            v = T.alloc_buffer((LANES,), "float64", scope="local")
            carry = T.alloc_buffer((1,), "float64", scope="local")
            carry[0] = T.float64(0)
            for k in T.serial((length + LANES - 1) // LANES):
                for l in T.unroll(LANES):
                    v[l] = T.float64(0)
                for l in T.serial(T.min(LANES, length - k * LANES)):
                    v[l] = T.Cast("float64", T.fabs(xv[x0 + j * L + k * LANES + l]))
                for l in T.unroll(LANES - 1):
                    v[LANES - 1 - l] = v[LANES - 1 - l] + v[LANES - 2 - l]
                for l in T.unroll(LANES - 2):
                    v[LANES - 1 - l] = v[LANES - 1 - l] + v[LANES - 3 - l]
                for l in T.unroll(LANES - 4):
                    v[LANES - 1 - l] = v[LANES - 1 - l] + v[LANES - 5 - l]
                for l in T.serial(T.min(LANES, length - k * LANES)):
                    cs[cs0 + j * L + k * LANES + l] = carry[0] + v[l]
                carry[0] = carry[0] + v[LANES - 1]

    else:

        @T.macro
        def block_cumsum(xv, x0, cs, cs0, j):
            # stage 1, scan block j of the sample at xv[x0:] from 0 (mcq._lane_scan): chunks
            # of LANES values scanned in SIMD registers, the last chunk zero-padded
            length = T.min(L, n - j * L)
            carry = T.alloc_buffer((LANES,), "float64", scope="local")
            carry[T.Ramp(0, 1, LANES)] = T.Broadcast(T.float64(0), LANES)
            for k in T.serial(length // LANES):
                v: T.float64x8 = lane_scan(T.Cast(f"float64x{LANES}", T.fabs(
                    xv[T.Ramp(x0 + j * L + k * LANES, 1, LANES)])))
                cs[T.Ramp(cs0 + j * L + k * LANES, 1, LANES)] = carry[T.Ramp(0, 1, LANES)] + v
                carry[T.Ramp(0, 1, LANES)] = carry[T.Ramp(0, 1, LANES)] + last_lane(v)
            if length % LANES != 0:
                tail = T.alloc_buffer((LANES,), "float64", scope="local")
                for l in T.unroll(LANES):
                    tail[l] = T.float64(0)
                for l in T.serial(length % LANES):
                    tail[l] = T.Cast("float64", T.fabs(xv[x0 + j * L + length // LANES * LANES
                                                          + l]))
                tail[T.Ramp(0, 1, LANES)] = carry[T.Ramp(0, 1, LANES)] + lane_scan(
                    tail[T.Ramp(0, 1, LANES)])
                for l in T.serial(length % LANES):
                    cs[cs0 + j * L + length // LANES * LANES + l] = tail[l]

    @T.macro
    def sample_cumsums(xv, x0, cs):
        # stage 1 for all of the sample at xv[x0:], block by block
        for j in T.serial(nb):
            block_cumsum(xv, x0, cs, 0, j)

    @T.macro
    def sample_bases(cs, cs0, base, total, b):
        # stage 2, sample b: base_j = base_{j-1} + (block j-1's sum), serial; f = the last
        run = T.alloc_buffer((1,), "float64", scope="local")
        run[0] = T.float64(0)
        for j in T.serial(nb):
            base[b * nb + j] = run[0]
            run[0] = run[0] + cs[cs0 + T.min(j * L + L, n) - 1]
        total[b] = run[0]

    @T.macro
    def block_counts(xv, x0, cv, cs, cs0, base, total, bstats, xi, b, j):
        # stage 3, scan block j of sample b (its values at xv[x0:]): P_i = (base_j + local_i) / f,
        # hits c_i - c_{i-1}
        t = b * nb + j
        start = b * n + j * L
        length = T.min(L, n - j * L)
        # loop invariants bound to registers: loads in the count loop become gathers
        f: T.float64 = total[b]
        r: T.float64 = T.float64(Nf) / T.max(f, T.float64(1e-300))  # unused where f == 0
        block_base: T.float64 = base[t]
        block_xi: T.float64 = xi
        if f == T.float64(0):
            for i in T.serial(length):
                cv[start + i] = T.Cast(out_dtype, 0)
            bstats[t * 3] = 0
            bstats[t * 3 + 1] = 0
            bstats[t * 3 + 2] = 0
        else:
            # c[0]: c just before the block (the previous block ends exactly at base_j);
            # then c of each value (a loop without dependences, vectorised), then the hits
            c = T.alloc_buffer((L + 1,), cdt, scope="local")
            c[0] = T.if_then_else(j == 0, T.Cast(cdt, 0),
                                  ceil_count(block_base, r, block_xi))
            for i in T.serial(length):
                c[i + 1] = ceil_count(block_base + cs[cs0 + j * L + i], r, block_xi)
            if j == nb - 1:
                c[length] = T.Cast(cdt, N)  # the sample's last c is N (P = 1)
            nnz = T.alloc_buffer((1,), "int32", scope="local")
            big = T.alloc_buffer((1,), cdt, scope="local")
            sat = T.alloc_buffer((1,), "int32", scope="local")
            nnz[0] = 0
            big[0] = T.Cast(cdt, 0)
            sat[0] = 0
            for i in T.serial(length):
                hit = c[i + 1] - c[i]
                nnz[0] = nnz[0] + T.Cast("int32", hit != T.Cast(cdt, 0))
                big[0] = T.max(big[0], hit)
                sat[0] = sat[0] + T.Cast("int32", hit > T.Cast(cdt, lim))
                store_count(cv, start + i, T.Cast(out_dtype, T.min(hit, T.Cast(cdt, lim))),
                            xv[x0 + j * L + i])
            bstats[t * 3] = nnz[0]
            bstats[t * 3 + 1] = T.Cast("int32", T.min(T.Cast("int64", big[0]),
                                                      T.int64(_INT32_MAX)))
            bstats[t * 3 + 2] = sat[0]

    @T.macro
    def sample_stats(total, bstats, scale, stats, b):
        # stage 4, sample b: scale f / N and the stats over its blocks
        scale[b] = T.Cast("float32", total[b] / T.float64(Nf))
        stats[b, 0] = 0
        stats[b, 1] = 0
        stats[b, 2] = 0
        for j in T.serial(nb):
            stats[b, 0] = stats[b, 0] + bstats[(b * nb + j) * 3]
            stats[b, 1] = T.max(stats[b, 1], bstats[(b * nb + j) * 3 + 1])
            stats[b, 2] = stats[b, 2] + bstats[(b * nb + j) * 3 + 2]

    fused = pool is not None
    if fused:
        C, (OH, OW), (H, W), (SH, SW) = (pool.channels, pool.output_hw,
                                         (pool.height, pool.width), pool.stride)

        pairs = pool.size == (2, 2) and pool.stride == (2, 2) and W % 2 == 0
        row_loop = T.serial if cuda else T.vectorized  # an output row in SIMD lanes on CPUs

        def pair_max(xw, b, c, oh, ow, row):
            # the max of pair ow of input row 2 * oh + row, read as one 64-bit word
            u = xw[b * (n_in // 2) + c * (H * W // 2) + (2 * oh + row) * (W // 2) + ow]
            lo = tirx.reinterpret("float32", tirx.Cast("uint32", u))
            hi = tirx.reinterpret("float32", tirx.Cast("uint32", u >> tirx.const(32, "uint64")))
            return tirx.max(lo, hi)

        def pooled(xv, xw, b, c, oh, ow):
            # the max over output (c, oh, ow)'s window of sample b
            if pairs:  # 2x2 windows, stride 2: each row read as 64-bit pairs, max(lo, hi)
                return tirx.max(pair_max(xw, b, c, oh, ow, 0), pair_max(xw, b, c, oh, ow, 1))
            return pool.window_max(xv, b * n_in + c * (H * W) + oh * (SH * W) + ow * SW)

        @T.macro
        def pool_planes(xv, pv, p0, b, c0, planes):
            # the pooled values of channels c0 .. c0 + planes - 1 of sample b, at pv[p0:] in
            # the sampled order, where the stages read them
            xw = T.decl_buffer((B * n_in // 2,), "uint64", data=xv.data)  # xv as 64-bit pairs
            for c in T.serial(planes):
                for oh in T.serial(OH):
                    for ow in row_loop(OW):
                        pv[p0 + ((c0 + c) * OH + oh) * OW + ow] = pooled(xv, xw, b, c0 + c, oh,
                                                                         ow)

    if cuda:
        tpb = max(1, min(int(threads_per_block), tasks))
        task_blocks = (tasks + tpb - 1) // tpb
        spb = max(1, min(int(threads_per_block), B))
        sample_blocks = (B + spb - 1) // spb

        @T.macro
        def sample_stages(src, cv, base, total, bstats, seed, scale, stats):
            # one thread per scan block, then per sample; each loop nest is one CUDA kernel
            cs = T.alloc_buffer((B * n,), "float64")
            for bx in T.thread_binding(task_blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(tpb, thread="threadIdx.x"):
                    if bx * tpb + tx < tasks:
                        block_cumsum(src, ((bx * tpb + tx) // nb) * n, cs,
                                     ((bx * tpb + tx) // nb) * n, (bx * tpb + tx) % nb)
            for bx in T.thread_binding(sample_blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(spb, thread="threadIdx.x"):
                    if bx * spb + tx < B:
                        sample_bases(cs, (bx * spb + tx) * n, base, total, bx * spb + tx)
            for bx in T.thread_binding(task_blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(tpb, thread="threadIdx.x"):
                    if bx * tpb + tx < tasks:
                        xi: T.float64 = xi_expr(seed[0])
                        block_counts(src, ((bx * tpb + tx) // nb) * n, cv, cs,
                                     ((bx * tpb + tx) // nb) * n, base, total, bstats, xi,
                                     (bx * tpb + tx) // nb, (bx * tpb + tx) % nb)
            for bx in T.thread_binding(sample_blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(spb, thread="threadIdx.x"):
                    if bx * spb + tx < B:
                        sample_stats(total, bstats, scale, stats, bx * spb + tx)

        @T.macro
        def stages(xv, cv, base, total, bstats, seed, scale, stats):
            if fused:  # one thread per channel plane pools it first
                pv = T.alloc_buffer((B * n,), "float32")
                for bx in T.thread_binding((B * C + tpb - 1) // tpb, thread="blockIdx.x"):
                    for tx in T.thread_binding(tpb, thread="threadIdx.x"):
                        if bx * tpb + tx < B * C:
                            pool_planes(xv, pv, ((bx * tpb + tx) // C) * n,
                                        (bx * tpb + tx) // C, (bx * tpb + tx) % C, 1)
                sample_stages(pv, cv, base, total, bstats, seed, scale, stats)
            else:
                sample_stages(xv, cv, base, total, bstats, seed, scale, stats)

    elif B > 1 or n <= SERIAL_MAX:
        samples = T.parallel if B > 1 else T.serial

        @T.macro
        def sample_task(src, x0, cv, base, total, bstats, xi, scale, stats, b):
            # all four stages of sample b, its values at src[x0:]
            cs = T.alloc_buffer((n,), "float64")
            sample_cumsums(src, x0, cs)
            sample_bases(cs, 0, base, total, b)
            for j in T.serial(nb):
                block_counts(src, x0, cv, cs, 0, base, total, bstats, xi, b, j)
            sample_stats(total, bstats, scale, stats, b)

        @T.macro
        def stages(xv, cv, base, total, bstats, seed, scale, stats):
            # a batch: one task per sample, all stages while its values are in cache (a fused
            # pool writes them to a buffer of the task's own first)
            xi: T.float64 = xi_expr(seed[0])
            for b in samples(B):
                if fused:
                    pv = T.alloc_buffer((n,), "float32")
                    pool_planes(xv, pv, 0, b, 0, C)
                    sample_task(pv, 0, cv, base, total, bstats, xi, scale, stats, b)
                else:
                    sample_task(xv, b * n, cv, base, total, bstats, xi, scale, stats, b)

    else:

        @T.macro
        def sample_stages(src, cv, base, total, bstats, xi, scale, stats):
            # one sample: its scan blocks in parallel
            cs = T.alloc_buffer((n,), "float64")
            for j in T.parallel(nb):
                block_cumsum(src, 0, cs, 0, j)
            sample_bases(cs, 0, base, total, 0)
            for j in T.parallel(nb):
                block_counts(src, 0, cv, cs, 0, base, total, bstats, xi, 0, j)
            sample_stats(total, bstats, scale, stats, 0)

        @T.macro
        def stages(xv, cv, base, total, bstats, seed, scale, stats):
            xi: T.float64 = xi_expr(seed[0])
            if fused:  # the channel planes pooled in parallel first
                pv = T.alloc_buffer((n,), "float32")
                for c in T.parallel(C):
                    pool_planes(xv, pv, 0, 0, c, 1)
                sample_stages(pv, cv, base, total, bstats, xi, scale, stats)
            else:
                sample_stages(xv, cv, base, total, bstats, xi, scale, stats)

    @T.prim_func
    def mcq_sample_activations(
        x: T.Buffer(x_shape, "float32"),
        seed: T.Buffer((1,), "int64"),
        counts: T.Buffer(shape, out_dtype),
        scale: T.Buffer((B,), "float32"),
        stats: T.Buffer((B, 3), "int32"),
    ):
        # hand-scheduled: dlight and MetaSchedule leave it alone
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xv = T.decl_buffer((B * n_in,), "float32", data=x.data)
        cv = T.decl_buffer((B * n,), out_dtype, data=counts.data)
        base = T.alloc_buffer((tasks,), "float64")
        total = T.alloc_buffer((B,), "float64")
        bstats = T.alloc_buffer((tasks * 3,), "int32")
        stages(xv, cv, base, total, bstats, seed, scale, stats)

    if name is None:  # private, as Relax's call_te makes them: the module names it
        return mcq_sample_activations.without_attr("global_symbol")
    return mcq_sample_activations.with_attr("global_symbol", name)


def _check_pool(pool, shape, n) -> int:
    """Values per sample the fused pool reads; the pool's output must be `shape`'s values."""
    oh, ow = pool.output_hw
    if min(oh, ow) < 1 or pool.channels * oh * ow != n:
        raise ValueError(f"{pool} pools {pool.channels}x{oh}x{ow} values per sample; the "
                         f"sampled shape {shape} has {n}")
    if shape[0] * pool.input_size >= 2**31:
        raise ValueError(f"the pool's input {shape[0]}x{pool.input_size} is beyond the "
                         "kernel's int32 indexing; sample it in smaller batches")
    return pool.input_size


def sampling_prim_func(shape: tuple, K: float, stream: int, out_dtype: str = "int8", *,
                       device: str = "cpu", threads_per_block: int = 64, name: str | None = None,
                       pool: MaxPool2d | None = None):
    """PrimFunc(x, seed, counts, scale, stats) for MCQ activation sampling of `shape`.

    device="cpu": parallel over the samples of a batch, or over the scan blocks of a single
    sample (build with an llvm target). device="cuda": one thread per scan block, then per
    sample, `threads_per_block` threads to a CUDA block (build with a cuda target).
    name=None (the default) gives a private PrimFunc, the form Relax expects for
    `bb.add_func(func, "mcq_sample_3")` + R.call_tir (AttachGlobalSymbol later names it after
    its GlobalVar; two public kernels with one symbol would break BlockBuilder.finalize).
    To build the kernel on its own, give it a symbol: tvm.compile(sampling_prim_func(...,
    name="main")) exposes ex["main"] (a private PrimFunc does not build on its own).
    pool=MaxPool2d(...): x is the pool's input and `shape` (its output's values, maybe
    flattened) is what is sampled.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return _build(shape, K, stream, out_dtype, device, threads_per_block, name, pool)


def cuda_sampling_prim_func(shape: tuple, K: float, stream: int, out_dtype: str = "int8", *,
                            threads_per_block: int = 64, name: str | None = None,
                            pool: MaxPool2d | None = None):
    """The CUDA variant: sampling_prim_func(..., device="cuda")."""
    return _build(shape, K, stream, out_dtype, "cuda", threads_per_block, name, pool)
