"""PlanMCQLayers: decide, per GEMM/conv with a constant weight, what MCQ quantizes and with
which K; the plan rides on the module (attribute `mctvm.mcq_layers`) for the passes after it."""

from __future__ import annotations

import json
from dataclasses import asdict

import tvm

from .layers import plan_layers

LAYERS_ATTR = "mctvm.mcq_layers"


def read_layers(mod) -> list:
    """The per-layer records on the module: the plan plus what later passes added."""
    return json.loads(str(mod.attrs[LAYERS_ATTR])) if mod.attrs and LAYERS_ATTR in mod.attrs else []


def write_layers(mod, layers):
    return mod.with_attr(LAYERS_ATTR, json.dumps(layers))


@tvm.transform.module_pass(opt_level=0, name="mctvm.PlanMCQLayers")
class PlanMCQLayers:
    """Name the layers after their ONNX nodes and resolve K, skip and quantize per layer."""

    def __init__(self, onnx_gemms, options):
        self.onnx_gemms, self.options = onnx_gemms, options

    def transform_module(self, mod, _ctx):
        return write_layers(mod, [asdict(plan) for plan in
                                  plan_layers(mod, self.onnx_gemms, self.options)])
