"""PadQuadReductions: pad the reduction axis of uint8 x int8 convs and matmuls with zeros to
a multiple of 4, so that the CPU schedules sum their products in quads (vpdpbusd; see
targets/cpu_schedules.py). Zeros add nothing to the sums: the results are unchanged.

Runs where the current target has the quad instructions (`cpu_schedules.has_quads`), and
leaves every other program alone. Constant weights are padded at compile time; the
activations by an `R.nn.pad` on the channel (conv) or k (matmul) axis.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

QUAD = 4


def _reduction_axes(call) -> tuple | None:
    """(A's axis, B's axis) summed over by a uint8 x int8 -> int32 conv2d/matmul, else None."""
    if not isinstance(call.op, tvm.ir.Op) or len(call.args) != 2 \
            or call.op.name not in ("relax.nn.conv2d", "relax.matmul"):
        return None
    lhs, rhs = call.args
    if not all(isinstance(x.ty, relax.TensorType) and x.ty.ndim >= 2 for x in (lhs, rhs)):
        return None
    if (str(lhs.ty.dtype), str(rhs.ty.dtype), str(call.attrs.out_dtype)) != \
            ("uint8", "int8", "int32"):
        return None
    if call.op.name == "relax.nn.conv2d":
        a = call.attrs
        if a.groups != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW":
            return None
        return 1, 1
    return lhs.ty.ndim - 1, rhs.ty.ndim - 2  # matmul


def _pad_width(ndim: int, axis: int, pad: int) -> list:
    width = [0] * (2 * ndim)
    width[2 * axis + 1] = pad
    return width


@relax.expr_functor.mutator
class _Padder(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        axes = _reduction_axes(call)
        if axes is None:
            return call
        lhs, rhs = call.args
        extent = lhs.ty.shape[axes[0]]
        if not isinstance(extent, tvm.tirx.IntImm) or int(extent) % QUAD == 0:
            return call
        pad = -int(extent) % QUAD
        lhs = self.builder_.emit(relax.op.nn.pad(lhs, _pad_width(lhs.ty.ndim, axes[0], pad)))
        if isinstance(rhs, GenericConst):
            w = rhs.value.numpy()
            widths = [(0, pad if i == axes[1] else 0) for i in range(w.ndim)]
            rhs = relax.const(np.pad(w, widths))
        else:
            rhs = self.builder_.emit(relax.op.nn.pad(rhs, _pad_width(rhs.ty.ndim, axes[1], pad)))
        return relax.Call(call.op, [lhs, rhs], call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="mctvm.PadQuadReductions")
class PadQuadReductions:
    """Pad uint8 x int8 reductions to a multiple of 4 where the target has vpdpbusd."""

    def transform_module(self, mod, _ctx):
        from ..targets import cpu_schedules

        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "llvm" or not cpu_schedules.has_quads(target):
            return mod
        padder = _Padder(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                padder.builder_.update_func(gvar, padder.visit_expr(func))
        return padder.builder_.get()
