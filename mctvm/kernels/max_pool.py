"""Max pooling over NCHW float32 for CPUs, as a TIR kernel vectorised along output rows.

TVM's legalised max_pool2d reads each window value with the padding's condition and, along a
row, at the pool's stride: vectorised, a stride-2 read is a gather. ResNet-18's 3x3 stride-2
pool over 64x112x112 ran in 195-211 us in the model at batch 1 (a ReLU over the same tensor:
35 us), and 89-92 us with this kernel (same runs, alternating; the VM was slow then). Here
each output row is split into an interior, whose windows stay inside the input row, and the
columns at its ends. The interior runs LANES outputs at a time: for each window offset (kh,
kw) it loads stride x LANES contiguous values and keeps every stride-th (a shuffle), so all
loads are plain vector loads. Window rows outside the input are skipped, as are the end
columns' values outside it: the same max as over -inf padding (TVM pads with the lowest
float32, the start value here too). One task per channel plane, in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MaxPool", "max_pool2d_prim_func"]

# outputs computed side by side in the interior of a row (one AVX-512 register of float32)
LANES = 16


@dataclass(frozen=True)
class MaxPool:
    """A max pool over NCHW float32 `shape`: window `size`, `stride`, `padding` (top, left,
    bottom, right), no dilation, output extents rounded down."""

    shape: tuple[int, int, int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.shape
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.size, self.stride, self.padding
        return (n, c, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1)

    def interior(self) -> tuple[int, int]:
        """(first, stop): the output columns of a row computed LANES at a time, whose loads (a
        chunk loads stride x LANES values per window offset) lie inside the input row; (0, 0)
        when there are fewer than LANES of them."""
        w, kw, sw, pl = self.shape[3], self.size[1], self.stride[1], self.padding[1]
        first = -(-pl // sw)  # the first column whose windows start inside the row
        # a chunk at column o loads up to (o + LANES) * sw - 1 + (kw - 1) - pl <= w - 1
        stop = min(self.output_shape[3], (w + pl - kw + 1) // sw)
        return (first, stop) if stop - first >= LANES else (0, 0)


def max_pool2d_prim_func(pool: MaxPool, name: str | None = None):
    """PrimFunc(x, y) computing y = max_pool2d(x) for `pool` (destination-passing style, as
    R.call_tir expects); private unless `name` is given."""
    from tvm import tirx
    from tvm.script import tirx as T

    n, c, h, w = pool.shape
    _, _, oh_n, ow_n = pool.output_shape
    (kh_n, kw_n), (sh, sw), (pt, pl, _, _) = pool.size, pool.stride, pool.padding
    first, stop = pool.interior()
    chunks = -(-(stop - first) // LANES)  # the last one overlaps the one before
    ends = ow_n - (stop - first)  # end columns, one at a time
    lowest = tirx.min_value("float32")

    def every_stride(wide):
        # every sw-th of the values loaded: the LANES window values
        if sw == 1:
            return wide
        return tirx.Shuffle([wide], [tirx.IntImm("int32", sw * i) for i in range(LANES)])

    @T.prim_func(s_tir=True)
    def max_pool2d(x: T.Buffer((n, c, h, w), "float32"),
                   y: T.Buffer((n, c, oh_n, ow_n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):  # Relax reads a PrimFunc whose body is a block
            for plane in T.parallel(n * c):
                for oh in T.serial(oh_n):
                    for q in T.serial(chunks):
                        o = T.min(first + q * LANES, stop - LANES)
                        acc = T.alloc_buffer((LANES,), "float32", scope="local")
                        acc[T.Ramp(0, 1, LANES)] = T.Broadcast(lowest, LANES)
                        for kh in T.unroll(kh_n):
                            if 0 <= oh * sh + kh - pt and oh * sh + kh - pt < h:
                                for kw in T.unroll(kw_n):
                                    acc[T.Ramp(0, 1, LANES)] = T.max(
                                        acc[T.Ramp(0, 1, LANES)],
                                        every_stride(x[plane // c, plane % c, oh * sh + kh - pt,
                                                       T.Ramp(o * sw + kw - pl, 1, sw * LANES)]))
                        y[plane // c, plane % c, oh, T.Ramp(o, 1, LANES)] = \
                            acc[T.Ramp(0, 1, LANES)]
                    for e in T.serial(ends):
                        ow = T.if_then_else(e < first, e, e + stop - first)
                        best = T.alloc_buffer((1,), "float32", scope="local")
                        best[0] = lowest
                        for kh in T.serial(kh_n):
                            for kw in T.serial(kw_n):
                                if 0 <= oh * sh + kh - pt and oh * sh + kh - pt < h and \
                                        0 <= ow * sw + kw - pl and ow * sw + kw - pl < w:
                                    best[0] = T.max(best[0], x[plane // c, plane % c,
                                                               oh * sh + kh - pt,
                                                               ow * sw + kw - pl])
                        y[plane // c, plane % c, oh, ow] = best[0]

    if name is None:
        return max_pool2d.without_attr("global_symbol")
    return max_pool2d.with_attr("global_symbol", name)
