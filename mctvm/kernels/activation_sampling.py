"""Run-time MCQ activation sampling as a TIR kernel (CPU and CUDA).

Per sample of a batch x (batch first, float32) the kernel computes what
`mctvm.mcq.activation_counts(x, K, xi)` computes, count for count:

    n = elements per sample,  N = floor(K * n + 1/2)    (fixed at build time: shapes are static)
    f = sum |x_i|                                        float64, strictly left to right
    cs_i = cs_{i-1} + |x_i|;  P_i = cs_i / f;  P_{n-1} = 1
    y = N * P_i;  k = floor(y);  c_i = k + (y - k > xi)  (= ceil(y - xi), exactly)
    count_i = sign(x_i) * (c_i - c_{i-1}),  c_{-1} = 0
    scale = f / N (float64, stored as float32); all counts 0 and scale 0 where f == 0

with one xi per call shared by the whole batch, drawn in the kernel from the run-time seed:
xi = uniform01(seed, stream, counter=0) (Philox4x32-10, see `random.py`); `xi_for(seed,
stream)` gives the same number in numpy. Counts beyond the output type are saturated to
its symmetric range ([-127, 127] for int8, [-32767, 32767] for int16), never wrapped, and
counted in `stats`.

Floating-point order. f is a serial float64 sum, so it equals numpy's cumsum's last element
(LLVM never reassociates floating-point adds without fast-math flags, which TVM's default
llvm target does not set; the loops are serial, never vectorised). The one product that
feeds an addition is y = N * P, used by both floor(y) and y - k; a fused multiply-add
(TVM's LLVM target allows FP-op fusion, `AllowFPOpFusion = Fast`) would compute N * P - k
unrounded and could flip a comparison with xi. LLVM's x86 backend only fuses a product
with a single use (its FMA fusion is not "aggressive"), and y has two, so no FMA is formed
(observed on FMA-capable mcpus; tests/test_kernel_activation_sampling.py checks the
assembly). On CUDA, where nvcc fuses aggressively, the product is `__dmul_rn`, which is
never contracted. floor(y) is the int64 truncation of y (y >= 0 and y <= N < 2**52).

Parameters of the PrimFunc (destination-passing style, as R.call_tir expects):

    x      float32[shape]         the activations, batch first
    seed   int64[1]               the 64-bit seed (its bits; lo/hi words form the Philox key)
    counts out_dtype[shape]       signed hit counts
    scale  float32[batch]         f / N per sample (0 where f == 0)
    stats  int32[batch, 3]        [nonzero counts, max |count| before saturation
                                   (clipped to 2**31 - 1), saturated elements]

Non-finite inputs give unspecified counts (the numpy reference refuses them).
"""

from __future__ import annotations

import math

import numpy as np

from .random import seed_words, uniform01, uniform01_np

__all__ = ["sampling_prim_func", "cuda_sampling_prim_func", "xi_for", "num_samples",
           "COUNT_LIMITS"]

# symmetric saturation ranges
COUNT_LIMITS = {"int8": 127, "int16": 32767, "int32": 2**31 - 1}
_MAX_N = 2**52  # as in mctvm.mcq: N * P must stay exact-integer-safe in float64
_INT32_MAX = 2**31 - 1


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


