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
from .lower_max_pool import LowerMaxPool
from .lower_sparse_gemm import LowerSparseGEMM
from .plan_mcq_layers import PlanMCQLayers
from .round_to_float_format import RoundToFloatFormat


def graph_phases(target, mcq=None, onnx_gemms=(), mca=None, float_format=None) -> list:
    """Graph-level phases, run on the imported fp32 Relax module. `mcq` is MCQOptions or None;
    `mca` and `float_format` the keyword arguments of InsertMCANoise / RoundToFloatFormat."""
    phases = [
        # Clean up after import: fold inference BatchNorm into the conv before it, Gemm's
        # transposes and other constant sub-graphs into the weights, so that each GEMM/conv
        # sees its final constant operand (and MCQ samples the weights that really run).
        ("simplify", [relax.transform.FoldBatchnormToConv2D(), relax.transform.FoldConstant(),
                      relax.transform.DeadCodeElimination()]),
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
            # Integer GEMM/convs on sparse weights: dense, CSR or BSR kernels per layer.
            ("mcq-sparse", [LowerSparseGEMM(mcq.sparse, target)]),
        ]
    if float_format is not None:
        # Quantized floating point: GEMM/conv operands rounded to (E, M) bits.
        phases.append(("float-format", [RoundToFloatFormat(**float_format)]))
    if mca is not None:
        # Monte Carlo Arithmetic: inexact() around GEMM/convs and on the outputs (MCDA).
        phases.append(("mca-noise", [InsertMCANoise(**mca)]))
    if _device(target) == "cpu":
        # Max pools as mctvm's kernel (plain vector loads, not TVM's strided gathers); after
        # the MCQ phases, which fuse some pools into the sampling and read others as ops.
        phases.append(("cpu-kernels", [LowerMaxPool()]))
    # exp, erf, tanh and softmax as TVM's vectorisable polynomial forms (about 1e-7 relative
    # error), not scalar libm calls: GELU and attention run in SIMD lanes.
    phases.append(("fast-math", [relax.transform.FastMathTransform()]))
    return phases


def _device(target) -> str:
    return "cuda" if target.kind.name == "cuda" else "cpu"


def lowering_phase(target, tuned=()) -> tuple:
    """Target lowering: legalize to TIR, fuse, schedule, lower to the VM (see targets/).

    `tuned`: passes that schedule kernels from tuning records (tune.py), run after fusion
    and before the target's default schedules, which then skip the kernels they scheduled.
    """
    from ..targets import backend
    from ..targets.lowering import fusion_passes, vm_passes

    schedules = list(tuned) + backend(target).schedule_passes(target)
    return ("lower-" + target.kind.name, fusion_passes() + schedules + vm_passes())


def run(mod: tvm.IRModule, target, mcq=None, onnx_gemms=(), dump_dir=None,
        mca=None, float_format=None, tuned=()) -> tvm.IRModule:
    """Run every phase on `mod` for `target`; the result is ready for `tvm.compile`."""
    phases = graph_phases(target, mcq, onnx_gemms, mca, float_format)
    phases.append(lowering_phase(target, tuned))
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        _dump(mod, dump_dir, 0, "imported")
    with target:
        for index, (name, passes) in enumerate(phases, start=1):
            mod = tvm.transform.Sequential(passes, name=name)(mod)
            if dump_dir is not None:
                _dump(mod, dump_dir, index, name)
    return mod


def kernels(mod: tvm.IRModule, target, mcq=None, onnx_gemms=(), mca=None,
            float_format=None) -> tvm.IRModule:
    """The graph phases and fusion only: the program's kernels as fused, unscheduled
    PrimFuncs, the workloads that tuning measures and that its records are matched to."""
    from ..targets.lowering import fusion_passes

    phases = graph_phases(target, mcq, onnx_gemms, mca, float_format)
    phases.append(("fuse", fusion_passes()))
    with target:
        for name, passes in phases:
            mod = tvm.transform.Sequential(passes, name=name)(mod)
    return mod


def _dump(mod, dump_dir, index, name):
    (Path(dump_dir) / f"{index:02d}-{name}.py").write_text(mod.script(show_meta=False))
