"""Monte Carlo Quantization (MCQ): the plain-numpy reference.

Paper: "Instant Quantization of Neural Networks using Monte Carlo Methods",
sections 3-4 (shared/papers/mcq-instant-quantization-monte-carlo.txt).

For one layer with n values v:

    f       = sum |v|                         (layer-wise L1 norm)
    P       = cumsum(|v|) / f                 (float64, sequential; P[-1] forced to 1)
    N       = floor(K * n + 1/2)              (number of jittered samples)
    c_i     = ceil(N * P_i - xi) - ceil(N * P_{i-1} - xi),   P_{-1} = 0
    count_i = sign(v_i) * c_i                 (v_i ~ count_i * f / N)

The hits c_i are exactly the number of stratified samples x_j = (j + xi) / N,
j = 0..N-1, that fall in [P_{i-1}, P_i); they sum to N and E_xi[c_i] = N |v_i| / f.
With sort=True the CDF is built over |v| sorted ascending (stable), and the counts
are mapped back to the original positions.

The order the CDF visits the values in is free: every order keeps the exact total, the
count bound and unbiasedness. It sets which sums of counts are exact, though: the hits of
any run of consecutive values differ from N * (their share of f) by less than 1. With
order="sign" the CDF visits the slices along `axis` (a weight's output channels) in turn,
each slice's positive values before its negative ones (index order kept within each
group): the signed sum of every output channel's weights is then right within 2 f/N,
which in the natural (interleaved-sign) order it is not. By Abel summation, the error
of a dot product with a run of counts is bounded by the variation of the other operand
along the run, so fewer sign flips mean less error (on the built-in VGG-7 at K=1 the
accuracy lost to weight sampling falls from 1.2 to 0.4 points).

Exact float64 operation order (what a kernel must reproduce count-for-count):
cs = cumsum(float64(|v|)) strictly left to right; f = cs[-1]; P = cs / f; P[-1] = 1;
y = N * P; k = floor(y); c = k + (y - k > xi)   [= ceil(y - xi) in exact arithmetic];
hits = diff(c) with a leading c_{-1} = 0.
Why not fl(y - xi): for large y the subtraction rounds away xi's low bits, e.g.
N=2, xi=1-2**-53 gives fl(2 - xi) = 1, so the last sample would be lost (sum N-1).
y - floor(y) is exact (Sterbenz) and the comparison with xi is exact.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from .errors import MctvmError


__all__ = [
    "MCQError",
    "MCQResult",
    "sample_counts",
    "activation_counts",
    "int_dtype_for",
]

_MAX_N = 2**52  # N * P must stay exact-integer-safe in float64
ORDERS = ("natural", "sign")


class MCQError(MctvmError, ValueError):
    """Bad input to MCQ: names the problem and the way out."""


@dataclass(frozen=True)
class MCQResult:
    """Signed hit counts of one MCQ quantization.

    counts: int64, same shape as the input, signed by sign(value).
    N:      number of samples (int; int64 array of shape (C,) per channel/sample).
    scale:  f / N so that value ~ counts * scale (float; array per channel/sample).
    l1:     f = sum |value| (float; array per channel/sample).
    axis:   None for layer-wise results, else the axis `scale` runs along.
    """

    counts: np.ndarray
    N: int | np.ndarray
    scale: float | np.ndarray
    l1: float | np.ndarray
    axis: int | None = None

    def _bscale(self):
        if self.axis is None:
            return self.scale
        shape = [1] * self.counts.ndim
        shape[self.axis] = -1
        return np.reshape(self.scale, shape)

    def dequantize(self) -> np.ndarray:
        """counts * scale as float32 (the approximation of the input)."""
        return (self.counts * self._bscale()).astype(np.float32)

    @property
    def sparsity(self) -> float:
        """Share of zero counts."""
        n = self.counts.size
        return (n - np.count_nonzero(self.counts)) / n

    @property
    def bits(self) -> int:
        """ceil(log2(max|count| + 1)) + 1 sign bit; 1 for an all-zero tensor."""
        m = int(np.max(np.abs(self.counts))) if self.counts.size else 0
        return m.bit_length() + 1  # bit_length(m) == ceil(log2(m + 1)) for m >= 0


def int_dtype_for(counts) -> type:
    """Smallest of np.int8 / np.int16 / np.int32 that holds every count."""
    counts = np.asarray(counts)
    lo = int(counts.min()) if counts.size else 0
    hi = int(counts.max()) if counts.size else 0
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise MCQError(
        f"counts span [{lo}, {hi}], beyond int32; use a smaller K "
        "(counts grow like K * n * |v| / sum|v|)"
    )


# ---------------------------------------------------------------------------
# validation


def _as_float_array(values) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind in "biu":
        v = v.astype(np.float64)
    elif v.dtype.kind != "f":
        raise MCQError(
            f"values must be a real float array, got dtype {v.dtype}; "
            "pass np.asarray(values, dtype=np.float32)"
        )
    if v.size == 0:
        raise MCQError(
            f"values is empty (shape {v.shape}); MCQ needs at least one value per layer"
        )
    return v


def _check_K(K) -> float:
    try:
        k = float(K)
    except (TypeError, ValueError):
        k = float("nan")
    if isinstance(K, bool) or not math.isfinite(k) or k <= 0:
        raise MCQError(
            f"K must be a positive finite number, got {K!r}; "
            "use K > 0 (K=5 is the paper's ImageNet setting)"
        )
    return k


def _num_samples(K: float, n: int, what: str) -> int:
    N = math.floor(K * n + 0.5)
    if N < 1:
        raise MCQError(
            f"K={K} with {n} values per {what} gives N = floor(K*n + 1/2) = 0 samples; "
            f"use K >= {0.5 / n:.3g}"
        )
    if N > _MAX_N:
        raise MCQError(
            f"K={K} with {n} values per {what} gives N={N} samples, more than 2**52 "
            "(float64 would no longer be exact); use a smaller K"
        )
    return N


def _check_xi(xi, rows: int, what: str) -> np.ndarray:
    """xi as a float64 array of shape (rows,) (a scalar is shared by all rows)."""
    try:
        x = None if isinstance(xi, bool) else np.asarray(xi, dtype=np.float64)
    except (TypeError, ValueError):
        x = None
    if x is None or (x.ndim > 0 and x.shape != (rows,)):
        got = repr(xi) if x is None else f"shape {x.shape}"
        raise MCQError(
            f"xi must be one number in [0, 1) or an array of {rows} (one per {what}), "
            f"got {got}; draw it with rng.random()"
        )
    bad = ~((x >= 0.0) & (x < 1.0))  # also catches NaN
    if np.any(bad):
        raise MCQError(
            f"xi must lie in [0, 1), got {x[bad].flat[0]!r}; draw it with rng.random()"
        )
    return np.broadcast_to(x, (rows,))


def _nonfinite_error(v: np.ndarray) -> MCQError:
    nan = int(np.count_nonzero(np.isnan(v)))
    inf = int(np.count_nonzero(np.isinf(v)))
    if nan or inf:
        first = int(np.flatnonzero(~np.isfinite(v.ravel()))[0])
        return MCQError(
            f"values contain {nan} NaN and {inf} Inf (first at flat index {first}); "
            "MCQ needs finite values: fix the model's weights/inputs or np.nan_to_num them"
        )
    return MCQError(
        "sum |values| overflows float64; rescale the tensor (e.g. divide by its max |value|)"
    )


# ---------------------------------------------------------------------------
# core


_BLOCK = 1 << 15  # elements per cache-resident block (256 KiB of float64)


def _stable_order(v2: np.ndarray):
    """Stable ascending order of |v| in each row of the (R, m) array v2.

    Returns (perm, src): perm[r] lists row r's indices by |v| ascending, ties in index
    order; src is v2 gathered in that order (signed). For float32 the 64-bit key
    (bits(|v|) << 32 | index << 1 | signbit) is unique and orders exactly like the
    stable sort, so an ordinary (SIMD) sort serves, ~10x faster than
    argsort(kind="stable"); the bits of a non-negative float sort like the float.
    """
    R, m = v2.shape
    if v2.dtype == np.float16:
        v2 = v2.astype(np.float32)
    if v2.dtype == np.float32 and m < 2**31 and sys.byteorder == "little":
        bits = v2.view(np.uint32)
        key = np.empty((R, m), dtype=np.uint64)
        kw = key.view(np.uint32).reshape(R, m, 2)  # [..., 0] low word, [..., 1] high
        np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=kw[..., 1])
        np.right_shift(bits, np.uint32(31), out=kw[..., 0])
        kw[..., 0] |= np.arange(0, 2 * m, 2, dtype=np.uint32)
        key.sort(axis=1)
        perm = (kw[..., 0] >> np.uint32(1)).astype(np.intp)
        src = kw[..., 0] << np.uint32(31)  # the sign bit back on top of |v|
        src |= kw[..., 1]
        return perm, src.view(np.float32)
    perm = np.argsort(np.abs(v2), axis=1, kind="stable")
    return perm, np.take_along_axis(v2, perm, axis=1)


def _sorted(v2: np.ndarray):
    """Arrangement for sort=True: (|v| ascending per row, the scatter back)."""
    perm, src = _stable_order(v2)

    def restore(hits):
        out = np.empty_like(hits)
        if len(hits) == 1:
            out[0, perm[0]] = hits[0]
        else:
            np.put_along_axis(out, perm, hits, axis=1)
        return out
    return src, restore


def _sign_split(group: int):
    """Arrangement for order="sign": each run of `group` values of a row becomes two runs,
    its positive values (negatives zeroed) then its negative ones (the rest zeroed).

    A zero adds exactly nothing to the cumulative sum and gets no hit, so the hits are
    those of the values permuted into sign order, without a gather or a scatter: a
    value's hits are the sum of its two places' (one of them always 0)."""
    def arrange(v2: np.ndarray):
        R, m = v2.shape
        runs = v2.reshape(R, m // group, group)
        src = np.empty((R, m // group, 2, group), dtype=v2.dtype)
        np.maximum(runs, 0, out=src[:, :, 0])  # max/min keep NaN, and -0.0 adds nothing
        np.minimum(runs, 0, out=src[:, :, 1])

        def restore(hits):
            halves = hits.reshape(R, m // group, 2, group)
            out = np.empty((R, m // group, group), dtype=np.int64)
            np.add(halves[:, :, 0], halves[:, :, 1], out=out)
            return out.reshape(R, m)
        return src.reshape(R, 2 * m), restore
    return arrange


def _blocks(R: int, m: int):
    """(row slice, first column, end column) tiles of about _BLOCK elements, row-major."""
    if m >= _BLOCK:
        for r in range(R):
            for c0 in range(0, m, _BLOCK):
                yield slice(r, r + 1), c0, min(c0 + _BLOCK, m)
    else:
        g = max(1, _BLOCK // m)
        for r in range(0, R, g):
            yield slice(r, min(r + g, R)), 0, m


# values a scan block sums side by side, in SIMD lanes (8 float64 = one AVX-512 register)
SCAN_LANES = 8


def _lane_scan(local: np.ndarray) -> None:
    """In place, the running sum along the last axis (a multiple of SCAN_LANES long) in the
    order a SIMD scan computes it: each chunk of SCAN_LANES values is scanned in-register in
    three steps (lane l adds lane l - 1, then l - 2, then l - 4: v[l] + v[l - k] for l >= k,
    v[l] + 0 below), and the chunks' totals carry over serially (carry_0 = 0,
    carry_{k+1} = carry_k + chunk k's last lane; value = carry_k + scanned lane)."""
    v = local.reshape(*local.shape[:-1], -1, SCAN_LANES)
    for k in (1, 2, 4):
        v[..., k:] = v[..., k:] + v[..., :-k]  # the right side is evaluated before the store
    carry = np.zeros(v.shape[:-1])
    np.add.accumulate(v[..., :-1, -1], axis=-1, out=carry[..., 1:])  # serial, as it reads
    v += carry[..., None]


