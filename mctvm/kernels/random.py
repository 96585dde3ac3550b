"""Philox4x32-10: a counter-based random generator for TIR kernels, with a numpy twin.

Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel Random Numbers: As Easy as 1, 2, 3",
SC'11; reference code: DEShawResearch/random123, include/Random123/philox.h) maps a
counter of four uint32 words and a key of two uint32 words to four uint32 words through
ten rounds of

    (hi0, lo0) = mulhilo(0xD2511F53, c0);  (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    k = (k0 + 0x9E3779B9, k1 + 0xBB67AE85)         (mod 2**32, between rounds)

It needs no state, so a kernel draws the numbers it needs where it needs them, from the
run-time seed, with no host round trip. Two twins compute the same bits:

- `philox4x32_np` / `uniform01_np`: numpy (uint64 arithmetic, vectorised over counters);
- `philox4x32_tir` / `uniform01`: TIR expressions (uint32 words, the 32x32->64 products
  through uint64 casts and a hi/lo split), bound with `Let` so that each word is computed
  once. Operands that are Python ints are folded here, in Python, so TVM never has to fold
  wrapping uint32/uint64 constant arithmetic itself.

The conventions of this package (both twins):

    key     = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)     a 64-bit seed
    counter = (counter & 0xffffffff, counter >> 32, stream, 0)   a 64-bit counter, uint32 stream
    u       = ((w0 >> 5) * 2**26 + (w1 >> 6)) * 2**-53           53 bits, u in [0, 1)

The integer (w0 >> 5) << 26 | (w1 >> 6) < 2**53 is formed in integer arithmetic and
converted once, so u is exact in float64 (no rounding, no fused multiply-add can change it).

Two TVM 0.27 pitfalls this module steers around:
- a narrowing Cast (uint64 -> uint32, int64 -> uint32) whose operand's known bound exceeds
  the narrow type makes the IntSetAnalyzer build an out-of-range IntImm and abort the build
  ("Literal value ... exceeds maximum of uint32"): every narrowing here masks first;
- the CUDA codegen prints float64 constants as `std::fixed` with 15 decimals, so 2**-53
  would be emitted as 0.000000000000000: the scaling is a division by 2**53 (exact, and
  printed exactly).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "philox4x32_np",
    "uniform01_np",
    "key_words",
    "philox4x32_tir",
    "uniform01",
    "seed_words",
    "uniform_prim_func",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_TWO_M53 = 2.0**-53


# ---------------------------------------------------------------------------
# numpy twin


def key_words(seed: int) -> tuple[int, int]:
    """(lo, hi) uint32 key words of a 64-bit seed (a negative seed is taken mod 2**64,
    i.e. as the bits of an int64)."""
    s = int(seed)
    if not -(2**63) <= s < 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed!r}; use a seed in [0, 2**64)")
    s &= _MASK64
    return s & _MASK32, s >> 32


def philox4x32_np(counter, key, rounds: int = ROUNDS) -> np.ndarray:
    """Philox4x32-`rounds` of counters (..., 4) uint32 under key (2,) uint32 -> (..., 4) uint32."""
    c = np.asarray(counter)
    if c.shape[-1:] != (4,):
        raise ValueError(f"counter must have a last axis of 4 words, got shape {c.shape}")
    c = c.astype(np.uint64) & np.uint64(_MASK32)
    k = [int(w) & _MASK32 for w in np.asarray(key, dtype=np.uint64).reshape(-1)]
    if len(k) != 2:
        raise ValueError(f"key must have 2 words, got {len(k)}")
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    mask, s32 = np.uint64(_MASK32), np.uint64(32)
    c0, c1, c2, c3 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    k0, k1 = k
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        p0 = c0 * m0  # < 2**64: exact in uint64
        p1 = c2 * m1
        c0, c1, c2, c3 = (
            (p1 >> s32) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> s32) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _check_stream(stream) -> int:
    s = int(stream)
    if not 0 <= s <= _MASK32:
        raise ValueError(f"stream must be in [0, 2**32), got {stream!r}")
    return s


def uniform01_np(seed: int, stream: int, counter) -> np.ndarray:
    """53-bit uniforms in [0, 1) (float64, shaped like `counter`) for a seed, stream, counters."""
    lo, hi = key_words(seed)
    stream = _check_stream(stream)
    ctr = np.asarray(counter)
    if ctr.dtype.kind not in "iu" and ctr.dtype != object:
        raise ValueError(f"counter must be integer, got dtype {ctr.dtype}")
    if ctr.size and (np.min(ctr) < 0 or int(np.max(ctr)) > _MASK64):
        raise ValueError("counter must be in [0, 2**64)")
    ctr = ctr.astype(np.uint64)
    words = np.empty(ctr.shape + (4,), dtype=np.uint32)
    words[..., 0] = ctr & np.uint64(_MASK32)
    words[..., 1] = ctr >> np.uint64(32)
    words[..., 2] = stream
    words[..., 3] = 0
    out = philox4x32_np(words, np.array([lo, hi], dtype=np.uint32)).astype(np.uint64)
    bits = ((out[..., 0] >> np.uint64(5)) << np.uint64(26)) | (out[..., 1] >> np.uint64(6))
    return bits.astype(np.int64).astype(np.float64) * _TWO_M53


# ---------------------------------------------------------------------------
# TIR twin


def _tirx():
    from tvm import tirx

    return tirx


def _u32(v):
    """A word as a Python int (folded) or a uint32 PrimExpr."""
    tirx = _tirx()
    if isinstance(v, (int, np.integer)):
        return int(v) & _MASK32
    if isinstance(v, tirx.IntImm):
        return int(v.value) & _MASK32
    if _dtype(v) == "uint32":
        return v
    return tirx.Cast("uint32", v)


def _dtype(expr) -> str:
    """The dtype string of a PrimExpr (TVM 0.27: `expr.ty.dtype`; older: `expr.dtype`)."""
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if ty is not None and hasattr(ty, "dtype") else str(expr.dtype)


def _as_expr(v, dtype="uint32"):
    tirx = _tirx()
    return tirx.const(v, dtype) if isinstance(v, int) else v


class _LetChain:
    """Collects (var, value) bindings; `wrap(body)` nests them as Let expressions."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.bindings = []

    def bind(self, value, dtype: str, name: str):
        tirx = _tirx()
        if isinstance(value, int) or isinstance(value, (tirx.Var, tirx.IntImm)):
            return value  # constants fold in Python, variables need no binding
        var = tirx.Var(f"{self.prefix}{name}", dtype)
        self.bindings.append((var, value))
        return var

    def wrap(self, body):
        tirx = _tirx()
        for var, value in reversed(self.bindings):
            body = tirx.Let(var, value, body)
        return body


