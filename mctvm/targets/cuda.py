"""CUDA target: architecture, scheduled lowering, nvcc-compiled device code, device."""

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
    """The default schedules for kernels not scheduled yet: our integer GEMM rules
    (cuda_schedules.py: __dp4a for int8), then dlight's GPU rules."""
    from tvm.s_tir import dlight as dl

    from . import cuda_schedules
    from .schedule import ApplySchedules

    rules = cuda_schedules.rules() + [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    return [ApplySchedules(*rules)]


def device(target):
    import tvm

    return tvm.cuda(0)


def build(mod, target):
    """Build, and keep the generated CUDA source for inspection.

    Where nvcc is installed and supports `arch`, the kernels are compiled at build time into
    a fatbin for it (SASS, plus PTX for newer GPUs), which is what `export_library` writes.
    TVM does that only when its CUDA runtime library is loaded, and that library needs the
    driver library libcuda.so.1: without a driver, `load_cuda_runtime` stands a stub in for
    it. Otherwise (no nvcc, an arch it dropped such as sm_70 for CUDA 13, no C compiler for
    the stub) the program keeps the CUDA source, compiled when the exported library is
    loaded on a GPU host.
    """
    import os

    import tvm

    compile_here = nvcc_supports(str(target.attrs["arch"])) and load_cuda_runtime()
    if compile_here:
        import tvm_ffi

        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile_with_nvcc,
                                     override=True)
    # with the stub loaded, TVM would compile anyway: ask for its source module instead
    keep_source = not compile_here and _STUB_LOADED
    saved = os.environ.get(_FORCE_SOURCE)
    if keep_source:
        os.environ[_FORCE_SOURCE] = "1"
    try:
        executable = tvm.compile(mod, target=target, relax_pipeline=None)
    finally:
        if keep_source:
            if saved is None:
                del os.environ[_FORCE_SOURCE]
            else:
                os.environ[_FORCE_SOURCE] = saved
    source = "\n".join(m.inspect_source() for m in device_modules(executable.mod))
    return executable, {"cuda": source}


# TVM builds a CUDA module that keeps the source (as without its CUDA runtime) when set.
_FORCE_SOURCE = "TVM_COMPILE_FORCE_FALLBACK"
_NVCC_ARCHS: list = []


def nvcc_supports(arch: str) -> bool:
    """Whether the nvcc on PATH compiles for `arch` (sm_XX)."""
    import shutil
    import subprocess

    if not shutil.which("nvcc"):
        return False
    if not _NVCC_ARCHS:
        listed = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True,
                                check=False).stdout.split()
        _NVCC_ARCHS.extend(listed or [""])
    return "compute_" + arch.removeprefix("sm_") in _NVCC_ARCHS


def _compile_with_nvcc(code):
    """tvm_callback_cuda_compile: CUDA source -> fatbin for the current target's arch (a
    build with no CUDA target in scope, outside mctvm: the local GPU's, else DEFAULT_ARCH)."""
    import tvm
    from tvm.support import nvcc

    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "cuda":
        target = default_target()
    with target:
        return nvcc.compile_cuda(code, target_format="fatbin", arch=str(target.attrs["arch"]),
                                 compiler="nvcc")


# libcuda.so.1 stand-in: the functions TVM's CUDA runtime library (libtvm_runtime_cuda.so)
# imports, each answering CUDA_ERROR_STUB_LIBRARY (34) like the CUDA toolkit's own stub; the
# CUDA runtime (cudart) then reports no device.
_DRIVER_STUB = """
static const char *const stub_error = "CUDA_ERROR_STUB_LIBRARY";
int cuGetErrorName(int e, const char **s) { (void)e; *s = stub_error; return 0; }
int cuGetErrorString(int e, const char **s) { (void)e; *s = stub_error; return 0; }
#define STUB(name) int name(void) { return 34; }
STUB(cuInit) STUB(cuDriverGetVersion) STUB(cuGetProcAddress) STUB(cuGetProcAddress_v2)
STUB(cuDeviceGetName) STUB(cuFuncSetAttribute) STUB(cuLaunchKernelEx)
STUB(cuModuleGetFunction) STUB(cuModuleLoadData) STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
"""


_STUB_LOADED = False


def load_cuda_runtime() -> bool:
    """Load TVM's CUDA runtime library (kernels compiled at build time, CUDA modules saved as
    device code, exported libraries loadable) if `import tvm` could not; False if it can't be.

    On a host without the CUDA driver, a stub libcuda.so.1 compiled from _DRIVER_STUB (with
    the C compiler `export_library` uses) is loaded first, process-wide: nothing can run on
    a GPU here anyway, and tvm.cuda(0).exist stays False."""
    import ctypes
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return True
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            return False
        with tempfile.TemporaryDirectory(prefix="mctvm-cuda-stub-") as tmp:
            source, stub = Path(tmp) / "stub.c", Path(tmp) / "libcuda.so.1"
            source.write_text(_DRIVER_STUB)
            built = subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1",
                                    "-o", str(stub), str(source)], capture_output=True,
                                   check=False)
            if built.returncode != 0:
                return False
            ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
        global _STUB_LOADED  # pylint: disable=global-statement
        _STUB_LOADED = True
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
            mode="RTLD_LOCAL")
    except (OSError, FileNotFoundError, RuntimeError):
        return False
    return tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None


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
