"""Default CUDA schedules for integer GEMMs (int8/int16 x int8/int16 -> int32).

dlight's Matmul sends int8 GEMMs to a tensor-core (WMMA) path that crashes for some shapes
and never uses ``__dp4a``. `IntegerGemm` is a dlight-style rule that targets/cuda.py puts
ahead of dlight's: it recognises one multiply-accumulate reduction block with integer
operands and an int32 accumulator by structure (matmul, dense, batch matmul, conv2d NCHW
through dlight's ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` normalisation: for conv2d, A is
the im2col of the padded input and K = (in channels, kh, kw)), pads I, J, K to the tile
sizes and tiles it to blocks and threads, with A and B tiles in shared memory (rows padded
against bank conflicts) and up to 4 x 4 accumulators in registers per thread. With int8 operands the innermost 4 elements of K
are one ``__dp4a`` (a tensor intrinsic registered here); int16 operands keep a plain
multiply-add. The epilogue (cast to float, per-sample rescale, bias, activation) is inlined
into the write-back of the accumulators. Anything else returns None (the next rule's turn).
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    IterKind,
    IterTrait,
    auto_inline_consumer_chain,
    auto_inline_producers,
    get_reduction_blocks,
    make_iter_fusion_index_map,
)
from tvm.tirx.analysis import undefined_vars

log = logging.getLogger("mctvm.schedule")

DP4A_INTRIN = "mctvm_dp4a_s8s8s32"
_INT_OPERANDS = ("int8", "int16")
# Threads per block (y over I, x over J) and outputs per thread.
_THREADS_I, _THREADS_J = 8, 16
_MICRO_I, _MICRO_J = 4, 4
# K elements per shared-memory tile (a multiple of 4: whole dp4a groups).
_TILE_K = 16
_UNROLL = 256
# Shared tile row stride in elements: _TILE_K plus 4 (int8: one 4-byte bank, keeping dp4a's
# loads aligned). The 16 threads along J read rows _MICRO_J apart: 2-way bank conflicts with
# it, 8-way without.
_ROW_STRIDE = _TILE_K + 4


def rules() -> list:
    """The rules, in the order ApplySchedules should try them (ahead of dlight's)."""
    return [IntegerGemm()]


def _register_dp4a() -> str:
    """C[0] += sum_k int32(A[k]) * int32(B[k]) for 4 int8 in shared memory, as one __dp4a.

    Registered here: importing tvm.s_tir.tensor_intrin (which has one) takes ~30 s."""
    from tvm.script import tirx as T

    if s_tir.TensorIntrin.get(DP4A_INTRIN, allow_missing=True) is not None:
        return DP4A_INTRIN

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] = T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"),
                                      C[0], dtype="int32")

    s_tir.TensorIntrin.register(DP4A_INTRIN, desc, impl)
    return DP4A_INTRIN


def _index_maps(block):
    """Index maps to ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` for the block, its iterators
    and A, B, C, or None: dlight's get_index_map, except that iterators of extent 1 keep
    their role where they have one (dlight drops them all, and then finds no I in a batch-1
    dense)."""
    if len(block.reads) != 2 or len(block.writes) != 1:
        return None
    axes = []
    for region in (block.reads[0].region, block.reads[1].region, block.writes[0].region):
        if not all(_is_one(r.extent) for r in region):
            return None  # not one element per iteration
        axes.append(set().union(*(undefined_vars(r.min) for r in region)))
    a, b, c = axes
    traits = {}
    for iv in block.iter_vars:
        v, roles = iv.var, (iv.var in a, iv.var in b, iv.var in c)
        if iv.iter_type == tirx.IterVar.DataPar:
            kind = {(True, True, True): IterKind.kIter_S, (True, False, True): IterKind.kIter_I,
                    (False, True, True): IterKind.kIter_J}.get(roles)
        else:
            kind = IterKind.kIter_K if roles == (True, True, False) else None
        if kind is None and _is_one(iv.dom.extent):
            kind = IterKind.kIter_T  # e.g. a 1x1 kernel's window, dropped by reindex
        if kind is None:
            return None
        traits[v] = IterTrait(kind, iv.dom.extent)
    if {IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K} - {t.kind for t in traits.values()}:
        return None
    order = [iv.var for iv in block.iter_vars]

    def fusion(used, kinds):
        return make_iter_fusion_index_map([traits[v] for v in order if v in used], kinds)

    s_, i, j, k = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K
    return (fusion(set(order), [s_, i, j, k]), fusion(a, [s_, i, k]), fusion(b, [s_, j, k]),
            fusion(c, [s_, i, j]))


