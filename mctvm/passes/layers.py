"""The GEMMs and convolutions of a Relax module that have a constant weight: MCQ's layers."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst

GEMM_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}


def gemm_kind(call, lookup=None) -> str | None:
    """'conv2d' or 'matmul' when `call` is one with a constant weight (float, or an integer
    constant cast to float by FoldMCQWeights), else None. `lookup` resolves bound vars."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    kind = GEMM_OPS.get(call.op.name)
    if kind is None or len(call.args) < 2:
        return None
    weight = call.args[1]
    if isinstance(weight, relax.Var) and lookup is not None:
        bound = lookup(weight)
        weight = weight if bound is None else bound
    if isinstance(weight, GenericConst):
        return kind if "float" in str(weight.ty.dtype) else None
    if isinstance(weight, relax.Call) and weight.op.name == "relax.astype":
        return kind if isinstance(weight.args[0], GenericConst) else None
    return None


def weight_axis(kind: str) -> int:
    """The output-channel axis of the weight: OIHW for conv2d, (in, out) for x @ W."""
    return 0 if kind == "conv2d" else -1


@relax.expr_functor.visitor
class _SiteCollector(relax.PyExprVisitor):
    def __init__(self):
        super().__init__()
        self.sites = []

    def visit_call_(self, call):
        kind = gemm_kind(call)
        if kind is not None:
            self.sites.append((kind, [int(d) for d in call.args[1].ty.shape]))
        super().visit_call_(call)


def gemm_sites(mod) -> list:
    """(kind, weight shape) of each GEMM/conv with a constant weight in `main`, in order."""
    collector = _SiteCollector()
    collector.visit_expr(mod["main"])
    return collector.sites


def plan_layers(mod, onnx_gemms, options) -> list:
    """Name each site after its ONNX node (when the import kept their order) and apply the
    options: the list of LayerPlan that the MCQ passes follow."""
    sites = gemm_sites(mod)
    kinds = [kind for kind, _ in sites]
    if [kind for _, kind in onnx_gemms] == kinds:
        names = [name for name, _ in onnx_gemms]
    else:  # the importer merged or split nodes: name the layers by position
        names = [f"{kind}_{index}" for index, kind in enumerate(kinds)]
    return options.plan(list(zip(names, kinds)))
