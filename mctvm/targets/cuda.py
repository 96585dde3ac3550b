"""CUDA target: architecture, dlight-scheduled lowering, generated source, device."""

from __future__ import annotations

# Without a GPU to ask, compile for Ampere (A100 and newer run it); name "arch" to change it.
DEFAULT_ARCH = "sm_80"


def default_target():
    """The local GPU's architecture if one is present, else DEFAULT_ARCH."""
    return complete_target({"kind": "cuda"})


def complete_target(spec: dict):
    import tvm

    if "arch" not in spec:
        gpu = tvm.cuda(0)
        spec["arch"] = "sm_" + gpu.compute_version.replace(".", "") if gpu.exist else DEFAULT_ARCH
    return tvm.target.Target(spec, host=_host())


def _host():
    from . import cpu

    return cpu.default_target()


def lowering_passes(target) -> list:
    """Relax -> TIR -> VM passes for CUDA: fusion, the default schedules, VM lowering."""
    from .lowering import fusion_passes, vm_passes

    return fusion_passes() + schedule_passes(target) + vm_passes()


def schedule_passes(target) -> list:
    """dlight's GPU rules: the default schedules for kernels not scheduled yet."""
    from tvm.s_tir import dlight as dl

    from .schedule import ApplySchedules

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
             dl.gpu.Fallback()]
    return [ApplySchedules(*rules)]


def device(target):
    import tvm

    return tvm.cuda(0)


def build(mod, target):
    """Build, and keep the generated CUDA source for inspection.

    Where the CUDA driver is loadable, TVM compiles the kernels at build time through
    `tvm_callback_cuda_compile`, here bound to nvcc (a fatbin for `arch`). Without a driver
    (this project's CI), TVM keeps the CUDA source in the program instead: exported, it is
    compiled when loaded on a GPU host.
    """
    import shutil

    import tvm
    import tvm_ffi

    sources = []
    if shutil.which("nvcc"):
        from tvm.support import nvcc

        def compile_with_nvcc(code):
            sources.append(code)
            arch = str(tvm.target.Target.current().attrs["arch"])
            return nvcc.compile_cuda(code, target_format="fatbin", arch=arch, compiler="nvcc")

        tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_with_nvcc,
                                     override=True)
    executable = tvm.compile(mod, target=target, relax_pipeline=None)
    source = "\n".join(sources) or "\n".join(m.inspect_source() for m in device_modules(executable.mod))
    return executable, {"cuda": source}


def device_modules(module):
    """Every imported CUDA module below a runtime module."""
    found = []
    stack = [module]
    while stack:
        mod = stack.pop()
        if mod.kind == "cuda":
            found.append(mod)
        stack.extend(mod.imports)
    return found
