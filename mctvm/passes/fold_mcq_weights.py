"""FoldMCQWeights: constant GEMM/conv weights -> signed MCQ hit counts (int8/16/32) and a scale."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import mcq
from ..kernels.random import uniform01_np
from .layers import gemm_kind, weight_axis
from .plan_mcq_layers import read_layers, write_layers

# Random streams 0.. are the activations' (one per layer); the weights' start here.
WEIGHT_STREAM_BASE = 1 << 20


def weight_xi(seed: int, index: int, channels: int | None = None):
    """The jitter of layer `index`'s weights, from the compile-time seed: one number, or
    with `channels` one per output channel (each channel-normalised CDF its own draw, so
    that the channels' sampling errors are independent; channel 0 draws the layer's)."""
    if channels is None:
        return float(uniform01_np(seed, WEIGHT_STREAM_BASE + index, 0))
    return uniform01_np(seed, WEIGHT_STREAM_BASE + index, np.arange(channels))


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    def __init__(self, mod, layers, options):
        super().__init__(mod)
        self.layers, self.options = layers, options
        self.index = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        kind = gemm_kind(call)
        if kind is None:
            return call
        layer = self.layers[self.index]
        self.index += 1
        if layer["K_weights"] is None:
            return call
        weight = call.args[1].value.numpy()
        axis = weight_axis(kind) % weight.ndim
        per_channel = self.options.normalize == "channel"
        xi = weight_xi(self.options.seed, layer["index"],
                       weight.shape[axis] if per_channel else None)
        result = mcq.sample_counts(weight, layer["K_weights"], xi, sort=self.options.sort,
                                   normalize=self.options.normalize, axis=axis,
                                   order=self.options.order)
        counts = result.counts.astype(mcq.int_dtype_for(result.counts))
        layer.update({
            "weight_shape": list(weight.shape), "N_weights": int(np.sum(result.N)),
            "weight_bits": int(result.bits), "weight_sparsity": float(result.sparsity),
            "weight_dtype": counts.dtype.name,
        })
        as_float = self.builder_.emit(relax.op.astype(relax.const(counts), weight.dtype))
        gemm = self.builder_.emit(relax.Call(call.op, [call.args[0], as_float], call.attrs))
        return relax.op.multiply(gemm, relax.const(_broadcast_scale(result, kind, weight.ndim)))


def _broadcast_scale(result, kind, ndim) -> np.ndarray:
    """f/N as float32, shaped to broadcast over the GEMM/conv output's channels."""
    scale = np.asarray(result.scale, dtype=np.float32)
    if scale.ndim == 0:
        return scale
    if kind == "conv2d":
        return scale.reshape(1, -1, *([1] * (ndim - 2)))
    return scale


@tvm.transform.module_pass(opt_level=0, name="mctvm.FoldMCQWeights")
class FoldMCQWeights:
    """Replace each planned layer's float weight by its MCQ counts; GEMM output times f/N."""

    def __init__(self, options):
        self.options = options

    def transform_module(self, mod, _ctx):
        layers = read_layers(mod)
        folder = _Folder(mod, layers, self.options)
        func = folder.visit_expr(mod["main"])
        folder.builder_.update_func(mod.get_global_var("main"), func)
        return write_layers(folder.builder_.get(), layers)
