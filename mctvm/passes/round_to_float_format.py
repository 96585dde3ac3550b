"""RoundToFloatFormat: quantized floating point (MCDA appendix A.2) for GEMM/conv operands.

Constant weights are rounded at compile time; each GEMM/conv input is rounded at run time by
an element-wise kernel (fusable), stochastically or to nearest-even.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..kernels.float_format import round_np, round_te
from .layers import gemm_kind
from .signature import SEED_PARAM, find_or_make, with_params

WEIGHT_STREAM_BASE = 1 << 24
INPUT_STREAM_BASE = 1 << 25


@relax.expr_functor.mutator
class _Rounder(relax.PyExprMutator):
    def __init__(self, mod, weights, activations, stochastic, seed):
        super().__init__(mod)
        self.weights, self.activations = weights, activations
        self.stochastic, self.seed = stochastic, seed
        self.index = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if gemm_kind(call) is None:
            return call
        index = self.index
        self.index += 1
        x, w = call.args[0], call.args[1]
        if self.weights is not None:
            w = relax.const(round_np(w.value.numpy(), *self.weights, self.stochastic,
                                     seed=0, stream=WEIGHT_STREAM_BASE + index))
        if self.activations is not None:
            x = self.builder_.emit(self.builder_.call_te(
                round_te, x, self.seed, *self.activations, self.stochastic,
                INPUT_STREAM_BASE + index, primfunc_name_hint="round_to_format"))
        return relax.Call(call.op, [x, w] + list(call.args[2:]), call.attrs)


@tvm.transform.module_pass(opt_level=0, name="mctvm.RoundToFloatFormat")
class RoundToFloatFormat:
    """weights/activations: (exponent bits, mantissa bits) or None; rounding: 'stochastic' or
    'nearest'. Stochastic rounding of activations adds the `mctvm_seed` input."""

    def __init__(self, weights=None, activations=None, rounding="stochastic"):
        self.weights = tuple(weights) if weights else None
        self.activations = tuple(activations) if activations else None
        self.stochastic = rounding == "stochastic"

    def transform_module(self, mod, _ctx):
        main = mod["main"]
        needs_seed = self.activations is not None and self.stochastic
        seed, is_new = find_or_make(main, SEED_PARAM) if needs_seed else (None, False)
        rounder = _Rounder(mod, self.weights, self.activations, self.stochastic, seed)
        func = rounder.visit_expr(main)
        if is_new:
            func = with_params(func, [seed], func.body)
        rounder.builder_.update_func(mod.get_global_var("main"), func)
        return rounder.builder_.get()
