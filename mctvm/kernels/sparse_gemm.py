"""Sparse integer GEMM and conv2d kernels (CPU and CUDA) for constant MCQ count weights.

The weight is a compile-time constant, so its sparse format is built in numpy and passed to
the kernel as constant arrays; activations are int8/int16 (any integer type works), products
and sums are int32. Integer addition mod 2**32 is associative, so every kernel here gives the
same bits as the dense int32 GEMM/conv, whatever the order of its sums.

Formats, by output channel (the weight's rows as `w_rows[out, reduction]`):

- CSR: `indptr[O + 1]`, `indices[nnz]` (reduction index), `data[nnz]`;
- BSR: blocks of `block` consecutive output channels x 1 reduction index: `indptr[O/block +
  1]`, `indices[nnzb]`, `data[nnzb, block]`; a block is stored when any value is nonzero.
- with `pairs` (x86 with AVX2/AVX-512: pmaddwd, vpdpwssd with VNNI, multiplies int16 pairs
  and adds them into int32 lanes): CSR takes a row's nonzeros two at a time (`paired_csr`:
  indices [npairs, 2], the two values packed in one int32), and BSR uses blocks of 1 output
  x 2 consecutive reduction indices (`pair_blocks`; conv: input channels 2c, 2c+1 at one
  (kh, kw)) with the activations packed in int16 pairs the same way.

`data` takes the narrowest of int8/int16/int32 that holds the values. For conv2d the indices
are offsets into the zero-padded input of one sample, flattened: c*Hp*Wp + kh*dh*Wp + kw*dw
(batch lanes: times `lanes`, and `indptr` has a row per output channel and chunk).

CPU kernels (parallel outer loop, vectorised inner loop, int32 accumulators in registers):

- matmul, more than one row: the activations transposed once per call by shuffle transposes
  to aT[tile][k][m] (pair-packed for pair blocks), rows m in the vector lanes; a task is a
  tile of rows and a block of output columns; per chunk of the reduction (its aT rows fit
  L1), per column, acc[m] += value * aT[k, m] over the column's nonzeros in that chunk, in 2-4
  independent accumulator sets (vpdpwssd's latency); the rows split by chunk and padded with
  zero entries to a multiple of the sets (_matmul_chunks). Each nonzero costs an activation
  load per vector, and this machine (Zen 5) issues two loads a cycle, so CSR pairs (fewer
  vpdpwssd, one shuffle each) beat pair blocks. Without pairs (no AVX2), per output column,
  per tile of rows, acc[m] += value * aT[k, m]. One row, BSR: per block of `lanes` output
  columns, acc[lanes] += a[k] * data[j, lanes]; one row, CSR: a scalar dot product per column;
- conv2d, pair blocks from one vector of samples on (batch lanes): the input transposed once
  per call (16 x 16 shuffle transposes) to int32 channel pairs xt[group][c2][hp][wp][sample],
  `lanes` samples per group. A nonzero's operand for an output position is then one aligned
  vector (no cache-line splits, no shuffles): one vpdpwssd per nonzero pair block, position and
  group. A task is a group and a register tile of output positions (1 x 7 or 1 x 14 here);
  over every output channel, and the reduction cut into chunks of channel pairs whose input
  window fits L1 (the weight's rows split by chunk); results transposed back by shuffles;
- conv2d, CSR pairs from one vector of samples on: the input transposed the same way to int16
  xt[group][c][hp][wp][sample], 2 x `lanes` samples per group; a nonzero pair's two windows
  are interleaved by unpack (one shuffle per vpdpwssd). Each vector load then feeds a pair
  of nonzeros rather than a pair block (at 70% zeros, 0.3 pairs against 0.51 blocks per two
  weights), which matters where loads bound the loop (two a cycle on Zen 5);
- conv2d, otherwise: the input zero-padded once per call; output positions q = oh*Wq + ow
  (Wq = Wp for stride 1, so a nonzero's window is one contiguous vector run) in tiles of up to
  16 vectors, with several samples per task when one sample's positions fill fewer; per output
  channel (or block), acc[q] += value * xp[offset + q] (CSR pairs: two windows interleaved by
  unpack, one vpdpwssd). Those windows start anywhere, so most loads split cache lines: on an
  AVX-512 Xeon a split zmm load + vpdpwssd ran at half the rate of an aligned one, which is what
  the batch-lanes layout avoids.

CUDA kernels: one thread per output element, looping over its channel's nonzeros.
Grouped convs are not handled here (they stay dense).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["SparseWeight", "csr_rows", "bsr_rows", "paired_csr", "pair_blocks",
           "matmul_kernel", "conv2d_kernel",
           "sparse_matmul", "sparse_conv2d", "FORMATS", "DEVICES", "CONV_BLOCK"]

FORMATS = ("csr", "bsr")
DEVICES = ("cpu", "cuda")
_CUDA_THREADS = 128
_MATMUL_ROW_TILE = 8  # rows of a BSR matmul tile (one accumulator register each)
CONV_BLOCK = 4  # output channels of a BSR conv block
_CONV_ACCUMULATORS = 16  # int32 vectors of a conv register tile (AVX-512; 8 on AVX2)
_WINDOW_BYTES = 48 << 10  # input a batch-lanes register tile reads per chunk: L1's size
_MATMUL_WINDOW = 40 << 10  # packed activations a rows-in-lanes matmul reads per chunk (of 48)
_MATMUL_TASKS = 8  # parallel tasks a rows-in-lanes matmul aims for (tiles x column blocks)


@dataclass
class SparseWeight:
    """A weight's rows (one per output channel) in CSR or BSR form."""

    fmt: str  # "csr" or "bsr"
    outputs: int  # O, the number of output channels
    block: int  # output channels per block (1 for CSR)
    indptr: np.ndarray  # int32[O/block + 1]
    indices: np.ndarray  # int32[nnz]: reduction index, or input offset for conv
    data: np.ndarray  # [nnz] (CSR) or [nnz, block] (BSR)
    paired: bool = False  # CSR in pairs: indices [npairs, 2], data int32 = two int16 values
    packed: bool = False  # BSR of 1 x 2 blocks (pair_blocks): data int32 = two int16 values

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


