"""CPU (LLVM) target: host detection, cross triples, lowering passes, threads, export.

Threads: TVM's runtime sizes its thread pool from TVM_NUM_THREADS (or OMP_NUM_THREADS) when
a thread first runs a parallel kernel, and otherwise takes half the logical CPUs on x86 (to
skip hyper-threads): one thread on a 2-vCPU machine, so parallel loops ran serially.
`configure_threads` (run when mctvm is imported, and again before building or running) sets
TVM_NUM_THREADS to the number of physical cores this process may use, unless the variable is
already set: set TVM_NUM_THREADS yourself to choose another count. The pool is created once
per calling thread, so the setting must be in place before that thread's first TVM call.
"""

from __future__ import annotations

import os
import shutil


def usable_cores() -> int:
    """Physical cores among the CPUs this process may run on (logical CPUs if unknown)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as pkg, \
                    open(f"{topology}/core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores) or len(cpus))


def configure_threads() -> int:
    """Make TVM's thread pool use every core (see the module doc); return the thread count."""
    if not os.environ.get("TVM_NUM_THREADS") and not os.environ.get("OMP_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(usable_cores())
    return thread_count()


def thread_count() -> int:
    """The thread count TVM's pool gets in a thread that starts one now."""
    value = os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "0"
    try:
        return max(1, int(value))
    except ValueError:
        return 1


configure_threads()


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
    """Relax -> TIR -> VM passes for CPU: fusion, the default schedules, VM lowering."""
    from .lowering import fusion_passes, vm_passes

    return fusion_passes() + schedule_passes(target) + vm_passes()


def schedule_passes(target) -> list:
    """The default schedules for the fused kernels not scheduled yet (by tuning records).

    mctvm's own default schedules (cpu_schedules: conv2d, matmul, pooling/elementwise) go
    ahead of dlight's GEMV/Reduction rules; the weight packing they add is split out of the
    kernels and folded into the constants. MCTVM_CPU_SCHEDULES=0 leaves them out.
    """
    from tvm.s_tir import dlight as dl

    from . import cpu_schedules
    from .schedule import ApplySchedules

    own = cpu_schedules.rules() if cpu_schedules.enabled() else []
    prepack = cpu_schedules.prepack_passes() if own else []
    return [ApplySchedules(*own, dl.cpu.GEMV(), dl.cpu.Reduction()), *prepack]


def device(target):
    import tvm

    configure_threads()
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

    configure_threads()
    return tvm.compile(mod, target=target, relax_pipeline=None), {}