def _blocked_cumsum(src: np.ndarray, block: int) -> np.ndarray:
    """cumsum(|src|) per row as mctvm's parallel scan computes it: each block of `block`
    values sums from 0 (local, a SIMD scan: _lane_scan), block bases add up serially, and
    cs = base + local."""
    R, m = src.shape
    nb = -(-m // block)
    width = -(-block // SCAN_LANES) * SCAN_LANES
    flat = np.zeros((R, nb * block))  # padding zeros leave every sum unchanged
    np.abs(src, out=flat[:, :m])
    local = np.zeros((R, nb, width))
    local[:, :, :block] = flat.reshape(R, nb, block)
    _lane_scan(local)
    local = local[:, :, :block].copy()
    base = np.zeros((R, nb))
    np.cumsum(local[:, :-1, -1], axis=1, out=base[:, 1:])
    local += base[:, :, None]
    return local.reshape(R, nb * block)[:, :m].copy()


def _hits_rows(v2: np.ndarray, K: float, xi: np.ndarray, arrangement, what: str,
               scan_block: int | None = None):
    """Signed counts (R, m) int64, N (R,) and f (R,) for each row of v2 (R, m).

    arrangement: None (the CDF in v2's order) or a function v2 -> (src, restore), _sorted
    or _sign_split: the CDF runs over the rows of src, and restore maps src's hits back.

    Two passes over cache-sized tiles (the memory traffic of a few whole-array
    passes, not a dozen); the arithmetic is exactly the module docstring's, or with
    `scan_block` that of mctvm's run-time kernel: a blocked parallel scan (_blocked_cumsum)
    and y = cs * (N / f), a single division per row.
    """
    R, n = v2.shape
    N = _num_samples(K, n, what)
    src, restore = arrangement(v2) if arrangement else (v2, None)
    m = src.shape[1]
    tiles = list(_blocks(R, m))
    with np.errstate(over="ignore", invalid="ignore"):  # reported just below
        if scan_block:
            cs = _blocked_cumsum(src, scan_block)
            carry = cs[:, -1].copy()
        else:
            # pass 1: cs = cumsum(|v|) per row, strictly left to right (carry into each tile)
            cs = np.empty((R, m), dtype=np.float64)
            carry = np.zeros(R)
            for rs, c0, c1 in tiles:
                blk = cs[rs, c0:c1]
                np.abs(src[rs, c0:c1], out=blk)
                blk[:, 0] += carry[rs]
                np.cumsum(blk, axis=1, out=blk)
                carry[rs] = blk[:, -1]
    f = carry
    if not np.all(np.isfinite(f)):  # NaN/Inf anywhere poisons the row sum: O(1) check
        raise _nonfinite_error(v2)
    zero = f == 0.0
    fs = np.where(zero, 1.0, f)
    # pass 2: hits = diff(ceil(N * (cs / f) - xi)), signed (the ceil taken exactly, see
    # the module docstring); written over cs's memory, or (rearranged) into the smallest
    # integer type that holds |hit| <= N max|v| / f + 1, for a cheap way back
    hits = cs.view(np.int64)
    if restore is not None:
        bound = float(np.max(N * (np.max(np.abs(src), axis=1) / fs))) + 2.0
        small = np.int16 if bound < 2**15 else np.int32 if bound < 2**31 else np.int64
        if small is not np.int64:
            hits = np.empty((R, m), dtype=small)
    buf_t = np.empty(min(_BLOCK, R * m))  # every tile fits
    buf_d = np.empty_like(buf_t)
    buf_k = np.empty_like(buf_t)
    prev = np.zeros(R)  # ceil(N * P_{-1} - xi) = ceil(-xi) = 0
    for rs, c0, c1 in tiles:
        r = rs.stop - rs.start
        w = c1 - c0
        t = buf_t[: r * w].reshape(r, w)
        d = buf_d[: r * w].reshape(r, w)
        k = buf_k[: r * w].reshape(r, w)
        if scan_block:  # the run-time kernel's arithmetic: y = cs * (N / f), one division
            np.multiply(cs[rs, c0:c1], float(N) / fs[rs, None], out=t)
        else:
            np.divide(cs[rs, c0:c1], fs[rs, None], out=t)  # P = cs / f
            t *= float(N)  # y = N * P
        if c1 == m:
            t[:, -1] = float(N)  # P_last = 1 exactly
        np.floor(t, out=k)
        t -= k  # frac(y), exact
        np.greater(t, xi[rs, None], out=t)  # 1.0 where frac(y) > xi
        k += t  # k = ceil(y - xi), exactly
        np.subtract(k[:, :1], prev[rs, None], out=d[:, :1])
        np.subtract(k[:, 1:], k[:, :-1], out=d[:, 1:])
        prev[rs] = k[:, -1]
        np.copysign(d, src[rs, c0:c1], out=d)
        np.copyto(hits[rs, c0:c1], d, casting="unsafe")  # exact: small integers
    if zero.any():
        hits[zero] = 0
    if restore is not None:
        hits = restore(hits).astype(np.int64, copy=False)
    return hits, np.full(R, N, dtype=np.int64), f


def sample_counts(values, K, xi, *, sort=False, normalize="layer", axis=0,
                  order="natural") -> MCQResult:
    """MCQ hit counts of `values` (any shape) with K samples per value and offset xi.

    normalize="layer": one CDF over the whole tensor (the paper's choice).
    normalize="channel": one CDF per slice along `axis`, each with its own f and
    N = floor(K * n_c + 1/2); xi is shared, or an array with one xi per channel.
    order="natural": the CDF visits the values in the tensor's order; "sign": slice by
    slice along `axis`, positives before negatives (see the module docstring).
    sort=True: |v| sorted ascending instead (over the layer, or each channel).
    An all-zero tensor/channel gives zero counts and scale 0.
    """
    v = _as_float_array(values)
    K = _check_K(K)
    if normalize not in ("layer", "channel"):
        raise MCQError(
            f"normalize must be 'layer' or 'channel', got {normalize!r}; "
            "use 'layer' (the paper's layer-wise normalisation)"
        )
    if order not in ORDERS:
        raise MCQError(f"order must be one of {ORDERS}, got {order!r}")
    by_slice = normalize == "channel" or (order == "sign" and not sort and v.ndim > 0)
    if by_slice:
        if v.ndim == 0:
            raise MCQError("normalize='channel' needs an array with an axis; got a scalar")
        if not -v.ndim <= axis < v.ndim:
            raise MCQError(
                f"axis={axis} is out of range for values of shape {v.shape}; "
                f"use an axis in [{-v.ndim}, {v.ndim - 1}] (0 = output channels)"
            )
        axis = axis % v.ndim
    if normalize == "channel":
        return _per_row(v, axis, K, xi, _arrangement(sort, order, v.size // v.shape[axis]),
                        "channel")
    xi_r = _check_xi(xi, 1, "layer")
    moved = np.moveaxis(v, axis, 0) if by_slice else v
    slice_size = moved[0].size if by_slice else 1
    hits, N, f = _hits_rows(moved.reshape(1, -1), K, xi_r, _arrangement(sort, order, slice_size),
                            "layer")
    hits = hits.reshape(moved.shape)
    counts = np.ascontiguousarray(np.moveaxis(hits, 0, axis)) if by_slice else hits
    N0, f0 = int(N[0]), float(f[0])
    return MCQResult(counts, N0, f0 / N0, f0)


def _arrangement(sort: bool, order: str, group: int):
    """The _hits_rows arrangement for these options (None: the values as they are)."""
    if sort:
        return _sorted
    return _sign_split(group) if order == "sign" and group > 1 else None


def _per_row(v, axis, K, xi, arrangement, what, scan_block=None) -> MCQResult:
    moved = np.moveaxis(v, axis, 0)
    C = moved.shape[0]
    if moved.size // max(C, 1) == 0:
        raise MCQError(f"values of shape {v.shape} have no elements per {what}")
    xi_r = _check_xi(xi, C, what)
    hits, N, f = _hits_rows(moved.reshape(C, -1), K, xi_r, arrangement, what, scan_block)
    counts = np.ascontiguousarray(np.moveaxis(hits.reshape(moved.shape), 0, axis))
    return MCQResult(counts, N, f / N, f, axis)


def activation_counts(x, K, xi, *, per_sample=True, scan_block=None) -> MCQResult:
    """MCQ of an activation batch x (batch first), as done online at inference.

    per_sample=True: each sample x[b] quantized on its own (own f, own
    N = floor(K * x[b].size + 1/2)); xi is one number shared by the batch or an
    array of length batch. per_sample=False: one CDF over the whole batch.
    Returns an MCQResult with int64 counts shaped like x and scale (and N, l1)
    of shape (batch,), so that x ~ counts * scale[:, None, ...].
    scan_block=L: the arithmetic of mctvm's run-time kernel (count for count the same): the
    cumulative sum in the order of a blocked parallel scan (blocks of L values, each summed
    SCAN_LANES values at a time in SIMD registers: _lane_scan), and
    N * P_i as cs_i * (N / f); it differs from the serial reference only in float64
    rounding, so counts move by at most 1, rarely.
    """
    v = _as_float_array(x)
    K = _check_K(K)
    if v.ndim == 0:
        raise MCQError("x must have a batch axis first; got a scalar (use x[None])")
    if scan_block is not None and (isinstance(scan_block, bool) or int(scan_block) < 1):
        raise MCQError(f"scan_block must be a positive block length, got {scan_block!r}")
    if per_sample:
        return _per_row(v, 0, K, xi, None, "sample", scan_block)
    if scan_block is not None:
        raise MCQError("scan_block applies per sample; use it with per_sample=True")
    r = sample_counts(v, K, xi)
    B = v.shape[0]
    return MCQResult(
        r.counts,
        np.full(B, r.N, dtype=np.int64),
        np.full(B, r.scale),
        np.full(B, r.l1),
        0,
    )
