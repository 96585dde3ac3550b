"""InsertActivationSampling: sample each quantized GEMM/conv's input into integer counts at run
time, run the GEMM in integers with int32 accumulation, and rescale once to float.

activation_dtype="uint8" gives uint8 counts to the layers whose input is provably
non-negative (non_negative.py) and int8 counts to the others; "auto" (the default) gives
uint8 counts to those layers up to K_activations = AUTO_UINT8_MAX_K (unless the sparse
kernels are forced) and int16 to the rest.
uint8 counts meet int8 weights as they are (u8 x s8: vpdpbusd on CPUs with VNNI).

A max pool (NCHW, no padding or dilation) whose output only feeds the sampling, directly or
through reshapes, is fused into the sampling kernel: the kernel reads the pool's input and
the pool's own kernel, and its output tensor, are gone (DeadCodeElimination)."""

from __future__ import annotations

import collections

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..kernels.activation_sampling import MaxPool2d, sampling_prim_func
from ..mcq_options import AUTO_UINT8_MAX_K
from .layers import gemm_kind
from .non_negative import non_negative
from .signature import SEED_PARAM, find_or_make, with_params
from .plan_mcq_layers import read_layers, write_layers

STATS_FIELDS = ("nonzero", "max_count", "saturated")


@relax.expr_functor.mutator
class _Sampler(relax.PyExprMutator):
    def __init__(self, mod, layers, options, seed, device, uses):
        super().__init__(mod)
        self.layers, self.options, self.seed, self.device = layers, options, seed, device
        self.uses = uses  # how often each var of main is used
        self.index = 0
        self.stats = []  # each sampled layer's stats var, in layer order

    def visit_call_(self, call):
        call = super().visit_call_(call)
        kind = gemm_kind(call, self.lookup_binding)
        if kind is None:
            return call
        layer = self.layers[self.index]
        self.index += 1
        if layer["K_activations"] is None:
            return call
        x = call.args[0]
        shape = [int(d) for d in x.ty.shape]
        dtype = _count_dtype(self.options, layer["K_activations"],
                             non_negative(x, self.lookup_binding))
        n = int(np.prod(shape[1:]))
        layer.update({"input_shape": shape, "N_activations": int(np.floor(layer["K_activations"] * n + 0.5)),
                      "activation_dtype": dtype})
        source, pool = self._pooled_source(x)
        kernel = sampling_prim_func(tuple(shape), layer["K_activations"], layer["index"], dtype,
                                    device=self.device, pool=pool)
        gvar = self.builder_.add_func(kernel, f"mcq_sample_{layer['index']}")
        out_types = [relax.TensorType(shape, dtype), relax.TensorType([shape[0]], "float32"),
                     relax.TensorType([shape[0], len(STATS_FIELDS)], "int32")]
        sampled = self.builder_.emit(relax.call_tir(gvar, [source, self.seed],
                                                    out_ty=out_types))
        counts = self.builder_.emit(relax.TupleGetItem(sampled, 0))
        scale = self.builder_.emit(relax.TupleGetItem(sampled, 1))
        stats = self.builder_.emit_output(relax.TupleGetItem(sampled, 2))
        self.stats.append(stats)

        weight = call.args[1]
        bound = self.lookup_binding(weight) if isinstance(weight, relax.Var) else None
        if isinstance(bound, relax.Call) and isinstance(bound.args[0], GenericConst):
            # Weights are counts too: integer GEMM, int32 accumulation.
            wq = bound.args[0].value.numpy()
            if (dtype, wq.dtype.name) == ("uint8", "int8"):  # u8 x s8 as they are
                lhs, wide = counts, wq.dtype
            else:  # both in the wider type (uint8 x int16 -> int16)
                wide = np.promote_types(wq.dtype, dtype)
                lhs = counts if wide == np.dtype(dtype) else self.builder_.emit(
                    relax.op.astype(counts, wide.name))
            acc = self.builder_.emit(_gemm(kind, call, lhs, relax.const(wq.astype(wide)), "int32"))
            acc = self.builder_.emit(relax.op.astype(acc, "float32"))
        else:  # float weights: a float GEMM over integer-valued activations
            as_float = self.builder_.emit(relax.op.astype(counts, str(weight.ty.dtype)))
            acc = self.builder_.emit(_gemm(kind, call, as_float, weight, str(weight.ty.dtype)))
        rank = len(acc.ty.shape)
        per_sample = self.builder_.emit(relax.op.reshape(scale, [shape[0]] + [1] * (rank - 1)))
        return relax.op.multiply(acc, per_sample)

    def _pooled_source(self, x):
        """(the pool's input, MaxPool2d) when x is a fusable max pool's output, maybe
        reshaped, that nothing else uses; else (x, None)."""
        value = x
        while isinstance(value, relax.Var) and self.uses[value] == 1:
            bound = self.lookup_binding(value)
            if not isinstance(bound, relax.Call) or not isinstance(bound.op, tvm.ir.Op):
                break
            if bound.op.name in ("relax.reshape", "relax.flatten"):
                value = bound.args[0]
                continue
            pool = _max_pool(bound) if bound.op.name == "relax.nn.max_pool2d" else None
            return (bound.args[0], pool) if pool else (x, None)
        return x, None


