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

# Weight sparsity (fraction of zero values, unstructured) from which on the sparse kernel ran
# faster than the dense integer kernel (the default CPU schedule), per (op, format, batch 1 or
# 64); the highest over the layers measured. Batches (matmul: rows) under 16 take the batch-1
# crossovers: the kernels put 16 samples (rows) in the vector lanes from there on. Measured by
# bench/bench_sparse.py (int16 activations; the built-in VGG-7's 1152->256 dense layer and
# its 128->128 7x7 and 32->32 28x28 stride-1 convs) on an AMD EPYC (LLVM: znver5, AVX-512 +
# VNNI), 2 cores, TVM 0.27, 2026-12-03. None: the sparse kernel never won there. Other CPUs
# will differ; force a format with sparse="csr" / "bsr".
CROSSOVER = {
    ("matmul", "csr", 1): None,
    ("matmul", "bsr", 1): 0.99,
    ("matmul", "csr", 64): 0.6,
    ("matmul", "bsr", 64): 0.8,
    ("conv2d", "csr", 1): 0.8,
    ("conv2d", "bsr", 1): 0.9,
    ("conv2d", "csr", 64): 0.7,
    ("conv2d", "bsr", 64): 0.7,
}


def kernel_options(target) -> dict:
    """The sparse kernels' device, vector width (int32 lanes) and pair path for `target`."""
    if target.kind.name == "cuda":
        return {"device": "cuda", "lanes": 1, "pairs": False}
    from ..targets.cpu_schedules import _x86_features, vector_bits

    bits = vector_bits(target)
    # pmaddwd on 512-bit vectors needs AVX-512BW; on 256-bit ones AVX2
    pairs = _x86_features(target, "avx512bw" if bits == 512 else "avx2") and bits in (256, 512)
    return {"device": "cpu", "lanes": max(4, bits // 32), "pairs": bool(pairs)}


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
    if not str(lhs.ty.dtype).startswith(("int", "uint")) or lhs.ty.shape is None or not all(
            isinstance(d, tvm.tirx.IntImm) for d in lhs.ty.shape.values):
        return None  # the kernels are built for static shapes
    if kind == "matmul":
        return kind if weight.ty.ndim == 2 and lhs.ty.ndim >= 2 else None
    a = call.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    return kind if int(a.groups) == 1 and layouts == ("NCHW", "OIHW", "NCHW") else None


def choose(kind: str, weight: np.ndarray, batch: int, mode: str, measured: bool = True) -> str:
    """'dense', 'csr' or 'bsr' for this weight (batch: a matmul's rows): `mode` unless "auto";
    then the format whose crossover the weight's sparsity (fraction of zero values) passes by
    the most, dense when none is passed or the layer is not of the measured kind (`measured`:
    stride-1 conv)."""
    if mode != "auto":
        return mode
    sparsity = float(np.mean(weight == 0)) if weight.size else 1.0
    best, margin = "dense", 0.0
    for fmt in sparse_gemm.FORMATS:
        crossover = CROSSOVER.get((kind, fmt, 64 if batch >= 16 else 1))
        if crossover is not None and measured and sparsity - crossover > margin:
            best, margin = fmt, sparsity - crossover
    return best


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, layers, mode, options):
        super().__init__(mod)
        self.layers = iter(layers)
        self.mode, self.options = mode, options

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
        mode = "dense" if self.mode == "auto" and self.options["device"] != "cpu" else self.mode
        if str(lhs.ty.dtype) == "uint8":
            # the sparse kernels take signed counts: uint8 ones stay dense under "auto" (u8 x
            # s8 quads), or are widened to int16 for a sparse kernel asked for by name
            if mode == "auto":
                layer["gemm_kernel"] = "dense"
                return call
            lhs = self.builder_.emit(relax.op.astype(lhs, "int16"))
            weight = weight.astype(np.int16)
        measured = kind == "matmul" or [int(s) for s in call.attrs.strides] == [1, 1]
        batch = int(np.prod(shape[:-1])) if kind == "matmul" else shape[0]
        layer["gemm_kernel"] = choose(kind, weight, batch, mode, measured)
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
