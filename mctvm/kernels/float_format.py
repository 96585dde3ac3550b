"""Rounding to a small floating-point format (1 sign, E exponent, M mantissa bits).

Round-to-nearest-even, or stochastic rounding as in the MCDA paper's appendix A.2 (after
Wang et al. 2018 / QPyTorch): a value between two neighbours of the format goes up with
probability (distance to the lower one) / (their gap). The exponent range follows IEEE:
bias 2^(E-1) - 1, gradual underflow (subnormals share the smallest normal's quantum), and
values beyond the largest finite number saturate to it (no infinities in the format).
Numpy (for constant weights at compile time) and TE (for activations at run time) agree
bit for bit; the stochastic draw is uniform01(seed, stream, element index).
"""

from __future__ import annotations

import numpy as np

from .random import seed_words, uniform01, uniform01_np


def format_limits(exponent_bits: int, mantissa_bits: int) -> tuple:
    """(lowest exponent, largest finite value) of the format."""
    if not (2 <= exponent_bits <= 8 and 0 <= mantissa_bits <= 23):
        raise ValueError(f"float format (E={exponent_bits}, M={mantissa_bits}) is outside "
                         "2 <= E <= 8, 0 <= M <= 23 (float32 holds it)")
    bias = 2 ** (exponent_bits - 1) - 1
    largest = (2.0 - 2.0 ** -mantissa_bits) * 2.0 ** bias
    return 1 - bias, largest


def round_np(x, exponent_bits, mantissa_bits, stochastic=False, seed=0, stream=0) -> np.ndarray:
    """x (float32) rounded to the format; float32 out."""
    low, largest = format_limits(exponent_bits, mantissa_bits)
    x = np.asarray(x, dtype=np.float32)
    keep = (x == 0) | ~np.isfinite(x)
    xd = np.abs(np.where(keep, 1.0, x).astype(np.float64))
    exponent = ((xd.view(np.int64) >> 52) & 0x7FF) - 1023
    exponent = np.maximum(exponent, low)
    quantum = (((exponent - mantissa_bits) + 1023) << 52).view(np.float64)
    scaled = xd / quantum  # exact: a power-of-two division
    if stochastic:
        u = uniform01_np(seed, stream, np.arange(x.size, dtype=np.uint64)).reshape(x.shape)
        steps = np.floor(scaled) + (u < scaled - np.floor(scaled))
    else:
        steps = np.rint(scaled)  # half to even
    value = np.minimum(steps * quantum, largest)
    out = np.copysign(value, x.astype(np.float64)).astype(np.float32)
    return np.where(keep, x, out)


def round_te(x, seed, exponent_bits, mantissa_bits, stochastic=False, stream=0):
    """TE tensor: `x` (float32) rounded to the format; `seed` int64[1] (stochastic only)."""
    from tvm import te, tirx

    low, largest = format_limits(exponent_bits, mantissa_bits)
    shape = [int(d) for d in x.shape]
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    i64 = "int64"

    def element(*index):
        value = x(*index)
        xd = tirx.abs(tirx.Cast("float64", value))
        exponent = ((tirx.reinterpret(i64, xd) >> tirx.const(52, i64)) & tirx.const(0x7FF, i64)) \
            - tirx.const(1023, i64)
        exponent = tirx.max(exponent, tirx.const(low, i64))
        quantum = tirx.reinterpret("float64", (exponent - tirx.const(mantissa_bits, i64)
                                               + tirx.const(1023, i64)) << tirx.const(52, i64))
        scaled = xd / quantum
        if stochastic:
            flat = tirx.const(0, i64)
            for i, stride in zip(index, strides):
                flat = flat + tirx.Cast(i64, i) * tirx.const(stride, i64)
            lo, hi = seed_words(seed[0])
            u = uniform01(lo, hi, stream, flat)
            down = tirx.floor(scaled)
            steps = down + tirx.Select(u < scaled - down, tirx.const(1.0, "float64"),
                                       tirx.const(0.0, "float64"))
        else:
            steps = tirx.nearbyint(scaled)
        rounded = tirx.min(steps * quantum, tirx.const(largest, "float64"))
        signed = tirx.Select(value < tirx.const(0.0, "float32"), -rounded, rounded)
        keep = tirx.any(value == tirx.const(0.0, "float32"), tirx.Not(tirx.isfinite(value)))
        return tirx.Select(keep, value, tirx.Cast("float32", signed))

    return te.compute(shape, element, name="round_to_format")