def _xor(*vals):
    ints = [v for v in vals if isinstance(v, int)]
    exprs = [v for v in vals if not isinstance(v, int)]
    k = 0
    for v in ints:
        k ^= v
    if not exprs:
        return k
    out = exprs[0]
    for e in exprs[1:]:
        out = out ^ e
    if k:
        out = out ^ _as_expr(k)
    return out


def _mulhilo(m: int, x, chain: _LetChain, name: str):
    """(hi, lo) words of the 64-bit product m * x."""
    tirx = _tirx()
    if isinstance(x, int):
        p = m * x
        return p >> 32, p & _MASK32
    p = chain.bind(tirx.Cast("uint64", x) * tirx.const(m, "uint64"), "uint64", "p" + name)
    hi = tirx.Cast("uint32", p >> tirx.const(32, "uint64"))
    # mask before narrowing: TVM 0.27's IntSetAnalyzer turns the bound of a narrowing Cast
    # into an IntImm of the narrow type, and a uint64 bound beyond 2**32 fails its check
    lo = tirx.Cast("uint32", p & tirx.const(_MASK32, "uint64"))
    return hi, lo


def _philox_words(counter: Sequence, key: Sequence, rounds: int, chain: _LetChain):
    if len(counter) != 4 or len(key) != 2:
        raise ValueError("philox4x32 needs a counter of 4 words and a key of 2 words")
    c = [_u32(w) for w in counter]
    k0, k1 = (chain.bind(_u32(w), "uint32", f"k{i}") for i, w in enumerate(key))
    for r in range(rounds):
        # round key r = key + r * W (mod 2**32), the constant folded here
        rk0 = _add_const(k0, r * PHILOX_W0)
        rk1 = _add_const(k1, r * PHILOX_W1)
        hi0, lo0 = _mulhilo(PHILOX_M0, c[0], chain, f"{r}_0")
        hi1, lo1 = _mulhilo(PHILOX_M1, c[2], chain, f"{r}_1")
        c = [
            chain.bind(_xor(hi1, c[1], rk0), "uint32", f"c{r}_0"),
            chain.bind(lo1, "uint32", f"c{r}_1"),
            chain.bind(_xor(hi0, c[3], rk1), "uint32", f"c{r}_2"),
            chain.bind(lo0, "uint32", f"c{r}_3"),
        ]
    return c


def _add_const(x, k: int):
    k &= _MASK32
    if isinstance(x, int):
        return (x + k) & _MASK32
    return x if k == 0 else x + _as_expr(k)


_counter = [0]


def _fresh_prefix(stem: str) -> str:
    _counter[0] += 1
    return f"{stem}{_counter[0]}_"


