"""LowerSparseGEMM: run each integer GEMM/conv with a constant count weight on a sparse kernel
(kernels/sparse_gemm.py) when its weight is sparse enough, else leave the dense op."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..kernels import sparse_gemm
from .plan_mcq_layers import read_layers, write_layers

MODES = ("auto", "dense") + sparse_gemm.FORMATS

# Weight sparsity (CSR: zero values; BSR: zero blocks) above which the sparse kernel ran
# faster than the dense integer kernel (the default CPU schedule), per (op, format, batch 1 or
# more). Measured by bench/bench_sparse.py (int16 activations, the built-in VGG-7's largest
# layers) on an Intel Xeon (rocketlake, AVX-512 + VNNI), 2 cores, TVM 0.27. None: the sparse
# kernel never won there. Other CPUs will differ; force a format with sparse="csr"/"bsr".
CROSSOVER = {
    ("matmul", "csr", 1): None,
    ("matmul", "bsr", 1): None,
    ("matmul", "csr", 64): None,
    ("matmul", "bsr", 64): None,
    ("conv2d", "csr", 1): None,
    ("conv2d", "bsr", 1): None,
    ("conv2d", "csr", 64): None,
    ("conv2d", "bsr", 64): None,
}


def kernel_options(target) -> dict:
    """The sparse kernels' device, vector width (int32 lanes) and pair path for `target`."""
    if target.kind.name == "cuda":
        return {"device": "cuda", "lanes": 1, "pairs": False}
    from ..targets.cpu_schedules import _is_x86, vector_bits

    bits = vector_bits(target)
    return {"device": "cpu", "lanes": max(4, bits // 32),
            "pairs": _is_x86(target) and bits in (256, 512)}


def integer_gemm(call) -> str | None:
    """'matmul' or 'conv2d' for an int32-accumulating GEMM/conv of integer operands with a
    constant weight that the sparse kernels handle (conv: NCHW/OIHW, groups 1), else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    kind = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d"}.get(call.op.name)
    if kind is None or str(call.attrs.out_dtype) != "int32":
        return None
    lhs, weight = call.args[0], call.args[1]
    if not isinstance(weight, GenericConst) or not str(weight.ty.dtype).startswith("int"):
        return None
    if not str(lhs.ty.dtype).startswith("int") or lhs.ty.shape is None:
        return None
    if kind == "matmul":
        return kind if weight.ty.ndim == 2 and lhs.ty.ndim >= 2 else None
    a = call.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    return kind if int(a.groups) == 1 and layouts == ("NCHW", "OIHW", "NCHW") else None


def choose(kind: str, weight: np.ndarray, batch: int, mode: str, lanes: int) -> str:
    """'dense', 'csr' or 'bsr' for this weight: `mode` unless "auto", then the format whose
    sparsity lies furthest past its CROSSOVER (dense when none does)."""
    if mode != "auto":
        return mode
    best, margin = "dense", 0.0
    for fmt in sparse_gemm.FORMATS:
        crossover = CROSSOVER.get((kind, fmt, 1 if batch == 1 else 64))
        if crossover is None:
            continue
        past = format_sparsity(kind, weight, fmt, lanes) - crossover
        if past > margin:
            best, margin = fmt, past
    return best


def format_sparsity(kind: str, weight: np.ndarray, fmt: str, lanes: int) -> float:
    """The fraction of the weight a kernel skips: zero values (CSR) or zero blocks (BSR)."""
    rows = weight.T if kind == "matmul" else weight.reshape(weight.shape[0], -1)
    if rows.size == 0:
        return 1.0
    if fmt == "csr":
        return float(np.mean(rows == 0))
    sparse = sparse_gemm.bsr_rows(rows, lanes if kind == "matmul" else sparse_gemm.CONV_BLOCK)
    return 1.0 - sparse.nnz / ((sparse.indptr.shape[0] - 1) * rows.shape[1])


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, layers, mode, options):
        super().__init__(mod)
        self.layers = iter(layers)
        self.mode, self.options = mode, options
        self.device, self.lanes = options["device"], options["lanes"]

    def visit_call_(self, call):
        call = super().visit_call_(call)
        kind = integer_gemm(call)
        if kind is None:
            return call
        layer = next(self.layers, None)
        if layer is None or layer["op"] != kind:
            raise ValueError(f"integer {kind} does not match the next MCQ layer {layer}")
        lhs, weight = call.args[0], call.args[1].value.numpy()
        shape = [int(d) for d in lhs.ty.shape]
        mode = "dense" if self.mode == "auto" and self.device != "cpu" else self.mode
        layer["gemm_kernel"] = choose(kind, weight, shape[0], mode, self.lanes)
        if layer["gemm_kernel"] == "dense":
            return call
        return self._sparse(call, kind, lhs, shape, weight, layer)

    def _sparse(self, call, kind, lhs, shape, weight, layer):
        fmt, dtype = layer["gemm_kernel"], str(lhs.ty.dtype)
        if kind == "matmul":
            rows = int(np.prod(shape[:-1]))
            if len(shape) > 2:
                lhs = self.builder_.emit(relax.op.reshape(lhs, [rows, shape[-1]]))
            func, arrays = sparse_gemm.sparse_matmul((rows, shape[-1]), dtype, weight, fmt,
                                                     **self.options)
            out = [rows, weight.shape[1]]
        else:
            a = call.attrs
            func, arrays = sparse_gemm.sparse_conv2d(
                shape, dtype, weight, fmt, strides=[int(s) for s in a.strides],
                padding=[int(p) for p in a.padding], dilation=[int(d) for d in a.dilation],
                **self.options)
            out = [int(d) for d in call.ty.shape]
        gvar = self.builder_.add_func(func, f"mcq_{fmt}_{kind}_{layer['index']}")
        result = relax.call_tir(gvar, [lhs] + [relax.const(x) for x in arrays],
                                out_ty=relax.TensorType(out, "int32"))
        if kind == "matmul" and len(shape) > 2:
            result = relax.op.reshape(self.builder_.emit(result), shape[:-1] + [weight.shape[1]])
        return result


@tvm.transform.module_pass(opt_level=0, name="mctvm.LowerSparseGEMM")
class LowerSparseGEMM:
    """Pick dense, CSR or BSR per integer GEMM/conv (`mode` "auto" uses CROSSOVER; on CUDA,
    where nothing was measured, "auto" keeps dense) and record it as layer["gemm_kernel"]."""

    def __init__(self, mode, target):
        if mode not in MODES:
            raise ValueError(f"sparse mode must be one of {MODES}, got {mode!r}")
        self.mode, self.options = mode, kernel_options(target)

    def transform_module(self, mod, _ctx):
        layers = read_layers(mod)
        integer = [layer for layer in layers
                   if layer["K_weights"] is not None and layer["K_activations"] is not None]
        if not integer:
            return mod
        lowerer = _Lowerer(mod, integer, self.mode, self.options)
        func = lowerer.visit_expr(mod["main"])
        lowerer.builder_.update_func(mod.get_global_var("main"), func)
        return write_layers(lowerer.builder_.get(), layers)
