"""Sparse integer GEMM and conv2d kernels (CPU and CUDA) for constant MCQ count weights.

The weight is a compile-time constant, so its sparse format is built in numpy and passed to
the kernel as constant arrays; activations are int8/int16 (any integer type works), products
and sums are int32. Integer addition mod 2**32 is associative, so every kernel here gives the
same bits as the dense int32 GEMM/conv, whatever the order of its sums.

Formats, both by output channel (the weight's rows as `w_rows[out, reduction]`):

- CSR: `indptr[O + 1]`, `indices[nnz]` (reduction index), `data[nnz]`;
- BSR: blocks of `block` consecutive output channels x 1 reduction index: `indptr[O/block +
  1]`, `indices[nnzb]`, `data[nnzb, block]`; a block is stored when any of its values is
  nonzero. The block's values fill SIMD lanes (matmul: one register of int32) or share
  each loaded activation vector (conv: `block` output channels at once).

`data` takes the narrowest of int8/int16/int32 that holds the values. For conv2d the indices
are offsets into the zero-padded input of one sample, flattened: c*Hp*Wp + kh*dh*Wp + kw*dw.

CPU kernels (parallel outer loop, vectorised inner loop, int32 accumulators in registers):

- matmul CSR: the activations transposed to aT[k, m]; per output column, per tile of rows m,
  acc[m] += data[j] * aT[indices[j], m] over the column's nonzeros (vector lanes along m);
- matmul BSR: per block of output columns and tile of rows, acc[m, lanes] += a[m, k] *
  data[j, lanes] (lanes along n);
- conv2d: the input is zero-padded once per call; output positions q = oh*Wq + ow (Wq = Wp
  for stride 1, so a nonzero's window is one contiguous vector run) in tiles; per output
  channel (CSR) or block of channels (BSR), acc[q] += value * xp[offset + q].

CUDA kernels: one thread per output element, looping over its channel's nonzeros.
Grouped convs are not handled here (they stay dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SparseWeight", "csr_rows", "bsr_rows", "matmul_kernel", "conv2d_kernel",
           "sparse_matmul", "sparse_conv2d", "FORMATS", "DEVICES", "CONV_BLOCK"]

FORMATS = ("csr", "bsr")
DEVICES = ("cpu", "cuda")
_CUDA_THREADS = 128
_MATMUL_ROW_TILE = 8  # rows of a BSR matmul tile (one accumulator register each)
CONV_BLOCK = 4  # output channels of a BSR conv block


@dataclass
class SparseWeight:
    """A weight's rows (one per output channel) in CSR or BSR form."""

    fmt: str  # "csr" or "bsr"
    outputs: int  # O, the number of output channels
    block: int  # output channels per block (1 for CSR)
    indptr: np.ndarray  # int32[O/block + 1]
    indices: np.ndarray  # int32[nnz]: reduction index, or input offset for conv
    data: np.ndarray  # [nnz] (CSR) or [nnz, block] (BSR)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def arrays(self) -> list:
        """The kernel's constant inputs, in parameter order; never empty (length >= 1)."""
        return [self.indptr, _at_least_one(self.indices), _at_least_one(self.data)]


def _at_least_one(array):
    if array.shape[0]:
        return array
    return np.zeros((1,) + array.shape[1:], array.dtype)


def _narrow(values: np.ndarray) -> np.ndarray:
    for dtype in ("int8", "int16", "int32"):
        info = np.iinfo(dtype)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(dtype)
    raise ValueError(f"weight values beyond int32: {values.min()}..{values.max()}")


def csr_rows(w_rows: np.ndarray) -> SparseWeight:
    """CSR of an integer matrix [outputs, reduction]: per output, its nonzeros."""
    w_rows = np.asarray(w_rows)
    out_idx, red_idx = np.nonzero(w_rows)
    indptr = np.zeros(w_rows.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(out_idx, minlength=w_rows.shape[0]), out=indptr[1:])
    return SparseWeight("csr", w_rows.shape[0], 1, indptr, red_idx.astype(np.int32),
                        _narrow(w_rows[out_idx, red_idx]))


