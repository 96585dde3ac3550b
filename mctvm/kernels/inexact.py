"""Monte Carlo Arithmetic's inexact(x, t) as an element-wise TE kernel, and its numpy twin.

    inexact(x, t) = x + 2^(E + shift - t) * delta,   delta ~ U(-1/2, 1/2),  E = floor(log2 |x|)

(MCDA paper, eq. 4). `shift` is the exponent convention: the paper's 2^(E-t) (shift 0),
Verificarlo's 2^(E+1-t) (1), MCALIB's 2^(E+2-t) (2); the conventions differ by whole bits of
K. delta = uniform01(seed, stream, element index) - 1/2 from the Philox generator, so a
trial is reproducible from its seed, elements and sites are independent streams, and no
random numbers cross from the host. Zero stays zero; Inf and NaN pass through. The sum is
formed in float64 (x and the power of two are exact there) and rounded once to float32.
t is a run-time input (int32[1]), so one program serves every virtual precision.
"""

from __future__ import annotations

import numpy as np

from .random import seed_words, uniform01, uniform01_np

CONVENTIONS = {"paper": 0, "verificarlo": 1, "mcalib": 2}
CONVENTION_TEXT = {"paper": "paper: 2^(E-t)", "verificarlo": "Verificarlo: 2^(E+1-t)",
                   "mcalib": "MCALIB: 2^(E+2-t)"}


def check_convention(convention: str) -> int:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}; use one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[convention]


def inexact_np(x: np.ndarray, seed: int, t: int, stream: int, convention="paper") -> np.ndarray:
    """Bit-exact numpy twin of the kernel, for float32 `x`."""
    shift = check_convention(convention)
    x = np.asarray(x, dtype=np.float32)
    xd = x.astype(np.float64)
    exponent = ((xd.view(np.int64) >> 52) & 0x7FF) - 1023
    k = np.clip(exponent + shift - int(t), -1022, 1023)
    power = ((k + 1023) << 52).view(np.float64)
    delta = uniform01_np(seed, stream, np.arange(x.size, dtype=np.uint64)).reshape(x.shape) - 0.5
    noisy = (xd + delta * power).astype(np.float32)
    keep = (x == 0) | ~np.isfinite(x)
    return np.where(keep, x, noisy)


def inexact_te(x, seed, t, stream: int, convention="paper"):
    """TE tensor: inexact(x, t) for a float32 tensor `x`, int64[1] `seed`, int32[1] `t`."""
    from tvm import te, tirx

    shift = check_convention(convention)
    shape = [int(d) for d in x.shape]
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]

    def element(*index):
        flat = tirx.const(0, "int64")
        for i, stride in zip(index, strides):
            flat = flat + tirx.Cast("int64", i) * tirx.const(stride, "int64")
        value = x(*index)
        xd = tirx.Cast("float64", value)
        bits = tirx.reinterpret("int64", xd)
        exponent = ((bits >> tirx.const(52, "int64")) & tirx.const(0x7FF, "int64")) \
            - tirx.const(1023, "int64")
        k = exponent + tirx.const(shift, "int64") - tirx.Cast("int64", t[0])
        k = tirx.max(tirx.min(k, tirx.const(1023, "int64")), tirx.const(-1022, "int64"))
        power = tirx.reinterpret("float64", (k + tirx.const(1023, "int64")) << tirx.const(52, "int64"))
        lo, hi = seed_words(seed[0])
        delta = uniform01(lo, hi, stream, flat) - tirx.const(0.5, "float64")
        noisy = tirx.Cast("float32", xd + delta * power)
        finite = tirx.all(value != tirx.const(0.0, "float32"), tirx.isfinite(value))
        return tirx.Select(finite, noisy, value)

    return te.compute(shape, element, name="inexact")
