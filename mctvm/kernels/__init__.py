"""TIR kernels that the passes call: a counter-based random generator (Philox4x32-10) and
run-time MCQ activation sampling. Each kernel comes with a numpy twin it matches bit for bit."""

from .random import philox4x32_np, philox4x32_tir, uniform01, uniform01_np, uniform_prim_func
from .activation_sampling import cuda_sampling_prim_func, sampling_prim_func, xi_for

__all__ = [
    "philox4x32_np",
    "philox4x32_tir",
    "uniform01",
    "uniform01_np",
    "uniform_prim_func",
    "sampling_prim_func",
    "cuda_sampling_prim_func",
    "xi_for",
]