def _is_one(extent) -> bool:
    return isinstance(extent, tirx.IntImm) and extent.value == 1


def _pow2_at_most(n: int, limit: int) -> int:
    p = 1
    while p * 2 <= min(n, limit):
        p *= 2
    return p


def _threads_and_micro(extent: int, threads: int, micro: int) -> tuple:
    """Threads and outputs per thread along an axis: at most `threads` x `micro`, fewer
    (powers of two) where the extent is smaller."""
    threads = _pow2_at_most(extent, threads)
    return threads, _pow2_at_most(max(1, extent // threads), micro)


def _static_extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class IntegerGemm(ScheduleRule):
    """Tiled integer GEMM/conv2d on CUDA; __dp4a for int8 x int8 -> int32."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        try:
            return self._apply(func)
        except Exception as err:  # pylint: disable=broad-except
            # ScheduleError and friends: a kernel shape this rule doesn't handle.
            log.debug("IntegerGemm did not apply: %s", str(err).splitlines()[0])
            return None

    # pylint: disable-next=too-many-locals
    def _apply(self, func):
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = get_reduction_blocks(sch, blocks)
        if reductions is None:
            return None
        main = reductions[0]
        stmt = sch.get(main)
        if len(stmt.reads) != 2 or str(stmt.writes[0].source.dtype) != "int32":
            return None
        operands = [str(r.source.dtype) for r in stmt.reads]
        if any(d not in _INT_OPERANDS for d in operands) or _index_maps(stmt) is None:
            return None
        dp4a = operands == ["int8", "int8"]

        # C[S, I, J] += A[S, I, K] * B[S, J, K] (dlight's normalisation)
        reindex_a = sch.reindex(main, ("read", 0))
        reindex_b = sch.reindex(main, ("read", 1))
        reindex_c = sch.reindex(main, ("write", 0))
        block_map, a_map, b_map, c_map = _index_maps(sch.get(main))
        sch.transform_layout(reindex_a, ("write", 0), a_map)
        sch.transform_layout(reindex_b, ("write", 0), b_map)
        sch.transform_layout(reindex_c, ("read", 0), c_map)
        sch.transform_block_layout(main, block_map)

        _, i, j, _ = sch.get_loops(main)
        extents = _static_extent(sch, i), _static_extent(sch, j)
        if None in extents:
            return None
        # small I or J (batch-1 dense, few channels): fewer threads and outputs per thread
        (threads_i, micro_i), (threads_j, micro_j) = (
            _threads_and_micro(extents[0], _THREADS_I, _MICRO_I),
            _threads_and_micro(extents[1], _THREADS_J, _MICRO_J))
        sch.pad_einsum(main, [1, threads_i * micro_i, threads_j * micro_j, _TILE_K])
        batch, i, j, k = sch.get_loops(main)
        bi, ti, ii = sch.split(i, [None, threads_i, micro_i])
        bj, tj, jj = sch.split(j, [None, threads_j, micro_j])
        ko, ki, k4 = sch.split(k, [None, _TILE_K // 4, 4])
        sch.reorder(bi, bj, ti, tj, ko, ki, ii, jj, k4)
        bi = sch.fuse(batch, bi)
        sch.bind(bi, "blockIdx.y")
        sch.bind(bj, "blockIdx.x")
        sch.bind(ti, "threadIdx.y")
        sch.bind(tj, "threadIdx.x")
        sch.annotate(tj, ann_key="pragma_auto_unroll_max_step", ann_val=_UNROLL)
        sch.annotate(tj, ann_key="pragma_unroll_explicit", ann_val=1)

        write_back = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(write_back, tj, preserve_unit_loops=True)

        for index in (0, 1):  # A and B tiles to shared memory, one element per thread
            fetch = sch.cache_read(main, index, "shared")
            depth = len(sch.get_loops(fetch))
            sch.compute_at(fetch, ko, preserve_unit_loops=True)
            fused = sch.fuse(*sch.get_loops(fetch)[-depth:])
            _, f_ti, f_tj = sch.split(fused, [None, threads_i, threads_j])
            sch.bind(f_ti, "threadIdx.y")
            sch.bind(f_tj, "threadIdx.x")
            sch.storage_align(fetch, 0, axis=1, factor=2 * _ROW_STRIDE, offset=_ROW_STRIDE)
            auto_inline_producers(sch, fetch)  # reindex (im2col), padding, casts
        auto_inline_consumer_chain(sch, write_back)  # cast, rescale, bias, activation

        sch.decompose_reduction(main, ko)
        if dp4a:
            sch.tensorize(k4, _register_dp4a())
        return sch