def _max_pool(call) -> MaxPool2d | None:
    """The MaxPool2d of a relax max_pool2d call the sampling kernel can fuse: NCHW float32 of
    static shape, no padding or dilation, and no partial windows."""
    a, data = call.attrs, call.args[0]
    shape = getattr(data.ty, "shape", None)
    shape = list(shape) if shape is not None else []
    if (a.layout, a.out_layout) != ("NCHW", "NCHW") or data.ty.dtype != "float32" \
            or len(shape) != 4 or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    if any(int(p) for p in a.padding) or any(int(d) != 1 for d in a.dilation):
        return None
    size, stride = tuple(int(k) for k in a.pool_size), tuple(int(s) for s in a.strides)
    hw = [int(d) for d in shape[2:]]
    if a.ceil_mode and any((i - k) % s for i, k, s in zip(hw, size, stride)):
        return None
    return MaxPool2d(int(shape[1]), hw[0], hw[1], size, stride)


@relax.expr_functor.visitor
class _UseCounter(relax.PyExprVisitor):
    """How often each var is used (definitions not counted)."""

    def __init__(self):
        super().__init__()
        self.uses = collections.Counter()

    def visit_var_(self, var):
        self.uses[var] += 1

    def visit_dataflow_var_(self, var):
        self.uses[var] += 1


def _count_dtype(options, K: float, unsigned: bool) -> str:
    """The activation counts' type for a layer, from the options, its K and whether its input
    is provably non-negative. "auto" leaves uint8 out where the sparse kernels are forced:
    they take signed 16-bit counts."""
    option = options.activation_dtype
    if option == "auto":
        fits = unsigned and K <= AUTO_UINT8_MAX_K and options.sparse not in ("csr", "bsr")
        return "uint8" if fits else "int16"
    if option == "uint8" and not unsigned:
        return "int8"  # possibly negative input: signed counts
    return option


def _gemm(kind, call, lhs, rhs, out_dtype):
    if kind == "matmul":
        return relax.op.matmul(lhs, rhs, out_dtype=out_dtype)
    a = call.attrs
    return relax.op.nn.conv2d(lhs, rhs, strides=a.strides, padding=a.padding, dilation=a.dilation,
                              groups=a.groups, data_layout=a.data_layout,
                              kernel_layout=a.kernel_layout, out_layout=a.out_layout,
                              out_dtype=out_dtype)


@tvm.transform.module_pass(opt_level=0, name="mctvm.InsertActivationSampling")
class InsertActivationSampling:
    """Add the `mctvm_seed` input, sample planned layers' inputs, return their stats too.

    main(inputs..., mctvm_seed) returns (outputs..., stats), stats int32 (sampled layers,
    batch, 3): per layer and sample, nonzero counts, max |count|, saturated counts (one
    tensor: the caller converts one array per call, not one per layer).
    """

    def __init__(self, options, device="cpu"):
        self.options, self.device = options, device

    def transform_module(self, mod, _ctx):
        layers = read_layers(mod)
        if not any(layer["K_activations"] for layer in layers):
            return mod
        seed, is_new = find_or_make(mod["main"], SEED_PARAM)
        counter = _UseCounter()
        counter.visit_expr(mod["main"])
        sampler = _Sampler(mod, layers, self.options, seed, self.device, counter.uses)
        func = sampler.visit_expr(mod["main"])
        body = func.body
        outputs = list(body.body.fields) if isinstance(body.body, relax.Tuple) else [body.body]
        stats = relax.op.stack(sampler.stats, axis=0)
        new_body = sampler.builder_.normalize(relax.SeqExpr(body.blocks, relax.Tuple(
            outputs + [stats])))
        new_func = with_params(func, [seed] if is_new else [], new_body)
        sampler.builder_.update_func(mod.get_global_var("main"), new_func)
        return write_layers(sampler.builder_.get(), layers)
