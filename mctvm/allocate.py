"""Allocate MCQ samples by sensitivity: the same total as uniform K, more where MCDA says a
layer loses more digits to reduced precision."""

from __future__ import annotations

import numpy as np

from . import frontend
from .errors import MctvmError


def allocate_K(K: float, sizes: dict, digits_lost: dict) -> dict:
    """Per-layer K with sum(K_l * n_l) == K * sum(n_l), K_l proportional to 2^digits_lost_l
    (each binary digit lost asks for twice the precision, i.e. twice the samples)."""
    names = list(sizes)
    n = np.array([sizes[name] for name in names], dtype=np.float64)
    weight = np.exp2(np.array([digits_lost[name] for name in names], dtype=np.float64))
    ks = K * weight * n.sum() / (weight * n).sum()
    return {name: float(k) for name, k in zip(names, ks)}


def sensitivity_layer_K(model, K: float, inputs, labels, *, t=range(1, 17), trials=100,
                        **mcda_options) -> dict:
    """layer_K for mctvm.compile: per-layer MCDA sensitivity turned into a sample allocation.

    Layers are the GEMM/convs with a constant weight (MCQ's layers), named after their ONNX
    nodes; each layer's weight count sets its share of the samples.
    """
    from .mcda import layer_sensitivity

    proto = frontend.load_model(model)
    names = [name for name, _ in frontend.gemm_nodes(proto)]
    sizes = _weight_sizes(proto)
    results = [(site, r) for site, r in layer_sensitivity(proto, inputs, labels, t=t,
                                                           trials=trials, **mcda_options)
               if site["constant_weight"]]
    if len(results) != len(names):
        raise MctvmError("could not match MCDA's layers to the model's GEMM/conv nodes; "
                         "pass layer_K= yourself")
    digits = {name: r.digits_lost for name, (_, r) in zip(names, results)}
    return allocate_K(K, {name: sizes[name] for name in names}, digits)


def _weight_sizes(proto) -> dict:
    """Number of weights of each GEMM/conv node with a constant weight."""
    from onnx import numpy_helper

    shapes = {init.name: numpy_helper.to_array(init).size for init in proto.graph.initializer}
    sizes = {}
    for index, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type.lower()}_{index}"
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            sizes[name] = shapes.get(node.input[1], 0)
    return sizes
