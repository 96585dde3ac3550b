"""The mctvm compiler pipeline, phase by phase.

Read top to bottom: each phase is a named list of passes. `dump_dir` writes the IR after
each phase as `NN-<phase>.py` (TVMScript), so a reader can watch the model change.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax


def graph_phases(options) -> list:
    """Graph-level phases, run on the imported fp32 Relax module."""
    return [
        # Clean up after import: fold Gemm's transposes and other constant sub-graphs into
        # the weights, so that each GEMM/conv sees its final constant operand.
        ("simplify", [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]),
        # Monte Carlo quantization (K set) plugs in here: FoldMCQWeights,
        # InsertActivationSampling, InsertMCANoise, LowerSparseGEMM.
    ]


def lowering_phase(target) -> tuple:
    """Target lowering: legalize to TIR, fuse, schedule, lower to the VM (see targets/)."""
    from ..targets import backend

    return ("lower-" + target.kind.name, backend(target).lowering_passes(target))


def run(mod: tvm.IRModule, target, options=None, dump_dir=None) -> tvm.IRModule:
    """Run every phase on `mod` for `target`; the result is ready for `tvm.compile`."""
    phases = graph_phases(options) + [lowering_phase(target)]
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