def bsr_rows(w_rows: np.ndarray, block: int) -> SparseWeight:
    """BSR of [outputs, reduction] with blocks of `block` outputs x 1 (outputs padded)."""
    w_rows = np.asarray(w_rows)
    outputs, reduction = w_rows.shape
    nblocks = -(-outputs // block)
    padded = np.zeros((nblocks * block, reduction), w_rows.dtype)
    padded[:outputs] = w_rows
    blocks = padded.reshape(nblocks, block, reduction).transpose(0, 2, 1)  # [nb, red, block]
    nb_idx, red_idx = np.nonzero(np.any(blocks != 0, axis=2))
    indptr = np.zeros(nblocks + 1, np.int32)
    np.cumsum(np.bincount(nb_idx, minlength=nblocks), out=indptr[1:])
    return SparseWeight("bsr", outputs, block, indptr, red_idx.astype(np.int32),
                        _narrow(blocks[nb_idx, red_idx].reshape(-1, block)))


def _make(w_rows, fmt, block):
    if fmt == "csr":
        return csr_rows(w_rows)
    if fmt == "bsr":
        return bsr_rows(w_rows, block)
    raise ValueError(f"sparse format must be one of {FORMATS}, got {fmt!r}")


def _check_device(device):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


# ---------------------------------------------------------------------------------------------
# matmul: out[m, n] = sum_k a[m, k] * W[k, n]


def sparse_matmul(a_shape, a_dtype, weight: np.ndarray, fmt: str, *, device="cpu", lanes=16,
                  name=None):
    """(PrimFunc(a, indptr, indices, data, out), [indptr, indices, data]) for a @ weight,
    weight int [K, N] constant, a [M, K]. `lanes`: int32 SIMD lanes (CPU; BSR block)."""
    _check_device(device)
    weight = np.asarray(weight)
    if weight.ndim != 2 or len(a_shape) != 2 or a_shape[1] != weight.shape[0]:
        raise ValueError(f"matmul needs a [M, K] and weight [K, N], got {a_shape} and "
                         f"{weight.shape}")
    block = 1 if fmt == "csr" else (lanes if device == "cpu" else 4)
    sparse = _make(weight.T, fmt, block)
    func = matmul_kernel(tuple(int(d) for d in a_shape), str(a_dtype), weight.shape[0], sparse,
                         device=device, lanes=lanes, name=name)
    return func, sparse.arrays


def matmul_kernel(a_shape, a_dtype, K, sparse: SparseWeight, *, device="cpu", lanes=16,
                  name=None):
    """The PrimFunc(a, indptr, indices, data, out int32[M, N]) for `sparse` (weight^T rows)."""
    _check_device(device)
    M, N = a_shape[0], sparse.outputs
    args = (M, K, N, a_dtype, sparse, lanes)
    if device == "cuda":
        func = _matmul_cuda(*args)
    elif sparse.fmt == "csr":
        func = _matmul_csr_cpu(*args)
    else:
        func = _matmul_bsr_cpu(*args)
    return _named(func, name)


def _named(func, name):
    if name is None:  # private, as Relax's call_te makes them: the module names it
        return func.without_attr("global_symbol")
    return func.with_attr("global_symbol", name)


def _i32(value):
    from tvm.script import tirx as T

    return T.Cast("int32", value)


def _matmul_csr_cpu(M, K, N, a_dtype, sparse, lanes):
    from tvm.script import tirx as T

    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    mt = min(M, 4 * lanes)  # rows per tile: up to four accumulator registers
    tiles = -(-M // mt)
    mp = tiles * mt

    @T.prim_func
    def kernel(a: T.Buffer((M, K), a_dtype), indptr: T.Buffer((N + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer((nnz,), ddt),
               out: T.Buffer((M, N), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        a_t = T.alloc_buffer((K, mp), a_dtype)  # rows m in lanes; padding rows are zero
        for k in T.parallel(K):
            for m in T.serial(mp):
                a_t[k, m] = T.if_then_else(m < M, a[T.min(m, M - 1), k], T.Cast(a_dtype, 0))
        for n in T.parallel(N):
            for t in T.serial(tiles):
                acc = T.alloc_buffer((mt,), "int32", scope="local")
                for i in T.vectorized(mt):
                    acc[i] = 0
                for j in T.serial(indptr[n], indptr[n + 1]):
                    for i in T.vectorized(mt):
                        acc[i] = acc[i] + _i32(data[j]) * _i32(a_t[indices[j], t * mt + i])
                for i in T.serial(mt):
                    if t * mt + i < M:
                        out[t * mt + i, n] = acc[i]

    return kernel


def _matmul_bsr_cpu(M, K, N, a_dtype, sparse, lanes):
    from tvm.script import tirx as T

    bn = sparse.block
    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    nblocks = sparse.indptr.shape[0] - 1
    mt = min(M, _MATMUL_ROW_TILE)
    tiles = -(-M // mt)
    full = N // bn  # blocks without padding columns

    @T.prim_func
    def kernel(a: T.Buffer((M, K), a_dtype), indptr: T.Buffer((nblocks + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer((nnz, bn), ddt),
               out: T.Buffer((M, N), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for task in T.parallel(nblocks * tiles):
            b = task // tiles
            t = task % tiles
            acc = T.alloc_buffer((mt, bn), "int32", scope="local")
            for i in T.unroll(mt):
                for v in T.vectorized(bn):
                    acc[i, v] = 0
            for j in T.serial(indptr[b], indptr[b + 1]):
                for i in T.unroll(mt):
                    for v in T.vectorized(bn):
                        # rows past M (a partial tile) read row M-1; never stored
                        acc[i, v] = acc[i, v] + _i32(a[T.min(t * mt + i, M - 1), indices[j]]) \
                            * _i32(data[j, v])
            for i in T.serial(mt):
                if t * mt + i < M:
                    if b < full:
                        for v in T.vectorized(bn):
                            out[t * mt + i, b * bn + v] = acc[i, v]
                    else:
                        for v in T.serial(N - full * bn):
                            out[t * mt + i, b * bn + v] = acc[i, v]

    return kernel


def _matmul_cuda(M, K, N, a_dtype, sparse, _lanes):
    from tvm.script import tirx as T

    bn = sparse.block
    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    nblocks = sparse.indptr.shape[0] - 1
    threads = _CUDA_THREADS
    grid = -(-(M * N) // threads)
    data_shape = (nnz,) if sparse.fmt == "csr" else (nnz, bn)

    def value(data, j, n):
        return data[j] if sparse.fmt == "csr" else data[j, n % bn]

    @T.prim_func
    def kernel(a: T.Buffer((M, K), a_dtype), indptr: T.Buffer((nblocks + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer(data_shape, ddt),
               out: T.Buffer((M, N), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                if bx * threads + tx < M * N:
                    acc = T.alloc_buffer((1,), "int32", scope="local")
                    acc[0] = 0
                    # threads of a warp take neighbouring n: one row of a, coalesced stores
                    for j in T.serial(indptr[(bx * threads + tx) % N // bn],
                                      indptr[(bx * threads + tx) % N // bn + 1]):
                        acc[0] = acc[0] + _i32(value(data, j, (bx * threads + tx) % N)) * _i32(
                            a[(bx * threads + tx) // N, indices[j]])
                    out[(bx * threads + tx) // N, (bx * threads + tx) % N] = acc[0]

    return kernel


# ---------------------------------------------------------------------------------------------
# conv2d, NCHW x OIHW, groups = 1


@dataclass(frozen=True)
class _ConvGeometry:
    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple  # (kh, kw)
    strides: tuple
    padding: tuple  # (top, left, bottom, right)
    dilation: tuple

    @property
    def padded(self) -> tuple:
        top, left, bottom, right = self.padding
        return self.height + top + bottom, self.width + left + right

    @property
    def out_size(self) -> tuple:
        hp, wp = self.padded
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        return (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1

    @property
    def flat(self) -> bool:
        """Stride 1: output row pitch Wp, so a window is one contiguous run of the input."""
        return self.strides == (1, 1)

    @property
    def row_pitch(self) -> int:  # Wq: q = oh * Wq + ow
        return self.padded[1] if self.flat else self.out_size[1]

    @property
    def positions(self) -> int:  # L: q in [0, L)
        oh, ow = self.out_size
        return (oh - 1) * self.row_pitch + ow

    def offsets(self) -> np.ndarray:
        """Input offset of each reduction index (c, kh, kw), in OIHW's order."""
        hp, wp = self.padded
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        c, i, j = np.meshgrid(np.arange(self.channels), np.arange(kh), np.arange(kw),
                              indexing="ij")
        return (c * hp * wp + i * dh * wp + j * dw).reshape(-1).astype(np.int32)

    def sample_size(self, tile: int) -> int:
        """Elements of one padded sample, with the zero tail the last tile may read."""
        hp, wp = self.padded
        tiles = -(-self.positions // tile)
        oh, ow = self.out_size
        (sh, sw) = self.strides
        last = tiles * tile - 1  # the furthest position a tile computes
        if self.flat:
            reach = last
        else:
            reach = (last // self.row_pitch) * sh * wp + (ow - 1) * sw
        return max(hp * wp * self.channels, int(self.offsets()[-1]) + reach + 1)


def sparse_conv2d(x_shape, x_dtype, weight: np.ndarray, fmt: str, *, strides=(1, 1),
                  padding=(0, 0, 0, 0), dilation=(1, 1), device="cpu", lanes=16, name=None):
    """(PrimFunc(x, indptr, indices, data, out), [indptr, indices, data]) for an NCHW conv2d
    of x [B, C, H, W] with the constant OIHW int weight (groups = 1); out int32 NCHW.
    padding is (top, left, bottom, right) as Relax's conv2d attrs give it."""
    _check_device(device)
    weight = np.asarray(weight)
    if weight.ndim != 4 or len(x_shape) != 4 or weight.shape[1] != x_shape[1]:
        raise ValueError(f"conv2d needs x [B, C, H, W] and weight [O, C, KH, KW] (groups = 1), "
                         f"got {x_shape} and {weight.shape}")
    geo = _ConvGeometry(*(int(d) for d in x_shape), int(weight.shape[0]),
                        tuple(int(d) for d in weight.shape[2:]), _pair(strides),
                        _four(padding), _pair(dilation))
    if min(geo.out_size) < 1:
        raise ValueError(f"conv2d output would be empty: {geo}")
    block = 1 if fmt == "csr" else CONV_BLOCK
    sparse = _make(weight.reshape(weight.shape[0], -1), fmt, block)
    sparse.indices = geo.offsets()[sparse.indices]
    func = conv2d_kernel(geo, str(x_dtype), sparse, device=device, lanes=lanes, name=name)
    return func, sparse.arrays


def _pair(value) -> tuple:
    value = [int(v) for v in (value if hasattr(value, "__len__") else [value])]
    return tuple(value * 2 if len(value) == 1 else value)


def _four(value) -> tuple:
    value = [int(v) for v in (value if hasattr(value, "__len__") else [value])]
    if len(value) == 1:
        value *= 4
    elif len(value) == 2:
        value *= 2
    return tuple(value)


def conv2d_kernel(geo: _ConvGeometry, x_dtype, sparse: SparseWeight, *, device="cpu", lanes=16,
                  name=None):
    """The PrimFunc(x, indptr, indices, data, out int32[B, O, OH, OW]) for `sparse` whose
    indices are padded-input offsets (see `sparse_conv2d`)."""
    _check_device(device)
    if device == "cuda":
        return _named(_conv_cuda(geo, x_dtype, sparse), name)
    return _named(_conv_cpu(geo, x_dtype, sparse, lanes), name)


def _conv_cpu(geo, x_dtype, sparse, lanes):
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    sh, sw = geo.strides
    wq, L = geo.row_pitch, geo.positions
    bo = sparse.block
    nblocks = sparse.indptr.shape[0] - 1
    qt = 2 * lanes if bo > 1 else 4 * lanes  # positions per tile: 8 or 4 accumulator registers
    qt = min(qt, -(-L // lanes) * lanes)
    tiles = -(-L // qt)
    S = geo.sample_size(qt)
    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    data_shape = (nnz,) if bo == 1 else (nnz, bo)

    def read(xp, base, q):  # the input under output position q, from a window's offset
        if geo.flat:
            return xp[base + q]
        return xp[base + (q // wq) * sh * wp + (q % wq) * sw]

    def value(data, j, o):
        return data[j] if bo == 1 else data[j, o]

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((nblocks + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer(data_shape, ddt),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xp = T.alloc_buffer((B * S,), x_dtype)
        for task in T.parallel(B * C):
            for h in T.serial(hp):
                for w in T.serial(wp):
                    xp[(task // C) * S + (task % C) * hp * wp + h * wp + w] = T.if_then_else(
                        top <= h and h < top + H and left <= w and w < left + W,
                        x[task // C, task % C, T.max(T.min(h - top, H - 1), 0),
                          T.max(T.min(w - left, W - 1), 0)],
                        T.Cast(x_dtype, 0))
        for b in T.parallel(B):
            for i in T.serial(S - C * hp * wp):
                xp[b * S + C * hp * wp + i] = T.Cast(x_dtype, 0)
        for task in T.parallel(B * nblocks):
            for t in T.serial(tiles):
                acc = T.alloc_buffer((bo, qt), "int32", scope="local")
                for o in T.unroll(bo):
                    for i in T.vectorized(qt):
                        acc[o, i] = 0
                for j in T.serial(indptr[task % nblocks], indptr[task % nblocks + 1]):
                    for o in T.unroll(bo):
                        for i in T.vectorized(qt):
                            acc[o, i] = acc[o, i] + _i32(value(data, j, o)) * _i32(
                                read(xp, (task // nblocks) * S + indices[j], t * qt + i))
                for o in T.serial(bo):
                    for i in T.serial(qt):
                        if ((task % nblocks) * bo + o < O and t * qt + i < L
                                and (t * qt + i) % wq < OW):
                            out[task // nblocks, (task % nblocks) * bo + o, (t * qt + i) // wq,
                                (t * qt + i) % wq] = acc[o, i]

    return kernel


def _conv_cuda(geo, x_dtype, sparse):
    from tvm import tirx
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    sh, sw = geo.strides
    bo = sparse.block
    nblocks = sparse.indptr.shape[0] - 1
    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    data_shape = (nnz,) if bo == 1 else (nnz, bo)
    threads = _CUDA_THREADS
    total = B * O * OH * OW
    grid = -(-total // threads)

    def value(data, j, o):
        return data[j] if bo == 1 else data[j, o % bo]

    def tap(x, b, offset, oh, ow):  # the input under (oh, ow) for a padded-input offset
        c = offset // (hp * wp)
        h = offset % (hp * wp) // wp + oh * sh - top
        w = offset % wp + ow * sw - left
        return T.if_then_else(tirx.all(0 <= h, h < H, 0 <= w, w < W),
                              x[b, c, T.max(T.min(h, H - 1), 0), T.max(T.min(w, W - 1), 0)],
                              T.Cast(x_dtype, 0))

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((nblocks + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer(data_shape, ddt),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                if bx * threads + tx < total:
                    acc = T.alloc_buffer((1,), "int32", scope="local")
                    acc[0] = 0
                    # threads of a warp take neighbouring output positions of one channel
                    for j in T.serial(indptr[(bx * threads + tx) // (OH * OW) % O // bo],
                                      indptr[(bx * threads + tx) // (OH * OW) % O // bo + 1]):
                        acc[0] = acc[0] + _i32(value(data, j, (bx * threads + tx) // (OH * OW)
                                                     % O)) * _i32(
                            tap(x, (bx * threads + tx) // (O * OH * OW), indices[j],
                                (bx * threads + tx) // OW % OH, (bx * threads + tx) % OW))
                    out[(bx * threads + tx) // (O * OH * OW), (bx * threads + tx) // (OH * OW) % O,
                        (bx * threads + tx) // OW % OH, (bx * threads + tx) % OW] = acc[0]

    return kernel
