"""The Relax lowering steps every target shares: before scheduling, and after it."""

from __future__ import annotations


def fusion_passes() -> list:
    """Relax ops -> fused TIR PrimFuncs, ready for a target's schedules (uint8 x int8
    reductions padded for vpdpbusd first, where the target has it)."""
    from tvm import relax

    from ..passes.pad_quad_reductions import PadQuadReductions

    return [
        PadQuadReductions(),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def vm_passes() -> list:
    """Scheduled module -> VM code: memory planning, shape lowering, symbols."""
    from tvm import relax

    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