def paired_csr(sparse: SparseWeight, multiple: int = 1) -> SparseWeight:
    """The nonzeros of each row of a CSR weight in pairs, padded with zeros (index: the row's
    first) to a multiple of `multiple` pairs: indices [npairs, 2], data the two values as
    int16 halves of an int32 (low = first), the operand of one pmaddwd / vpdpwssd step."""
    counts = np.diff(sparse.indptr)
    pairs = -(-((counts + 1) // 2) // multiple) * multiple
    indptr = np.zeros_like(sparse.indptr)
    np.cumsum(pairs, out=indptr[1:])
    firsts = _at_least_one(sparse.indices)[np.minimum(sparse.indptr[:-1],
                                                      max(sparse.nnz - 1, 0))]
    indices = np.repeat(firsts, 2 * pairs).astype(np.int32)
    values = np.zeros((int(indptr[-1]) * 2,), np.int16)
    at = np.arange(sparse.nnz) + np.repeat(indptr[:-1] * 2 - sparse.indptr[:-1], counts)
    indices[at] = sparse.indices
    values[at] = sparse.data.astype(np.int16)
    return SparseWeight("csr", sparse.outputs, 1, indptr, indices.reshape(-1, 2),
                        _pack(values.reshape(-1, 2)), paired=True)


def pair_blocks(w_rows: np.ndarray) -> SparseWeight:
    """BSR of [outputs, reduction] int16-range values with blocks of 1 output x 2 consecutive
    reduction indices (the reduction padded to even): `indices` the pair's index r (values
    2r, 2r+1), `data` their two int16 values in an int32 (low = 2r). A kernel multiplies it
    with the activations packed the same way: one pmaddwd (vpdpwssd) per SIMD vector."""
    w_rows = np.asarray(w_rows)
    outputs, reduction = w_rows.shape
    padded = np.zeros((outputs, 2 * (-(-reduction // 2))), np.int16)
    padded[:, :reduction] = w_rows
    pairs = padded.reshape(outputs, -1, 2)
    out_idx, pair_idx = np.nonzero(np.any(pairs != 0, axis=2))
    indptr = np.zeros(outputs + 1, np.int32)
    np.cumsum(np.bincount(out_idx, minlength=outputs), out=indptr[1:])
    return SparseWeight("bsr", outputs, 1, indptr, pair_idx.astype(np.int32),
                        _pack(pairs[out_idx, pair_idx]), packed=True)


def _pack(pairs: np.ndarray) -> np.ndarray:
    """int16 pairs [n, 2] -> int32 [n] (low half = first)."""
    halves = np.ascontiguousarray(pairs, np.int16).view(np.uint16).astype(np.uint32)
    return (halves[:, 0] | (halves[:, 1] << 16)).view(np.int32)


def _fits_int16(weight) -> bool:
    return weight.size == 0 or (weight.min() >= -32768 and weight.max() <= 32767)


def _pairable(sparse, pairs):
    return pairs and sparse.fmt == "csr" and sparse.data.dtype.itemsize <= 2


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
                  pairs=False, name=None):
    """(PrimFunc(a, indptr, indices, data, out), [indptr, indices, data]) for a @ weight,
    weight int [K, N] constant, a [M, K]. `lanes`: int32 SIMD lanes (CPU; BSR block).
    `pairs` (x86 with AVX2 or AVX-512, lanes 8 or 16): CSR with more than one row takes its
    nonzeros two at a time with pmaddwd (vpdpwssd with VNNI)."""
    _check_device(device)
    weight = np.asarray(weight)
    if weight.ndim != 2 or len(a_shape) != 2 or a_shape[1] != weight.shape[0]:
        raise ValueError(f"matmul needs a [M, K] and weight [K, N], got {a_shape} and "
                         f"{weight.shape}")
    block = 1 if fmt == "csr" else (lanes if device == "cpu" else 4)
    # CSR pairs pack a pair's two reduction indices as uint16 halves (_matmul_pairs_cpu)
    cpu_pairs = pairs and device == "cpu" and a_shape[0] > 1 and (
        fmt == "bsr" or a_shape[1] <= 1 << 16)
    M, K = a_shape
    if cpu_pairs and fmt == "bsr" and _fits_int16(weight):  # rows split by chunk, padded
        _, sets, chunk = _matmul_tile(M, K, lanes, paired=False)
        sparse = _matmul_chunks(pair_blocks(weight.T), chunk, -(-K // 2), sets)
    else:
        sparse = _make(weight.T, fmt, block)
    if cpu_pairs and _pairable(sparse, pairs):
        _, sets, chunk = _matmul_tile(M, K, lanes, paired=True)
        sparse = paired_csr(_matmul_chunks(sparse, chunk, K, 1), multiple=sets)
        # a pair's two reduction indices as the halves of one int32: one load, not two
        sparse.indices = sparse.indices[:, 0] | (sparse.indices[:, 1] << 16)
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
    elif sparse.paired:
        func = _matmul_pairs_cpu(*args)
    elif sparse.packed:
        func = _matmul_pair_blocks_cpu(*args)
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


def _pmadd_packed(acc, pairs, packed, lanes, interleaved=False):
    """acc + pmaddwd(pairs, packed): `pairs` int32xlanes holding int16 pairs (or, with
    interleaved, int16x(2 lanes)), `packed` the int32 weight pair broadcast to every lane."""
    from tvm.script import tirx as T

    intrin = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd"}[lanes]
    wide = f"int16x{2 * lanes}"
    if not interleaved:
        pairs = T.reinterpret(pairs, dtype=wide)
    return acc + T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(intrin), pairs,
        T.reinterpret(T.broadcast(packed, lanes), dtype=wide), dtype=f"int32x{lanes}")


def _unpack(x1, x2, half, lanes):
    """Words of x1 and x2 (int16 x 2 lanes) interleaved within each 128-bit lane: the low
    four of each lane (half 0: vpunpcklwd) or the high four (half 1: vpunpckhwd)."""
    from tvm import tirx

    n = 2 * lanes
    return tirx.Shuffle([x1, x2], [i for lane in range(n // 8) for k in range(4)
                                   for i in (8 * lane + 4 * half + k, n + 8 * lane + 4 * half + k)])


def _unpacked_order(lo, hi, half, lanes):
    """Positions [half * lanes, (half + 1) * lanes) of a group back in order from its two
    accumulators: lo lane 4L + k holds position 8L + k, hi lane 4L + k position 8L + 4 + k."""
    from tvm import tirx

    order = []
    for p in range(half * lanes, (half + 1) * lanes):
        lane, k = divmod(p, 8)
        order.append(4 * lane + k if k < 4 else lanes + 4 * lane + k - 4)
    return tirx.Shuffle([lo, hi], order)


def _pack_expr(x0, x1):
    """Two int16-range values as the int32 of a pair (x0 low), as _pack does in numpy."""
    from tvm.script import tirx as T

    return T.bitwise_or(T.Cast("int32", T.Cast("uint16", T.Cast("int16", x0))),
                        T.shift_left(T.Cast("int32", T.Cast("int16", x1)), 16))


def _matmul_pairs_cpu(M, K, N, a_dtype, sparse, lanes):
    """CSR pairs with rows in the lanes (_matmul_rows_in_lanes over int16 rows a_t[tile][k][m]):
    a pair's two indices are one int32 (uint16 halves: one load, not two), its two rows of a_t
    are interleaved by unpack into int16 pairs, one vpdpwssd per vector. The sums wait in that
    interleaved order; _unpacked_order restores it on the way out."""
    from tvm.script import tirx as T

    mt, _, _ = _matmul_tile(M, K, lanes, paired=True)
    step = 2 * lanes  # rows of one unpack: two accumulator vectors
    wide, group = f"int32x{lanes}", f"int16x{step}"

    def row_order(partial, c, v):  # rows [v lanes, (v + 1) lanes) of column c, in order
        g, half = divmod(v, 2)
        return _unpacked_order(partial.vload([c * mt + 2 * g * lanes], wide),
                               partial.vload([c * mt + (2 * g + 1) * lanes], wide), half, lanes)

    def step_pair(acc, a_t, indices, data, base, p, s):
        word = indices[p]
        rows = [base + T.bitwise_and(word, 0xFFFF) * mt,
                base + T.bitwise_and(T.shift_right(word, 16), 0xFFFF) * mt]
        for g in range(mt // step):
            x = [a_t.vload([r + g * step], group) for r in rows]
            for half in range(2):
                T.buffer_store(acc, _pmadd_packed(
                    acc.vload([s, 2 * g + half, 0], wide), _unpack(x[0], x[1], half, lanes),
                    data[p], lanes, interleaved=True), [s, 2 * g + half, T.ramp(0, 1, lanes)])

    return _matmul_rows_in_lanes(M, K, N, a_dtype, sparse, lanes, True, step_pair, row_order)


def _matmul_pair_blocks_cpu(M, K, N, a_dtype, sparse, lanes):
    """Pair blocks with rows in the lanes (_matmul_rows_in_lanes over int32 pairs
    a2[tile][r][m] = (a[m, 2r], a[m, 2r + 1])): one vpdpwssd per nonzero pair block and
    vector of rows, its operand an aligned load."""
    from tvm.script import tirx as T

    mt, _, _ = _matmul_tile(M, K, lanes, paired=False)
    wide = f"int32x{lanes}"

    def row_order(partial, c, v):
        return partial.vload([c * mt + v * lanes], wide)

    def step_block(acc, a2, indices, data, base, p, s):
        for v in range(mt // lanes):
            T.buffer_store(acc, _pmadd_packed(
                acc.vload([s, v, 0], wide), a2.vload([base + indices[p] * mt + v * lanes], wide),
                data[p], lanes), [s, v, T.ramp(0, 1, lanes)])

    return _matmul_rows_in_lanes(M, K, N, a_dtype, sparse, lanes, False, step_block, row_order)


def _matmul_rows_in_lanes(M, K, N, a_dtype, sparse, lanes, paired, step, row_order):
    """The rows-in-lanes matmul: the activations packed once per call (_matmul_pack: int16
    rows when `paired`, else int32 pairs); a task is a tile of rows and a block of output
    columns; per chunk of the reduction (its packed rows stay in L1), per column, `sets`
    accumulator sets take the column's entries in turn (rows padded to a multiple of sets);
    `step(acc, packed, indices, data, base, p, s)` adds entry p into set s. The sums wait in
    `partial` between chunks and go out by shuffle transposes (`row_order`: _matmul_store)."""
    from tvm.script import tirx as T

    mt, sets, _ = _matmul_tile(M, K, lanes, paired)
    u = mt // lanes
    nk = (sparse.indptr.shape[0] - 1) // N
    nnz = max(int(sparse.indptr[-1]), 1)
    tiles, blocks, cols = _matmul_blocks(M, N, mt, lanes)
    rows, packed_dtype = (K, "int16") if paired else (-(-K // 2), "int32")

    @T.prim_func
    def kernel(a: T.Buffer((M, K), a_dtype), indptr: T.Buffer((N * nk + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer((nnz,), "int32"),
               out: T.Buffer((M, N), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        packed = T.alloc_buffer((tiles * rows * mt,), packed_dtype)
        _matmul_pack(a, packed, M, K, mt, lanes, split=paired)
        for task in T.parallel(tiles * blocks):
            partial = T.alloc_buffer((cols * mt,), "int32")
            for k in T.serial(nk):
                for c in T.serial(cols):
                    acc = T.alloc_buffer((sets, u, lanes), "int32", scope="local")
                    _matmul_start(acc, partial, k, c, sets, u, mt, lanes)
                    if task % blocks * cols + c < N:
                        first = T.bind(indptr[(task % blocks * cols + c) * nk + k])
                        for j in T.serial((indptr[(task % blocks * cols + c) * nk + k + 1]
                                           - first) // sets):
                            for s in range(sets):
                                step(acc, packed, indices, data, task // blocks * rows * mt,
                                     first + j * sets + s, s)
                    _matmul_keep(acc, partial, c, sets, u, mt, lanes)
            _matmul_store(out, partial, row_order, task // blocks, task % blocks, M, N, mt,
                          cols, lanes)

    return kernel


def _matmul_tile(M, K, lanes, paired):
    """(rows per tile, accumulator sets, chunk) of a rows-in-lanes matmul: up to four vectors
    of rows (CSR pairs: a multiple of two); enough sets for about 8 accumulators, which hide
    vpdpwssd's latency; the chunk (reduction indices, or pairs of them for pair blocks) whose
    rows of the packed activations fit _MATMUL_WINDOW, an even split."""
    step = 2 * lanes if paired else lanes
    mt = 4 * lanes if M >= 4 * lanes else -(-M // step) * step
    sets = min(4, max(1, 8 // (mt // lanes)))
    reduction, row_bytes = (K, 2 * mt) if paired else (-(-K // 2), 4 * mt)
    chunks = -(-reduction // max(1, _MATMUL_WINDOW // row_bytes))
    return mt, sets, -(-reduction // chunks)


def _matmul_blocks(M, N, mt, lanes):
    """(row tiles, column blocks, columns per block) of a rows-in-lanes matmul: about
    _MATMUL_TASKS tasks, blocks of whole vectors of columns."""
    tiles = -(-M // mt)
    blocks = min(N, max(1, -(-_MATMUL_TASKS // tiles)))
    cols = -(-(-(-N // blocks)) // lanes) * lanes
    return tiles, -(-N // cols), cols


def _matmul_pack(a, packed, M, K, mt, lanes, split):
    """Emit the loops that pack a[M, K] once per call, rows in the lanes, tile after tile of
    mt rows (zero past M): int32 pairs packed[tile][r][m] = (a[m, 2r], a[m, 2r + 1]), or with
    `split` int16 rows packed[tile][k][m]. Pairs of whole vectors by lanes x lanes shuffle
    transposes of rows read as int32 pairs, the rest (K mod 2 lanes) one by one."""
    from tvm import tirx
    from tvm.script import tirx as T

    a_dtype = str(a.dtype)
    k2, full = -(-K // 2), K // (2 * lanes)
    tiles = -(-M // mt)
    wide = f"int32x{lanes}"

    def row_pairs(m, r0):  # int32 lanes: pairs r0 .. r0 + lanes of row m (zero past M)
        row = T.reinterpret(T.Cast(f"int16x{2 * lanes}", a.vload(
            [T.min(m, M - 1), 2 * r0], f"{a_dtype}x{2 * lanes}")), dtype=wide)
        return row if M % mt == 0 else T.if_then_else(m < M, row, tirx.Broadcast(T.int32(0),
                                                                                 lanes))

    def store(t, r, v, column):  # pair r of rows [v lanes, (v + 1) lanes) of tile t
        if not split:
            T.buffer_store(packed, column, [T.ramp((t * k2 + r) * mt + v * lanes, 1, lanes)])
            return
        for h in range(2):
            half = column if h == 0 else T.shift_right(column, tirx.Broadcast(T.int32(16),
                                                                               lanes))
            T.buffer_store(packed, T.Cast(f"int16x{lanes}", half),
                           [T.ramp((t * K + 2 * r + h) * mt + v * lanes, 1, lanes)])

    if full:
        with T.parallel(0, tiles * full) as task:
            t, g = task // full, task % full
            for v in range(mt // lanes):
                columns = _transpose([row_pairs(t * mt + v * lanes + s, g * lanes)
                                      for s in range(lanes)], lanes)
                for i, column in enumerate(columns):
                    store(t, g * lanes + i, v, column)
    if full * lanes < k2:
        with (T.parallel if tiles > 1 else T.serial)(0, tiles) as t:
            with T.serial(full * 2 * lanes, K) as k:
                with T.serial(0, mt) as m:
                    m_in = T.min(t * mt + m, M - 1)
                    value = T.if_then_else(t * mt + m < M, a[m_in, k], T.Cast(a_dtype, 0))
                    if split:
                        T.buffer_store(packed, T.Cast("int16", value), [(t * K + k) * mt + m])
                    else:
                        with T.If(k % 2 == 0):
                            with T.Then():
                                T.buffer_store(packed, _pack_expr(value, T.if_then_else(
                                    tirx.all(k + 1 < K, t * mt + m < M),
                                    a[m_in, T.min(k + 1, K - 1)], T.Cast(a_dtype, 0))),
                                    [(t * k2 + k // 2) * mt + m])


def _matmul_start(acc, partial, k, c, sets, u, mt, lanes):
    """Accumulator sets at a chunk's start: set 0 the column's sums so far, the rest zero."""
    from tvm import tirx
    from tvm.script import tirx as T

    for s in range(sets):
        for v in range(u):
            zeros = tirx.Broadcast(T.int32(0), lanes)
            start = zeros if s else T.if_then_else(
                k > 0, partial.vload([c * mt + v * lanes], f"int32x{lanes}"), zeros)
            T.buffer_store(acc, start, [s, v, T.ramp(0, 1, lanes)])


def _matmul_keep(acc, partial, c, sets, u, mt, lanes):
    """The column's sums so far (the sets added) into `partial`."""
    from tvm.script import tirx as T

    wide = f"int32x{lanes}"
    for v in range(u):
        total = acc.vload([0, v, 0], wide)
        for s in range(1, sets):
            total = total + acc.vload([s, v, 0], wide)
        T.buffer_store(partial, total, [T.ramp(c * mt + v * lanes, 1, lanes)])


def _matmul_store(out, partial, row_order, t, b, M, N, mt, cols, lanes):
    """A task's sums out[tile t rows, block b columns], from partial[column][rows] by lanes x
    lanes shuffle transposes; `row_order(partial, c, v)` gives column c's rows [v lanes,
    (v + 1) lanes) in order."""
    from tvm import tirx
    from tvm.script import tirx as T

    for cg in range(cols // lanes):
        for v in range(mt // lanes):
            rows = _transpose([row_order(partial, cg * lanes + i, v) for i in range(lanes)],
                              lanes)
            n0 = b * cols + cg * lanes
            for s, row in enumerate(rows):
                m = t * mt + v * lanes + s
                with T.If(tirx.all(m < M, n0 < N) if M % mt else n0 < N):
                    with T.Then():
                        with T.If(n0 + lanes <= N):
                            with T.Then():
                                T.buffer_store(out, row, [m, T.ramp(n0, 1, lanes)])
                            with T.Else():
                                for i in range(lanes):
                                    with T.If(n0 + i < N):
                                        with T.Then():
                                            T.buffer_store(out, tirx.Shuffle([row], [i]),
                                                           [m, n0 + i])


def _matmul_chunks(sparse, chunk, reduction, multiple) -> SparseWeight:
    """`sparse` (rows with sorted indices) split at every `chunk` reduction indices, output o's
    chunk k as row o * nk + k, each row padded to a multiple of `multiple` entries with zeros
    (index: the chunk's first)."""
    nk = -(-reduction // chunk)
    rows = np.repeat(np.arange(sparse.outputs), np.diff(sparse.indptr)) * nk \
        + sparse.indices // chunk
    counts = np.bincount(rows, minlength=sparse.outputs * nk)
    padded = -(-counts // multiple) * multiple
    indptr = np.zeros(sparse.outputs * nk + 1, np.int32)
    np.cumsum(padded, out=indptr[1:])
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    at = indptr[rows] + np.arange(sparse.nnz) - firsts[rows]
    indices = np.repeat(np.arange(sparse.outputs * nk, dtype=np.int32) % nk * chunk, padded)
    data = np.zeros((int(indptr[-1]),) + sparse.data.shape[1:], sparse.data.dtype)
    indices[at], data[at] = sparse.indices, sparse.data
    return replace(sparse, indptr=indptr, indices=indices.astype(np.int32), data=data)


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
                  padding=(0, 0, 0, 0), dilation=(1, 1), device="cpu", lanes=16, pairs=False,
                  name=None):
    """(PrimFunc(x, indptr, indices, data, out), [indptr, indices, data]) for an NCHW conv2d
    of x [B, C, H, W] with the constant OIHW int weight (groups = 1); out int32 NCHW.
    padding is (top, left, bottom, right) as Relax's conv2d attrs give it. `pairs` as in
    sparse_matmul: CSR pairs and pair blocks for stride 1; pair blocks with the batch in the
    lanes (batch >= lanes) for any stride."""
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
    cpu_pairs = pairs and device == "cpu" and geo.flat
    batched = pairs and device == "cpu" and _batch_lanes(geo, lanes)
    if (cpu_pairs or batched) and fmt == "bsr" and _fits_int16(weight):
        # channel pairs: blocks of 1 output x input channels (2c, 2c + 1) at one (kh, kw)
        c2 = -(-geo.channels // 2)
        padded = np.zeros((weight.shape[0], 2 * c2) + weight.shape[2:], weight.dtype)
        padded[:, :geo.channels] = weight
        sparse = pair_blocks(padded.reshape(weight.shape[0], c2, 2, *weight.shape[2:])
                             .transpose(0, 1, 3, 4, 2).reshape(weight.shape[0], -1))
        if batched:  # rows split by chunk of channel pairs: output o, chunk k is row o*nk + k
            taps = int(np.prod(geo.kernel))
            sparse.indptr = _chunk_rows(sparse, taps * _batch_chunk(geo, lanes), taps * c2)
        # input offsets in int32 pairs: per sample, or (batch lanes) per group of `lanes` samples
        scale = lanes if batched else 1
        sparse.indices = replace(geo, channels=c2).offsets()[sparse.indices] * scale
    else:
        sparse = _make(weight.reshape(weight.shape[0], -1), fmt, block)
        if batched and _pairable(sparse, pairs):  # CSR pairs with samples in the lanes
            taps = int(np.prod(geo.kernel))
            sparse.indptr = _chunk_rows(sparse, taps * _batch_chunk(geo, lanes, paired=True),
                                        taps * geo.channels)
            sparse.indices = geo.offsets()[sparse.indices] * lanes
            return _finish_conv(geo, x_dtype, paired_csr(sparse), device, lanes, name)
        sparse.indices = geo.offsets()[sparse.indices]
    if cpu_pairs and _pairable(sparse, pairs):
        sparse = paired_csr(sparse)
    return _finish_conv(geo, x_dtype, sparse, device, lanes, name)


def _finish_conv(geo, x_dtype, sparse, device, lanes, name):
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
                  name=None):  # pylint: disable=too-many-arguments
    """The PrimFunc(x, indptr, indices, data, out int32[B, O, OH, OW]) for `sparse` whose
    indices are padded-input offsets (see `sparse_conv2d`)."""
    _check_device(device)
    if device == "cuda":
        return _named(_conv_cuda(geo, x_dtype, sparse), name)
    if sparse.packed and _batch_lanes(geo, lanes):
        return _named(_conv_batch_lanes_cpu(geo, x_dtype, sparse, lanes), name)
    if sparse.paired and _batch_lanes(geo, lanes):
        return _named(_conv_batch_pairs_cpu(geo, x_dtype, sparse, lanes), name)
    if sparse.packed:
        return _named(_conv_pair_blocks_cpu(geo, x_dtype, sparse, lanes), name)
    return _named(_conv_cpu(geo, x_dtype, sparse, lanes), name)


def _batch_lanes(geo, lanes) -> bool:
    """Pair blocks put samples in the vector lanes (_conv_batch_lanes_cpu) from one vector of
    samples on."""
    return geo.batch >= lanes


def _transpose(vectors, lanes):
    """The lanes x lanes transpose of `lanes` vectors, by log2(lanes) rounds of two-vector
    shuffles (unpack / shuffle-lanes instructions): result[i][k] = vectors[k][i]. Each vector
    of a round is bound to a variable (emitted in the current TVMScript frame)."""
    from tvm import tirx
    from tvm.script import tirx as T

    vectors = [T.bind(v) for v in vectors]
    d = lanes // 2
    while d:
        for i in range(lanes):
            if i & d:
                continue
            a, b = vectors[i], vectors[i + d]
            vectors[i] = T.bind(tirx.Shuffle([a, b], [k if not k & d else lanes + k - d
                                                      for k in range(lanes)]))
            vectors[i + d] = T.bind(tirx.Shuffle([a, b], [k + d if not k & d else lanes + k
                                                          for k in range(lanes)]))
        d //= 2
    return vectors


def _chunk_rows(sparse, chunk, reduction) -> np.ndarray:
    """indptr of `sparse`'s rows split at every `chunk` reduction indices (each row's indices
    are sorted): row o * nk + k holds output o's nonzeros in chunk k (nk chunks)."""
    nk = -(-reduction // chunk)
    rows = np.repeat(np.arange(sparse.outputs), np.diff(sparse.indptr)) * nk \
        + sparse.indices // chunk
    indptr = np.zeros(sparse.outputs * nk + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=sparse.outputs * nk), out=indptr[1:])
    return indptr


def _batch_chunk(geo, lanes, paired=False) -> int:
    """Channel pairs (`paired`, CSR pairs: channels) per chunk of a batch-lanes kernel: the
    input window of one register tile (chunk x its rows x columns x a vector) within
    _WINDOW_BYTES, an even split."""
    units = geo.channels if paired else -(-geo.channels // 2)
    (R, P), (kh, kw) = _batch_tile(geo, lanes, 2 if paired else 1), geo.kernel
    (sh, sw), (dh, dw) = geo.strides, geo.dilation
    per_unit = ((R - 1) * sh + (kh - 1) * dh + 1) * ((P - 1) * sw + (kw - 1) * dw + 1) * lanes * 4
    chunks = -(-units // max(1, _WINDOW_BYTES // per_unit))
    return -(-units // chunks)


def _batch_tile(geo, lanes, per_position=1):
    """(rows, columns) of output positions in a batch-lanes register tile, at most
    _CONV_ACCUMULATORS vectors (half on AVX2; `per_position` vectors each): the fewest
    positions computed, counting per
    position a share of each nonzero's broadcast and index load (1 / tile) and of each row's
    transposed stores (1 / columns). On this machine (1, 7) beat (2, 7) for 7x7 outputs and
    (1, 14) beat (4, 4) and (2, 7) for 28x28 ones."""
    budget = (_CONV_ACCUMULATORS if lanes >= 16 else _CONV_ACCUMULATORS // 2) // per_position
    oh, ow = geo.out_size

    def cost(tile):
        r, p = tile
        return -(-oh // r) * r * -(-ow // p) * p * (1 + 1 / (r * p) + 1 / p)

    return min(((r, p) for r in range(1, min(oh, budget) + 1)
                for p in range(1, min(ow, budget // r) + 1)), key=cost)


def _conv_tiles(geo, lanes, rows, step):
    """(positions per tile, tiles, samples per task) of a CPU conv kernel: a register tile of
    `rows` x positions x samples int32 vectors, up to _CONV_ACCUMULATORS of them, the positions
    a multiple of `step` split evenly over the tiles; samples (a divisor of the batch) fill
    what one sample's positions leave of the budget."""
    budget = _CONV_ACCUMULATORS if lanes >= 16 else _CONV_ACCUMULATORS // 2
    most = max(step, budget // rows * lanes // step * step)
    tiles = -(-geo.positions // most)
    qt = -(-geo.positions // (tiles * step)) * step
    vectors = rows * qt // lanes
    ns = max(d for d in range(1, geo.batch + 1)
             if geo.batch % d == 0 and d * vectors <= max(budget, vectors))
    return qt, tiles, ns


def _conv_cpu(geo, x_dtype, sparse, lanes):
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    sh, sw = geo.strides
    wq = geo.row_pitch
    bo = sparse.block
    nblocks = sparse.indptr.shape[0] - 1
    step = 2 * lanes if sparse.paired else lanes  # paired: groups of 2 lanes positions
    qt, tiles, ns = _conv_tiles(geo, lanes, bo, step)
    S = geo.sample_size(qt)
    nnz, ddt = max(sparse.nnz, 1), str(sparse.data.dtype)
    data_shape = (nnz,) if bo == 1 else (nnz, bo)
    x_store = "int16" if sparse.paired else x_dtype  # pmaddwd takes int16
    group = f"int16x{2 * lanes}"
    wide = f"int32x{lanes}"
    if sparse.paired:
        index_shape, data_shape = (nnz, 2), (nnz,)
    else:
        index_shape = (nnz,)

    def read(xp, base, q):  # the input under output position q, from a window's offset
        if geo.flat:
            return xp[base + q]
        return xp[base + (q // wq) * sh * wp + (q % wq) * sw]

    def value(data, j, o):
        return data[j] if bo == 1 else data[j, o]

    def pmadd(xp, acc, indices, data, p, s, g, task, t, half):
        """acc[s]'s vector 2g + half plus pair p times group g's positions (their low words
        for half 0, high for 1)."""
        window = ((task // nblocks) * ns + s) * S + t * qt + g * 2 * lanes
        return _pmadd_packed(acc.vload([s, 0, (2 * g + half) * lanes], wide),
                             _unpack(xp.vload([window + indices[p, 0]], group),
                                     xp.vload([window + indices[p, 1]], group), half, lanes),
                             data[p], lanes, interleaved=True)

    def in_order(acc, s, g, half):  # positions [(2g + half) lanes, (2g + half + 1) lanes)
        return _unpacked_order(acc.vload([s, 0, 2 * g * lanes], wide),
                               acc.vload([s, 0, (2 * g + 1) * lanes], wide), half, lanes)

    @T.macro
    def accumulate(xp, acc, indptr, indices, data, task, t):
        # task: samples (task // nblocks) * ns + s, s < ns; block task % nblocks
        if sparse.paired:
            # per group of 2 lanes positions: the two windows interleaved in 128-bit lanes
            # (unpack low / high words), accumulators in that order (see _unpacked_order)
            for p in T.serial(indptr[task % nblocks], indptr[task % nblocks + 1]):
                for s in T.unroll(ns):
                    for g in T.unroll(qt // (2 * lanes)):
                        acc[s, 0, T.ramp(2 * g * lanes, 1, lanes)] = pmadd(
                            xp, acc, indices, data, p, s, g, task, t, 0)
                        acc[s, 0, T.ramp((2 * g + 1) * lanes, 1, lanes)] = pmadd(
                            xp, acc, indices, data, p, s, g, task, t, 1)
        else:
            for j in T.serial(indptr[task % nblocks], indptr[task % nblocks + 1]):
                for s in T.unroll(ns):
                    for o in T.unroll(bo):
                        for i in T.vectorized(qt):
                            acc[s, o, i] = acc[s, o, i] + _i32(value(data, j, o)) * _i32(
                                read(xp, ((task // nblocks) * ns + s) * S + indices[j],
                                     t * qt + i))

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((nblocks + 1,), "int32"),
               indices: T.Buffer(index_shape, "int32"), data: T.Buffer(data_shape, ddt),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xp = T.alloc_buffer((B * S,), x_store)
        for task in T.parallel(B * C):
            for h in T.serial(hp):
                if top <= h and h < top + H:
                    for w in T.serial(left):
                        xp[(task // C) * S + (task % C) * hp * wp + h * wp + w] = T.Cast(x_store, 0)
                    for w in T.vectorized(W):
                        xp[(task // C) * S + (task % C) * hp * wp + h * wp + left + w] = T.Cast(
                            x_store, x[task // C, task % C, h - top, w])
                    for w in T.serial(wp - left - W):
                        xp[(task // C) * S + (task % C) * hp * wp + h * wp + left + W + w] = \
                            T.Cast(x_store, 0)
                else:
                    for w in T.vectorized(wp):
                        xp[(task // C) * S + (task % C) * hp * wp + h * wp + w] = T.Cast(x_store, 0)
        for b in T.parallel(B):
            for i in T.serial(S - C * hp * wp):
                xp[b * S + C * hp * wp + i] = T.Cast(x_store, 0)
        for task in T.parallel(B // ns * nblocks):
            # the accumulators of every tile, rows of pitch wq, copied out row by row
            res = T.alloc_buffer((ns, bo, tiles * qt), "int32", scope="local")
            for t in T.serial(tiles):
                acc = T.alloc_buffer((ns, bo, qt), "int32", scope="local")
                for s in T.unroll(ns):
                    for o in T.unroll(bo):
                        for i in T.vectorized(qt):
                            acc[s, o, i] = 0
                accumulate(xp, acc, indptr, indices, data, task, t)
                for s in T.unroll(ns):
                    if sparse.paired:
                        for g in T.unroll(qt // (2 * lanes)):
                            res[s, 0, T.ramp(t * qt + 2 * g * lanes, 1, lanes)] = in_order(
                                acc, s, g, 0)
                            res[s, 0, T.ramp(t * qt + (2 * g + 1) * lanes, 1, lanes)] = in_order(
                                acc, s, g, 1)
                    else:
                        for o in T.unroll(bo):
                            for i in T.vectorized(qt):
                                res[s, o, t * qt + i] = acc[s, o, i]
            for s in T.serial(ns):
                for o in T.serial(bo):
                    if (task % nblocks) * bo + o < O:
                        for h in T.serial(OH):
                            for w in T.vectorized(OW):
                                out[(task // nblocks) * ns + s, (task % nblocks) * bo + o, h, w] = \
                                    res[s, o, h * wq + w]

    return kernel


def _conv_pair_blocks_cpu(geo, x_dtype, sparse, lanes):
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    c2 = -(-C // 2)
    pairs = replace(geo, channels=c2)  # the padded input as int32 channel pairs
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    L = geo.positions
    qt = min(4 * lanes, -(-L // lanes) * lanes)  # positions per tile: 4 accumulator registers
    tiles = -(-L // qt)
    S = pairs.sample_size(qt)
    nnz = max(sparse.nnz, 1)
    wide = f"int32x{lanes}"

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((O + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer((nnz,), "int32"),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xp = T.alloc_buffer((B * S,), "int32")
        for task in T.parallel(B * c2):
            for h in T.serial(hp):
                if top <= h and h < top + H:
                    for w in T.serial(left):
                        xp[(task // c2) * S + (task % c2) * hp * wp + h * wp + w] = 0
                    for w in T.vectorized(W):
                        xp[(task // c2) * S + (task % c2) * hp * wp + h * wp + left + w] = \
                            _pack_expr(x[task // c2, 2 * (task % c2), h - top, w], T.if_then_else(
                                2 * (task % c2) + 1 < C,
                                x[task // c2, T.min(2 * (task % c2) + 1, C - 1), h - top, w],
                                T.Cast(x_dtype, 0)))
                    for w in T.serial(wp - left - W):
                        xp[(task // c2) * S + (task % c2) * hp * wp + h * wp + left + W + w] = 0
                else:
                    for w in T.vectorized(wp):
                        xp[(task // c2) * S + (task % c2) * hp * wp + h * wp + w] = 0
        for b in T.parallel(B):
            for i in T.serial(S - c2 * hp * wp):
                xp[b * S + c2 * hp * wp + i] = 0
        for task in T.parallel(B * O):
            res = T.alloc_buffer((tiles * qt,), "int32", scope="local")
            for t in T.serial(tiles):
                acc = T.alloc_buffer((qt,), "int32", scope="local")
                for i in T.vectorized(qt):
                    acc[i] = 0
                for j in T.serial(indptr[task % O], indptr[task % O + 1]):
                    for u in T.unroll(qt // lanes):
                        acc[T.ramp(u * lanes, 1, lanes)] = _pmadd_packed(
                            acc.vload([u * lanes], wide),
                            xp.vload([(task // O) * S + indices[j] + t * qt + u * lanes], wide),
                            data[j], lanes)
                for i in T.vectorized(qt):
                    res[t * qt + i] = acc[i]
            for h in T.serial(OH):
                for w in T.vectorized(OW):
                    out[task // O, task % O, h, w] = res[h * wp + w]

    return kernel


def _sample_row(x, b, c, h, w0, lanes, whole):
    """int32 lanes of x[b, c, h, w0:w0 + lanes], zero past the width and (unless `whole`:
    the groups of samples fill the batch) past the batch."""
    from tvm import tirx
    from tvm.script import tirx as T

    B, W = int(x.shape[0]), int(x.shape[3])
    zeros = tirx.Broadcast(T.int32(0), lanes)
    n = min(lanes, W - w0)
    row = T.Cast(f"int32x{n}", x.vload([T.min(b, B - 1), c, h, w0], f"{x.dtype}x{n}"))
    if n < lanes:
        row = tirx.Shuffle([row, zeros], list(range(n)) + [n] * (lanes - n))
    return row if whole else T.if_then_else(b < B, row, zeros)


def _zero_border(xt, geo, channels, groups, plane, lanes):
    """Emit the loop that zeroes a batch-lanes input's padding border and tail: per group a
    plane of `channels` x hp x wp vectors (then the tail up to `plane` values)."""
    from tvm import tirx
    from tvm.script import tirx as T

    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    per = plane // lanes
    with T.parallel(0, groups * per) as i:
        v = i % per
        with T.If(tirx.any(v >= channels * hp * wp, v // wp % hp < top,
                           v // wp % hp >= top + geo.height, v % wp < left,
                           v % wp >= left + geo.width)):
            with T.Then():
                T.buffer_store(xt, tirx.Broadcast(T.int32(0), lanes), [T.ramp(i * lanes, 1, lanes)])


def _store_sample_rows(out, positions, first, o, oh, ow0, lanes, whole):
    """Store P = len(positions) int32 vectors of `lanes` samples (samples first, first + 1,
    ...; output channel o, row oh, columns ow0 .. ow0 + P) into out[B, O, OH, OW], by one
    lanes x lanes shuffle transpose: a row of P outputs per sample, those past OH, OW or (unless
    `whole`) the batch left out."""
    from tvm import tirx
    from tvm.script import tirx as T

    B, OH, OW = int(out.shape[0]), int(out.shape[2]), int(out.shape[3])
    P = len(positions)
    rows = _transpose(positions + [tirx.Broadcast(T.int32(0), lanes)] * (lanes - P), lanes)
    for s, row in enumerate(rows):
        b = first + s
        with T.If(tirx.all(oh < OH, *([] if whole else [b < B]))):
            with T.Then():
                if OW % P == 0 and P > 1:
                    T.buffer_store(out, tirx.Shuffle([row], list(range(P))),
                                   [b, o, oh, T.ramp(ow0, 1, P)])
                else:
                    for p in range(P):
                        with T.If(ow0 + p < OW):
                            with T.Then():
                                T.buffer_store(out, tirx.Shuffle([row], [p]), [b, o, oh, ow0 + p])


def _conv_batch_lanes_cpu(geo, x_dtype, sparse, lanes):
    """Pair blocks with samples in the lanes: the input transposed to int32 channel pairs
    xt[group][c2][hp][wp][lanes] (one group of `lanes` samples after the other), so that every
    nonzero's vectors are aligned loads; per task a register tile of R x P output positions
    (a vector of samples each) over every output channel, transposed back to rows of the
    output by shuffles."""
    from tvm import tirx
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    c2 = -(-C // 2)
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    sh, sw = geo.strides
    R, P = _batch_tile(geo, lanes)
    nth, ntw = -(-OH // R), -(-OW // P)
    groups = -(-B // lanes)
    # one group's padded input, with the zero tail that the last tiles may read
    reach = int(sparse.indices.max(initial=0)) // lanes + (nth * R - 1) * sh * wp \
        + (ntw * P - 1) * sw + 1
    plane = max(c2 * hp * wp, reach) * lanes
    nnz = max(sparse.nnz, 1)
    nk = (sparse.indptr.shape[0] - 1) // O  # chunks of channel pairs (see _chunk_rows)
    wide = f"int32x{lanes}"
    # input columns transposed lanes at a time; the last chunk overlaps when lanes < W
    starts = [min(w0, max(W - lanes, 0)) for w0 in range(0, W, lanes)]

    def zeros():
        return tirx.Broadcast(T.int32(0), lanes)

    def sample_row(x, b, c, h, w0):
        return _sample_row(x, b, c, h, w0, lanes, B % lanes == 0)

    def pack_input(x, xt, task):
        """xt's columns of (group, c2, h) = task: int16 pairs of channels 2c2, 2c2 + 1."""
        g, c, h = task // (c2 * H), 2 * (task // H % c2), task % H
        for w0 in starts:
            rows = []
            for s in range(lanes):
                lo = T.bitwise_and(sample_row(x, g * lanes + s, c, h, w0),
                                   tirx.Broadcast(T.int32(0xFFFF), lanes))
                hi = T.if_then_else(c + 1 < C, sample_row(x, g * lanes + s, T.min(c + 1, C - 1),
                                                          h, w0), zeros())
                rows.append(T.bitwise_or(lo, T.shift_left(hi, tirx.Broadcast(T.int32(16),
                                                                              lanes))))
            for w, column in enumerate(_transpose(rows, lanes)[:min(lanes, W - w0)]):
                T.buffer_store(xt, column, [T.ramp(
                    g * plane + ((task // H % c2 * hp + h + top) * wp + left + w0 + w) * lanes,
                    1, lanes)])

    def store_output(out, acc, task, o):
        """The tile's accumulators as rows of P outputs per sample (P lanes stored)."""
        g, oh0, ow0 = task // (nth * ntw), task // ntw % nth * R, task % ntw * P
        for r in range(R):
            _store_sample_rows(out, [acc.vload([r, p, 0], wide) for p in range(P)],
                               g * lanes, o, oh0 + r, ow0, lanes, B % lanes == 0)

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((O * nk + 1,), "int32"),
               indices: T.Buffer((nnz,), "int32"), data: T.Buffer((nnz,), "int32"),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xt = T.alloc_buffer((groups * plane,), "int32")
        _zero_border(xt, geo, c2, groups, plane, lanes)
        for task in T.parallel(groups * c2 * H):
            pack_input(x, xt, task)
        for task in T.parallel(groups * nth * ntw):
            # per chunk of channel pairs (its input window stays in L1), every output's
            # nonzeros; the tiles of all outputs wait in `tiles` between chunks
            tiles = T.alloc_buffer((O if nk > 1 else 1, R, P, lanes), "int32")
            for k in T.serial(nk):
                for o in T.serial(O):
                    acc = T.alloc_buffer((R, P, lanes), "int32", scope="local")
                    for r in T.unroll(R):
                        for p in T.unroll(P):
                            acc[r, p, T.ramp(0, 1, lanes)] = T.if_then_else(
                                k == 0, zeros(), tiles.vload([o % tiles.shape[0], r, p, 0], wide))
                    for j in T.serial(indptr[o * nk + k], indptr[o * nk + k + 1]):
                        for r in T.unroll(R):
                            for p in T.unroll(P):
                                acc[r, p, T.ramp(0, 1, lanes)] = _pmadd_packed(
                                    acc.vload([r, p, 0], wide), xt.vload(
                                        [task // (nth * ntw) * plane + indices[j]
                                         + ((task // ntw % nth * R + r) * sh * wp
                                            + (task % ntw * P + p) * sw) * lanes], wide),
                                    data[j], lanes)
                    if k == nk - 1:
                        store_output(out, acc, task, o)
                    else:
                        for r in T.unroll(R):
                            for p in T.unroll(P):
                                tiles[o % tiles.shape[0], r, p, T.ramp(0, 1, lanes)] = \
                                    acc.vload([r, p, 0], wide)

    return kernel

def _conv_batch_pairs_cpu(geo, x_dtype, sparse, lanes):
    """CSR pairs with samples in the lanes: the input transposed once per call to int16
    xt[group][c][hp][wp][2 lanes samples] (an int32 word holds samples 2i, 2i + 1; the shuffle
    transposes of _conv_batch_lanes_cpu); per task a register tile of R x P output positions,
    two accumulator vectors each (samples [0, lanes) and [lanes, 2 lanes) of the group). A
    nonzero pair's two windows are interleaved by unpack into int16 pairs, one vpdpwssd per
    half (the packing orders the samples so that each half comes out in order); chunks of
    channels and `tiles` between them as there. Against pair blocks, each vector load feeds a
    nonzero pair, not a pair block (at 70% zeros: 0.3 pairs, 0.51 blocks per two weights)."""
    from tvm import tirx
    from tvm.script import tirx as T

    B, C, H, W, O = geo.batch, geo.channels, geo.height, geo.width, geo.out_channels
    hp, wp = geo.padded
    top, left = geo.padding[0], geo.padding[1]
    OH, OW = geo.out_size
    sh, sw = geo.strides
    R, P = _batch_tile(geo, lanes, 2)
    nth, ntw = -(-OH // R), -(-OW // P)
    S = 2 * lanes  # samples per group
    groups = -(-B // S)
    reach = int(sparse.indices.max(initial=0)) // lanes + (nth * R - 1) * sh * wp \
        + (ntw * P - 1) * sw + 1
    plane = max(C * hp * wp, reach) * lanes
    npairs = max(int(sparse.indptr[-1]), 1)
    nk = (sparse.indptr.shape[0] - 1) // O  # chunks of channels (see _chunk_rows)
    wide, half16 = f"int32x{lanes}", f"int16x{S}"
    starts = [min(w0, max(W - lanes, 0)) for w0 in range(0, W, lanes)]
    # unpack takes int16 words 8L + k (low half) and 8L + 4 + k (high half) of 128-bit lane L
    # into int32 lane 4L + k: holding samples 4L + k and lanes + 4L + k there, each half's
    # accumulators come out in sample order
    order = [(lanes if v % 8 >= 4 else 0) + 4 * (v // 8) + v % 4 for v in range(S)]

    def zeros():
        return tirx.Broadcast(T.int32(0), lanes)

    def sample_row(x, b, c, h, w0):
        return _sample_row(x, b, c, h, w0, lanes, B % S == 0)

    def pack_input(x, xt, task):
        """xt's columns of (group, c, h) = task: int16 word v of a column holds the group's
        sample order[v]."""
        g, c, h = task // (C * H), task // H % C, task % H
        for w0 in starts:
            rows = []
            for i in range(lanes):
                lo = T.bitwise_and(sample_row(x, g * S + order[2 * i], c, h, w0),
                                   tirx.Broadcast(T.int32(0xFFFF), lanes))
                hi = sample_row(x, g * S + order[2 * i + 1], c, h, w0)
                rows.append(T.bitwise_or(lo, T.shift_left(hi, tirx.Broadcast(T.int32(16),
                                                                              lanes))))
            for w, column in enumerate(_transpose(rows, lanes)[:min(lanes, W - w0)]):
                T.buffer_store(xt, column, [T.ramp(
                    g * plane + ((c * hp + h + top) * wp + left + w0 + w) * lanes, 1, lanes)])

    def store_output(out, acc, task, o):
        """The tile's accumulators as rows of P outputs per sample (P lanes stored)."""
        g, oh0, ow0 = task // (nth * ntw), task // ntw % nth * R, task % ntw * P
        for r in range(R):
            for half in range(2):
                _store_sample_rows(out, [acc.vload([r, p, half, 0], wide) for p in range(P)],
                                   g * S + half * lanes, o, oh0 + r, ow0, lanes, B % S == 0)

    def pair_step(acc, xt, indices, data, task, j):
        g, oh0, ow0 = task // (nth * ntw), task // ntw % nth * R, task % ntw * P
        for r in range(R):
            for p in range(P):
                at = g * plane + ((oh0 + r) * sh * wp + (ow0 + p) * sw) * lanes
                x1 = T.reinterpret(xt.vload([at + indices[j, 0]], wide), dtype=half16)
                x2 = T.reinterpret(xt.vload([at + indices[j, 1]], wide), dtype=half16)
                for h in range(2):
                    T.buffer_store(acc, _pmadd_packed(
                        acc.vload([r, p, h, 0], wide), _unpack(x1, x2, h, lanes), data[j],
                        lanes, interleaved=True), [r, p, h, T.ramp(0, 1, lanes)])

    @T.prim_func
    def kernel(x: T.Buffer((B, C, H, W), x_dtype), indptr: T.Buffer((O * nk + 1,), "int32"),
               indices: T.Buffer((npairs, 2), "int32"), data: T.Buffer((npairs,), "int32"),
               out: T.Buffer((B, O, OH, OW), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xt = T.alloc_buffer((groups * plane,), "int32")
        _zero_border(xt, geo, C, groups, plane, lanes)
        for task in T.parallel(groups * C * H):
            pack_input(x, xt, task)
        for task in T.parallel(groups * nth * ntw):
            tiles = T.alloc_buffer((O if nk > 1 else 1, R, P, 2, lanes), "int32")
            for k in T.serial(nk):
                for o in T.serial(O):
                    acc = T.alloc_buffer((R, P, 2, lanes), "int32", scope="local")
                    for r in T.unroll(R):
                        for p in T.unroll(P):
                            for h in T.unroll(2):
                                acc[r, p, h, T.ramp(0, 1, lanes)] = T.if_then_else(
                                    k == 0, zeros(),
                                    tiles.vload([o % tiles.shape[0], r, p, h, 0], wide))
                    for j in T.serial(indptr[o * nk + k], indptr[o * nk + k + 1]):
                        pair_step(acc, xt, indices, data, task, j)
                    if k == nk - 1:
                        store_output(out, acc, task, o)
                    else:
                        for r in T.unroll(R):
                            for p in T.unroll(P):
                                for h in T.unroll(2):
                                    tiles[o % tiles.shape[0], r, p, h, T.ramp(0, 1, lanes)] = \
                                        acc.vload([r, p, h, 0], wide)

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
