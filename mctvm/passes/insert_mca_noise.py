"""InsertMCANoise: Monte Carlo Arithmetic around each GEMM/conv (MCDA paper, eq. 9).

mode "mca" perturbs the inputs and the output of each selected GEMM/conv, "pb" (precision
bounding) the inputs only, "rr" (random rounding) the output only; the network outputs are
perturbed too. The virtual precision t and the seed are run-time inputs of main.
"""

from __future__ import annotations

import json

import tvm
from tvm import relax

from ..kernels.inexact import inexact_te
from .layers import GEMM_OPS, gemm_kind
from .signature import SEED_PARAM, T_PARAM, find_or_make, with_params

MODES = ("mca", "pb", "rr")
# Random streams of the noise: three per site (two inputs, output), after MCQ's streams.
STREAM_BASE = 1 << 21
OUTPUT_STREAM_BASE = 1 << 22
SITES_ATTR = "mctvm.mca_sites"


def gemm_calls(mod) -> list:
    """(kind, has a constant weight) of every conv2d/matmul in main, in order."""
    kinds = []

    @relax.expr_functor.visitor
    class _Collector(relax.PyExprVisitor):
        def visit_call_(self, call):
            if isinstance(call.op, tvm.ir.Op) and call.op.name in GEMM_OPS:
                kinds.append((GEMM_OPS[call.op.name], gemm_kind(call) is not None))
            super().visit_call_(call)

    _Collector().visit_expr(mod["main"])
    return kinds


@relax.expr_functor.mutator
class _Noise(relax.PyExprMutator):
    def __init__(self, mod, selected, mode, convention, seed, t):
        super().__init__(mod)
        self.selected, self.mode, self.convention = selected, mode, convention
        self.seed, self.t = seed, t
        self.index = 0

    def inexact(self, value, stream):
        return self.builder_.call_te(inexact_te, value, self.seed, self.t, stream,
                                     self.convention, primfunc_name_hint="mca_inexact")

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in GEMM_OPS):
            return call
        index = self.index
        self.index += 1
        if index not in self.selected or "float" not in str(call.ty.dtype):
            return call
        args = list(call.args)
        if self.mode in ("mca", "pb"):
            args = [self.builder_.emit(self.inexact(arg, STREAM_BASE + 3 * index + i))
                    for i, arg in enumerate(args[:2])] + args[2:]
        result = self.builder_.emit(relax.Call(call.op, args, call.attrs))
        if self.mode in ("mca", "rr"):
            return self.inexact(result, STREAM_BASE + 3 * index + 2)
        return result


@tvm.transform.module_pass(opt_level=0, name="mctvm.InsertMCANoise")
class InsertMCANoise:
    """Add `mctvm_t` (and `mctvm_seed` unless MCQ added it) and the inexact() kernels."""

    def __init__(self, mode="mca", layers=None, convention="paper", outputs=True):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use one of {MODES}")
        self.mode, self.layers, self.convention, self.outputs = mode, layers, convention, outputs

    def transform_module(self, mod, _ctx):
        kinds = gemm_calls(mod)
        selected = set(range(len(kinds))) if self.layers is None else set(self.layers)
        main = mod["main"]
        seed, seed_is_new = find_or_make(main, SEED_PARAM)
        t, _ = find_or_make(main, T_PARAM)
        noise = _Noise(mod, selected, self.mode, self.convention, seed, t)
        func = noise.visit_expr(main)
        body = func.body
        blocks = list(body.blocks)
        outputs = list(body.body.fields) if isinstance(body.body, relax.Tuple) else [body.body]
        if self.outputs:
            outputs, blocks = self._perturb_outputs(noise, outputs, blocks, main)
        returned = outputs[0] if len(outputs) == 1 and not isinstance(body.body, relax.Tuple) \
            else relax.Tuple(outputs)
        new_body = noise.builder_.normalize(relax.SeqExpr(blocks, returned))
        new_func = with_params(func, ([seed] if seed_is_new else []) + [t], new_body)
        noise.builder_.update_func(mod.get_global_var("main"), new_func)
        sites = [{"index": i, "op": kind, "constant_weight": const, "noisy": i in selected}
                 for i, (kind, const) in enumerate(kinds)]
        return noise.builder_.get().with_attr(SITES_ATTR, json.dumps(sites))

    def _perturb_outputs(self, noise, outputs, blocks, main):
        """inexact() on the model's own outputs (not on MCQ's statistics, which are int32)."""
        count = len(main.ret_ty.fields) if isinstance(main.ret_ty, relax.TupleType) else 1
        bindings = []
        perturbed = list(outputs)
        for j, value in enumerate(outputs[:count]):
            if "float" not in str(value.ty.dtype):
                continue
            var = relax.Var(f"noisy_output_{j}", value.ty)
            gvar = noise.builder_.add_func(
                tvm.te.create_prim_func(_te_args(value, noise, OUTPUT_STREAM_BASE + j))
                .without_attr("global_symbol"),
                "mca_inexact_output")
            call = relax.call_tir(gvar, [value, noise.seed, noise.t], out_ty=value.ty)
            bindings.append(relax.VarBinding(var, call))
            perturbed[j] = var
        if bindings:
            blocks.append(relax.BindingBlock(bindings))
        return perturbed, blocks


def _te_args(value, noise, stream):
    from tvm import te

    x = te.placeholder([int(d) for d in value.ty.shape], "float32", name="x")
    seed = te.placeholder((1,), "int64", name="seed")
    t = te.placeholder((1,), "int32", name="t")
    return [x, seed, t, inexact_te(x, seed, t, stream, noise.convention)]