def philox4x32_tir(counter: Sequence, key: Sequence, body: Callable | None = None,
                   rounds: int = ROUNDS):
    """Philox4x32-`rounds` as TIR: words are uint32 PrimExprs or Python ints.

    With `body`, returns body([w0, w1, w2, w3]) wrapped in the Let bindings of the rounds
    (each word computed once). Without, returns the four words as a list of uint32
    PrimExprs (or ints, when every input is a Python int), each an independent Let chain.
    Every call uses fresh variables, so the results may appear anywhere in one PrimFunc.
    """
    if body is not None:
        chain = _LetChain(_fresh_prefix("philox"))
        words = _philox_words(counter, key, rounds, chain)
        return chain.wrap(body([_as_expr(w) for w in words]))
    out = []
    for i in range(4):
        chain = _LetChain(_fresh_prefix("philox"))
        words = _philox_words(counter, key, rounds, chain)
        out.append(words[i] if isinstance(words[i], int) else chain.wrap(words[i]))
    return out


def _counter_words(counter):
    tirx = _tirx()
    if isinstance(counter, (int, np.integer)):
        c = int(counter)
        if not 0 <= c <= _MASK64:
            raise ValueError("counter must be in [0, 2**64)")
        return c & _MASK32, c >> 32
    if isinstance(counter, tirx.IntImm):
        return _counter_words(int(counter.value) & _MASK64)
    dtype = _dtype(counter)
    if dtype.endswith(("8", "16", "32")) or dtype == "bool":
        return tirx.Cast("uint32", counter), 0
    lo = tirx.Cast("uint32", counter & tirx.const(_MASK32, dtype))  # mask: see _mulhilo
    hi = tirx.Cast("uint32", (counter >> tirx.const(32, dtype)) & tirx.const(_MASK32, dtype))
    return lo, hi


def uniform01(seed_lo, seed_hi, stream, counter):
    """float64 PrimExpr: the uniform in [0, 1) that uniform01_np(seed, stream, counter) gives.

    seed_lo / seed_hi: uint32 words of the 64-bit seed (PrimExprs or ints; see
    `seed_words`); stream: uint32 (int or PrimExpr); counter: an integer PrimExpr (int32 or
    int64; a 64-bit counter contributes its high word) or a Python int.
    """
    tirx = _tirx()
    if isinstance(stream, (int, np.integer)):
        stream = _check_stream(stream)
    lo, hi = _counter_words(counter)

    def body(w):
        a = tirx.Cast("uint64", w[0] >> tirx.const(5, "uint32"))
        b = tirx.Cast("uint64", w[1] >> tirx.const(6, "uint32"))
        bits = (a << tirx.const(26, "uint64")) | b  # < 2**53
        # int64 -> float64 is one instruction on x86 (uint64 -> float64 is not) and exact here.
        # Divide by 2**53 (exact, = * 2**-53): TVM 0.27's CUDA codegen prints float64
        # constants with 15 fixed decimals, so the constant 2**-53 would come out as 0.0
        return tirx.Cast("float64", tirx.Cast("int64", bits)) / tirx.const(2.0**53, "float64")

    return philox4x32_tir([lo, hi, stream, 0], [seed_lo, seed_hi], body)


def seed_words(seed):
    """(lo, hi) uint32 PrimExprs of an int64 PrimExpr seed (two's complement bits)."""
    tirx = _tirx()
    mask = tirx.const(_MASK32, "int64")
    lo = tirx.Cast("uint32", seed & mask)  # mask before narrowing: see _mulhilo
    hi = tirx.Cast("uint32", (seed >> tirx.const(32, "int64")) & mask)
    return lo, hi


def uniform_prim_func(n: int, stream: int = 0, first_counter: int = 0,
                      name: str | None = "main"):
    """PrimFunc(seed: int64[1], out: float64[n]) with out[i] = uniform01(seed, stream, first + i).

    A test vehicle for the TIR twin: build it with tvm.compile and compare with
    uniform01_np(seed, stream, first_counter + np.arange(n)). `name` is the global symbol
    (tvm.compile(func) then exposes ex[name]); name=None makes it private.
    """
    from tvm.script import tirx as T

    stream = _check_stream(stream)
    n = int(n)
    first = int(first_counter)
    if n < 1 or first < 0 or first + n - 1 >= 2**63:
        raise ValueError("need n >= 1 and counters first_counter .. first_counter + n - 1 "
                         "in [0, 2**63)")

    @T.prim_func
    def uniform(seed: T.Buffer((1,), "int64"), out: T.Buffer((n,), "float64")):
        T.func_attr({"tirx.noalias": True})
        for i in T.parallel(n):
            out[i] = uniform01(*seed_words(seed[0]), stream, T.Cast("int64", i) + T.int64(first))

    if name is None:
        return uniform.without_attr("global_symbol")
    return uniform.with_attr("global_symbol", name)