def _build(shape, K, stream, out_dtype, device, threads_per_block, name):
    from tvm import tirx
    from tvm.script import tirx as T

    shape, K, stream, out_dtype, n, N = _check(shape, K, stream, out_dtype)
    B = shape[0]
    lim = COUNT_LIMITS[out_dtype]
    Nf = float(N)  # exact: N <= 2**52

    if device == "cuda":

        def times_n(p):  # never contracted into an FMA by nvcc
            return tirx.call_pure_extern("float64", "__dmul_rn", tirx.const(Nf, "float64"), p)

    else:

        def times_n(p):
            return tirx.const(Nf, "float64") * p

    def xi_expr(seed_value):
        return uniform01(*seed_words(seed_value), stream, 0)

    @T.macro
    def one_sample(xv, cv, scale, stats, xi, b):
        # pass 1: f = sum |x|, serial, float64
        f = T.alloc_buffer((1,), "float64", scope="local")
        f[0] = T.float64(0)
        for i in T.serial(n):
            f[0] = f[0] + T.Cast("float64", T.fabs(xv[b * n + i]))
        if f[0] == T.float64(0):
            for i in T.serial(n):
                cv[b * n + i] = T.Cast(out_dtype, 0)
            scale[b] = T.float32(0)
            stats[b, 0] = 0
            stats[b, 1] = 0
            stats[b, 2] = 0
        else:
            cs = T.alloc_buffer((1,), "float64", scope="local")
            prev = T.alloc_buffer((1,), "int64", scope="local")
            nnz = T.alloc_buffer((1,), "int32", scope="local")
            big = T.alloc_buffer((1,), "int64", scope="local")
            sat = T.alloc_buffer((1,), "int32", scope="local")
            cs[0] = T.float64(0)
            prev[0] = T.int64(0)
            nnz[0] = 0
            big[0] = T.int64(0)
            sat[0] = 0
            # pass 2: c_i = ceil(N * cs_i / f - xi) computed exactly; the last c is N (P = 1)
            for i in T.serial(n):
                v = xv[b * n + i]
                cs[0] = cs[0] + T.Cast("float64", T.fabs(v))
                y = times_n(cs[0] / f[0])
                k = T.Cast("int64", y)  # = floor(y): y >= 0
                c = T.if_then_else(
                    i == n - 1,
                    T.int64(N),
                    k + T.Cast("int64", y - T.Cast("float64", k) > xi),
                )
                hit = c - prev[0]
                prev[0] = c
                nnz[0] = nnz[0] + T.Cast("int32", hit != T.int64(0))
                big[0] = T.max(big[0], hit)
                sat[0] = sat[0] + T.Cast("int32", hit > T.int64(lim))
                q = T.Cast(out_dtype, T.min(hit, T.int64(lim)))
                cv[b * n + i] = T.if_then_else(v < T.float32(0), -q, q)
            scale[b] = T.Cast("float32", f[0] / T.float64(Nf))
            stats[b, 0] = nnz[0]
            stats[b, 1] = T.Cast("int32", T.min(big[0], T.int64(_INT32_MAX)))
            stats[b, 2] = sat[0]

    if device == "cuda":
        tpb = max(1, min(int(threads_per_block), B))
        blocks = (B + tpb - 1) // tpb

        @T.prim_func
        def mcq_sample_activations(
            x: T.Buffer(shape, "float32"),
            seed: T.Buffer((1,), "int64"),
            counts: T.Buffer(shape, out_dtype),
            scale: T.Buffer((B,), "float32"),
            stats: T.Buffer((B, 3), "int32"),
        ):
            # hand-scheduled: dlight and MetaSchedule leave it alone
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            xv = T.decl_buffer((B * n,), "float32", data=x.data)
            cv = T.decl_buffer((B * n,), out_dtype, data=counts.data)
            for bx in T.thread_binding(blocks, thread="blockIdx.x"):
                for tx in T.thread_binding(tpb, thread="threadIdx.x"):
                    if bx * tpb + tx < B:
                        xi: T.float64 = xi_expr(seed[0])
                        one_sample(xv, cv, scale, stats, xi, bx * tpb + tx)

    else:

        @T.prim_func
        def mcq_sample_activations(
            x: T.Buffer(shape, "float32"),
            seed: T.Buffer((1,), "int64"),
            counts: T.Buffer(shape, out_dtype),
            scale: T.Buffer((B,), "float32"),
            stats: T.Buffer((B, 3), "int32"),
        ):
            # hand-scheduled: dlight and MetaSchedule leave it alone
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            xv = T.decl_buffer((B * n,), "float32", data=x.data)
            cv = T.decl_buffer((B * n,), out_dtype, data=counts.data)
            xi: T.float64 = xi_expr(seed[0])
            for b in T.parallel(B):
                one_sample(xv, cv, scale, stats, xi, b)

    if name is None:  # private, as Relax's call_te makes them: the module names it
        return mcq_sample_activations.without_attr("global_symbol")
    return mcq_sample_activations.with_attr("global_symbol", name)


def sampling_prim_func(shape: tuple, K: float, stream: int, out_dtype: str = "int8", *,
                       device: str = "cpu", threads_per_block: int = 64, name: str | None = None):
    """PrimFunc(x, seed, counts, scale, stats) for MCQ activation sampling of `shape`.

    device="cpu": the batch loop is `T.parallel`, the element loops serial (build with an
    llvm target). device="cuda": one thread per sample (blockIdx.x * threads_per_block +
    threadIdx.x), a serial scan per thread (build with a cuda target).
    name=None (the default) gives a private PrimFunc, the form Relax expects for
    `bb.add_func(func, "mcq_sample_3")` + R.call_tir (AttachGlobalSymbol later names it after
    its GlobalVar; two public kernels with one symbol would break BlockBuilder.finalize).
    To build the kernel on its own, give it a symbol: tvm.compile(sampling_prim_func(...,
    name="main")) exposes ex["main"] (a private PrimFunc does not build on its own).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return _build(shape, K, stream, out_dtype, device, threads_per_block, name)


def cuda_sampling_prim_func(shape: tuple, K: float, stream: int, out_dtype: str = "int8", *,
                            threads_per_block: int = 64, name: str | None = None):
    """The CUDA variant: sampling_prim_func(..., device="cuda")."""
    return _build(shape, K, stream, out_dtype, "cuda", threads_per_block, name)
