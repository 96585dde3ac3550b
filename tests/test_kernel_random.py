"""Philox4x32-10 in numpy and in TIR: known answers, bit-exact twins, uniformity."""

import numpy as np
import pytest
import tvm
from scipy import stats
from tvm.script import tirx as T

from mctvm.kernels.random import (
    philox4x32_np,
    philox4x32_tir,
    uniform01_np,
    uniform_prim_func,
)

LLVM = tvm.target.Target({"kind": "llvm"})

# Random123 known-answer vectors: DEShawResearch/random123, tests/kat_vectors, lines 27-29
# (commit 9545ff6413f258be2f04c1d319d99aaef7521150). Format: "philox4x32 10" counter[4] key[2]
# expected[4], all hex uint32.
KAT = """\
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
"""


def kat_rows():
    rows = []
    for line in KAT.strip().splitlines():
        words = [int(w, 16) for w in line.split()[2:]]
        rows.append((words[:4], words[4:6], words[6:]))
    return rows


def run_uniform(n, stream, seed, first_counter=0):
    ex = tvm.compile(uniform_prim_func(n, stream, first_counter), target=LLVM)
    out = tvm.runtime.tensor(np.zeros(n, dtype=np.float64))
    ex["main"](tvm.runtime.tensor(np.array([seed], dtype=np.int64)), out)
    return out.numpy()


@pytest.mark.parametrize("counter, key, expected", kat_rows())
def test_numpy_known_answers(counter, key, expected):
    out = philox4x32_np(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert out.dtype == np.uint32
    assert out.tolist() == expected


def test_numpy_vectorises_over_counters():
    rows = kat_rows()
    ctr = np.array([rows[2][0]] * 5, np.uint32).reshape(5, 1, 4)
    out = philox4x32_np(ctr, np.array(rows[2][1], np.uint32))
    assert out.shape == (5, 1, 4)
    assert (out == np.array(rows[2][2], np.uint32)).all()


@pytest.mark.parametrize("counter, key, expected", kat_rows())
def test_tir_folds_constant_inputs_to_the_known_answer(counter, key, expected):
    assert philox4x32_tir(counter, key) == expected


def philox_prim_func(m):
    """out[j] = philox4x32(ctr[j], key): every word a run-time value."""

    def word(i, ctr, key, j):
        counter = [ctr[j, 0], ctr[j, 1], ctr[j, 2], ctr[j, 3]]
        if i % 2:  # both forms of the builder: the list of four words ...
            return philox4x32_tir(counter, [key[0], key[1]])[i]
        # ... and a body over the shared words
        return philox4x32_tir(counter, [key[0], key[1]], lambda words: words[i])

    @T.prim_func
    def philox(ctr: T.Buffer((m, 4), "uint32"), key: T.Buffer((2,), "uint32"),
               out: T.Buffer((m, 4), "uint32")):
        for j in range(m):
            out[j, 0] = word(0, ctr, key, j)
            out[j, 1] = word(1, ctr, key, j)
            out[j, 2] = word(2, ctr, key, j)
            out[j, 3] = word(3, ctr, key, j)

    return philox.with_attr("global_symbol", "main")


def test_tir_known_answers_at_run_time():
    ex = tvm.compile(philox_prim_func(1), target=LLVM)
    for counter, key, expected in kat_rows():
        out = tvm.runtime.tensor(np.zeros((1, 4), np.uint32))
        ex["main"](tvm.runtime.tensor(np.array([counter], np.uint32)),
                   tvm.runtime.tensor(np.array(key, np.uint32)), out)
        assert out.numpy()[0].tolist() == expected


def test_tir_matches_numpy_on_random_words():
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2**32, size=(2000, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32)
    ex = tvm.compile(philox_prim_func(len(ctr)), target=LLVM)
    out = tvm.runtime.tensor(np.zeros(ctr.shape, np.uint32))
    ex["main"](tvm.runtime.tensor(ctr), tvm.runtime.tensor(key), out)
    np.testing.assert_array_equal(out.numpy(), philox4x32_np(ctr, key))


@pytest.mark.parametrize("stream", [0, 7, 2**32 - 1])
def test_tir_uniforms_equal_numpy_bit_for_bit(stream):
    n = 100_000
    ex = tvm.compile(uniform_prim_func(n, stream), target=LLVM)
    for seed in [0, 1, 12345, 2**40 + 5, -1, 2**63 - 1]:
        out = tvm.runtime.tensor(np.zeros(n, dtype=np.float64))
        ex["main"](tvm.runtime.tensor(np.array([seed], dtype=np.int64)), out)
        expected = uniform01_np(seed, stream, np.arange(n))
        # bit for bit, not approximately
        np.testing.assert_array_equal(out.numpy().view(np.uint64), expected.view(np.uint64))


@pytest.mark.parametrize("first", [2**32 - 500, 2**40, 2**62])
def test_high_counter_word(first):
    out = run_uniform(1000, 3, 99, first)
    expected = uniform01_np(99, 3, first + np.arange(1000, dtype=np.uint64))
    np.testing.assert_array_equal(out, expected)


def test_seed_is_the_int64_bits():
    # a negative int64 seed is the same key as its unsigned 64-bit value
    np.testing.assert_array_equal(uniform01_np(-1, 0, np.arange(10)),
                                  uniform01_np(2**64 - 1, 0, np.arange(10)))


def test_uniformity():
    u = uniform01_np(20240601, 0, np.arange(200_000))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # 53 bits: the low bits are used too
    assert np.unique((u * 2.0**53).astype(np.uint64) & np.uint64(1)).size == 2
    # consecutive values are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_tir_uniforms_are_uniform():
    u = run_uniform(50_000, 5, 777)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_streams_and_seeds_give_different_sequences():
    n = 10_000
    base = uniform01_np(42, 0, np.arange(n))
    others = [
        uniform01_np(42, 1, np.arange(n)),
        uniform01_np(43, 0, np.arange(n)),
        uniform01_np(42 + 2**32, 0, np.arange(n)),  # the high seed word matters
    ]
    for other in others:
        assert np.count_nonzero(other == base) < 5
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.05
    # the same inputs give the same numbers
    np.testing.assert_array_equal(base, uniform01_np(42, 0, np.arange(n)))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="stream"):
        uniform01_np(0, 2**32, 0)
    with pytest.raises(ValueError, match="seed"):
        uniform01_np(2**64, 0, 0)
    with pytest.raises(ValueError, match="counter"):
        uniform01_np(0, 0, -1)
    with pytest.raises(ValueError, match="4 words"):
        philox4x32_np(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
