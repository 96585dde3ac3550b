"""CPU (LLVM) target: host detection, cross triples, lowering passes, export."""

from __future__ import annotations

import os
import shutil


def default_target():
    """The host CPU, with LLVM's name for it and all its cores."""
    return complete_target({"kind": "llvm"})


def complete_target(spec: dict):
    """Fill in the host's mcpu and core count unless the spec names another machine."""
    import tvm
    from tvm.target import codegen

    if "mtriple" not in spec and "mcpu" not in spec:
        spec["mcpu"] = codegen.llvm_get_system_cpu()
    spec.setdefault("num-cores", os.cpu_count() or 1)
    return tvm.target.Target(spec)


def is_cross(target) -> bool:
    """True when the target's triple names a different machine than this one."""
    import platform

    triple = str(target.attrs.get("mtriple", "") or "")
    if not triple:
        return False
    host = platform.machine().lower()
    arch = triple.split("-")[0].lower()
    aliases = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}}
    return arch not in aliases.get(host, {host})


def lowering_passes(target) -> list:
    """Relax -> TIR -> VM passes for CPU. Schedules plug in after FuseTIR."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from .schedule import ApplySchedules

    return [
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        ApplySchedules(dl.cpu.GEMV(), dl.cpu.Reduction()),
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


def device(target):
    import tvm

    return tvm.cpu(0)


def cross_compiler(target):
    """The `fcompile` that links a shared library for a cross target, or None if absent."""
    from tvm.support import cc

    triple = str(target.attrs.get("mtriple"))
    for name in (f"{triple}-g++", f"{triple}-gcc"):
        if shutil.which(name):
            return cc.cross_compiler(name)
    return None


def build(mod, target):
    """Build the lowered module; the LLVM path keeps no generated source."""
    import tvm

    return tvm.compile(mod, target=target, relax_pipeline=None), {}
