"""LowerMaxPool: run each NCHW float32 max_pool2d on mctvm's CPU kernel (kernels/max_pool.py),
which reads its windows with plain vector loads, instead of TVM's legalised form."""

from __future__ import annotations

import math

import tvm
from tvm import relax

from ..kernels.max_pool import MaxPool, max_pool2d_prim_func


def max_pool_of(call) -> MaxPool | None:
    """The MaxPool of a relax max_pool2d call the kernel computes exactly as TVM would:
    NCHW float32 of static shape (under 2**31 values), no dilation, and an output whose
    extents are those of windows that start inside the (padded) input (a ceil_mode that adds
    none)."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) \
            or call.op.name != "relax.nn.max_pool2d":
        return None
    a, data = call.attrs, call.args[0]
    shape, out = getattr(data.ty, "shape", None), getattr(call.ty, "shape", None)
    if (a.layout, a.out_layout) != ("NCHW", "NCHW") or data.ty.dtype != "float32" \
            or shape is None or out is None or len(shape) != 4 \
            or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape) + list(out)):
        return None
    if any(int(d) != 1 for d in a.dilation) or math.prod(int(d) for d in shape) >= 2**31:
        return None  # the kernel indexes with int32
    pool = MaxPool(tuple(int(d) for d in shape), tuple(int(k) for k in a.pool_size),
                   tuple(int(s) for s in a.strides), tuple(int(p) for p in a.padding))
    return pool if pool.output_shape == tuple(int(d) for d in out) else None


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        pool = max_pool_of(call)
        if pool is None:
            return call
        gvar = self.builder_.add_func(max_pool2d_prim_func(pool), "max_pool2d")
        return relax.call_tir(gvar, [call.args[0]],
                              out_ty=relax.TensorType(list(pool.output_shape), "float32"))


@tvm.transform.module_pass(opt_level=0, name="mctvm.LowerMaxPool")
class LowerMaxPool:
    """Every max_pool2d that `max_pool_of` accepts becomes a call of its CPU kernel."""

    def transform_module(self, mod, _ctx):
        lowerer = _Lowerer(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                lowerer.builder_.update_func(gvar, lowerer.visit_expr(func))
        return lowerer.builder_.get()
