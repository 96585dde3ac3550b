"""The mctvm compiler pipeline, phase by phase.

Read top to bottom: each phase is a named list of passes. `dump_dir` writes the IR after
each phase as `NN-<phase>.py` (TVMScript), so a reader can watch the model change.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from .fold_mcq_weights import FoldMCQWeights
from .insert_activation_sampling import InsertActivationSampling
from .insert_mca_noise import InsertMCANoise
from .plan_mcq_layers import PlanMCQLayers
from .round_to_float_format import RoundToFloatFormat


def graph_phases(target, mcq=None, onnx_gemms=(), mca=None, float_format=None) -> list:
    """Graph-level phases, run on the imported fp32 Relax module. `mcq` is MCQOptions or None;
    `mca` and `float_format` the keyword arguments of InsertMCANoise / RoundToFloatFormat."""
    phases = [
        # Clean up after import: fold Gemm's transposes and other constant sub-graphs into
        # the weights, so that each GEMM/conv sees its final constant operand.
        ("simplify", [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]),
    ]
    if mcq is not None:
        phases += [
            # Which GEMM/convs are quantized, named after their ONNX nodes, with which K.
            ("mcq-plan", [PlanMCQLayers(onnx_gemms, mcq)]),
            # Weights -> signed hit counts (int8/16/32 constants) and a scale f/N.
            ("mcq-weights", [FoldMCQWeights(mcq)]),
            # Activations -> counts at run time; integer GEMMs with int32 accumulation.
            ("mcq-activations", [InsertActivationSampling(mcq, _device(target)),
                                 relax.transform.DeadCodeElimination()]),
        ]
    if float_format is not None:
        # Quantized floating point: GEMM/conv operands rounded to (E, M) bits.
        phases.append(("float-format", [RoundToFloatFormat(**float_format)]))
    if mca is not None:
        # Monte Carlo Arithmetic: inexact() around GEMM/convs and on the outputs (MCDA).
        phases.append(("mca-noise", [InsertMCANoise(**mca)]))
    return phases


def _device(target) -> str:
    return "cuda" if target.kind.name == "cuda" else "cpu"


def lowering_phase(target) -> tuple:
    """Target lowering: legalize to TIR, fuse, schedule, lower to the VM (see targets/)."""
    from ..targets import backend

    return ("lower-" + target.kind.name, backend(target).lowering_passes(target))


def run(mod: tvm.IRModule, target, mcq=None, onnx_gemms=(), dump_dir=None,
        mca=None, float_format=None) -> tvm.IRModule:
    """Run every phase on `mod` for `target`; the result is ready for `tvm.compile`."""
    phases = graph_phases(target, mcq, onnx_gemms, mca, float_format) + [lowering_phase(target)]
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        _dump(mod, dump_dir, 0, "imported")
    with target:
        for index, (name, passes) in enumerate(phases, start=1):
            mod = tvm.transform.Sequential(passes, name=name)(mod)
            if dump_dir is not None:
                _dump(mod, dump_dir, index, name)
    return mod


def _dump(mod, dump_dir, index, name):
    (Path(dump_dir) / f"{index:02d}-{name}.py").write_text(mod.script(show_meta=False))
