"""Tests of mctvm.mcq, the numpy reference of Monte Carlo Quantization (MCQ)."""

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mctvm import mcq
from mctvm.mcq import MCQError, activation_counts, int_dtype_for, sample_counts

# ---------------------------------------------------------------------------
# reference vectors: a copy of shared/testdata/mcq-vectors.json, shipped with the tests

_CASES = json.loads((Path(__file__).parent / "data" / "mcq-vectors.json").read_text())["cases"]


@pytest.mark.parametrize("case", _CASES, ids=[c["name"] for c in _CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_vectors(case, dtype):
    v = np.array(case["values"], dtype=dtype)
    r = sample_counts(v, case["K"], case["xi"], sort=case["sort"])
    assert r.N == case["N"]
    assert r.counts.dtype == np.int64
    assert r.counts.tolist() == case["counts"]
    assert r.l1 == pytest.approx(case["l1"], rel=1e-6)
    assert r.scale == pytest.approx(case["l1"] / case["N"], rel=1e-6)


def test_reference_sort_case_needs_a_stable_sort():
    """'tiny-sorted' has |0.125| == |-0.125|: only the stable tie order matches."""
    case = next(c for c in _CASES if c["name"] == "tiny-sorted")
    v = np.array(case["values"])
    a = np.abs(v)
    assert len(np.unique(a)) < len(a)  # the case really has ties
    stable = np.argsort(a, kind="stable")
    # same |v| order, ties broken by descending index instead
    reverse_ties = np.lexsort((-np.arange(len(a)), a))
    assert not np.array_equal(stable, reverse_ties)
    assert ref_ceil(v, case["K"], case["xi"], order=stable).tolist() == case["counts"]
    assert ref_ceil(v, case["K"], case["xi"], order=reverse_ties).tolist() != case["counts"]


# ---------------------------------------------------------------------------
# references written independently of mcq.py


def ref_ceil(v, K, xi, sort=False, order=None):
    """The formula, whole-array, no tiling: diff(ceil(N * cumsum(|v|)/f - xi)).

    ceil(y - xi) is taken exactly for y = fl(N * P) (as the docstring of mcq defines).
    """
    v = np.asarray(v, dtype=np.float64).ravel()
    if order is None:
        order = np.argsort(np.abs(v), kind="stable") if sort else np.arange(v.size)
    a = np.abs(v[order])
    cs = np.cumsum(a)
    N = math.floor(K * v.size + 0.5)
    if cs[-1] == 0:
        return np.zeros(v.size, np.int64)
    P = cs / cs[-1]
    P[-1] = 1.0
    y = N * P
    t = np.ceil(y - xi)  # float rounding of y - xi can only matter next to an integer:
    near = np.abs(y - xi - np.round(y - xi)) <= 4 * N * np.finfo(np.float64).eps
    for i in np.flatnonzero(near):
        t[i] = math.ceil(Fraction(float(y[i])) - Fraction(xi))  # exact there
    c = np.diff(t.astype(np.int64), prepend=0)
    out = np.empty_like(c)
    out[order] = c
    return np.where(v < 0, -out, out)


def ref_search(v, K, xi, sort=False, dtype=np.float64):
    """The paper's definition: sample x_j = (j + xi)/N hits i iff P_{i-1} <= x_j < P_i.

    Returns (signed counts, tie) where tie marks the elements with a CDF edge
    (its own P_i or its predecessor's P_{i-1}, in CDF order) within rounding of a
    sample: N*P - xi within 16 N eps of an integer. Only there may two correct
    float64 evaluations disagree. dtype=float32 accumulates the CDF in float32 (what
    a naive kernel would do).
    """
    v = np.asarray(v).ravel()
    order = np.argsort(np.abs(v), kind="stable") if sort else np.arange(v.size)
    a = np.abs(v[order]).astype(dtype)
    cs = np.cumsum(a, dtype=dtype)
    P = (cs / cs[-1]).astype(np.float64)
    P[-1] = 1.0
    N = math.floor(K * v.size + 0.5)
    x = (np.arange(N) + xi) / N
    hit = np.searchsorted(P, x, side="right")  # first i with x < P_i
    c = np.bincount(hit, minlength=v.size)[: v.size]
    t = N * P - xi
    edge = np.abs(t - np.round(t)) < 16 * N * np.finfo(np.float64).eps
    edge[1:] |= edge[:-1].copy()  # edge k is element k's top and element k+1's bottom
    out = np.empty_like(c)
    out[order] = c
    tie = np.empty_like(edge)
    tie[order] = edge
    return np.where(v < 0, -out, out), tie


def assert_agree_except_near_ties(counts, ref, tie):
    """counts == ref except (by at most one sample per edge) at near-tie elements."""
    counts, ref = counts.ravel(), ref.ravel()
    diff = counts != ref
    if diff.any():
        assert np.all(np.abs(counts[diff] - ref[diff]) <= 2)
        bad = np.flatnonzero(diff & ~tie)
        assert bad.size == 0, f"disagreement away from a tie at {bad[:5]}"
    return int(diff.sum())


# ---------------------------------------------------------------------------
# invariants


def _check_invariants(v, r, K):
    a = np.abs(np.asarray(v, dtype=np.float64))
    f = a.sum()
    N = math.floor(K * a.size + 0.5)
    assert r.N == N
    assert r.counts.shape == np.shape(v) and r.counts.dtype == np.int64
    if f == 0:
        assert not r.counts.any() and r.scale == 0.0
        return
    assert int(np.abs(r.counts).sum()) == N  # exactly N samples
    assert np.all(r.counts[a == 0] == 0)
    nz = r.counts != 0
    assert np.all(np.sign(r.counts[nz]) == np.sign(np.asarray(v)[nz]))
    dev = np.abs(r.counts) - N * a / f  # stratified: strictly within one sample
    slack = 64 * N * np.finfo(np.float64).eps  # cumsum rounding of P (tiny)
    assert np.all(dev > -1 - slack) and np.all(dev < 1 + slack)


@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("K", [0.5, 1, 2.5, 5])
def test_invariants_gaussian(sort, K):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((64, 3, 3, 3)).astype(np.float32)
    for xi in (0.0, 0.25, 0.5, 0.999):
        r = sample_counts(v, K, xi, sort=sort)
        _check_invariants(v, r, K)
        dev = np.abs(r.counts) - r.N * np.abs(v.astype(np.float64)) / r.l1
        assert np.all((-1 < dev) & (dev < 1))  # strict, as in the paper's bound


_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    v=hnp.arrays(np.float32, st.integers(1, 300), elements=_finite | st.just(0.0)),
    K=st.floats(0.05, 20),
    xi=st.floats(0, 1, exclude_max=True),
    sort=st.booleans(),
)
def test_invariants_property(v, K, xi, sort):
    assume(math.floor(K * v.size + 0.5) >= 1)
    r = sample_counts(v, K, xi, sort=sort)
    _check_invariants(v, r, K)
    assert r.counts.tolist() == ref_ceil(v, K, xi, sort=sort).tolist()
    if r.l1 > 0:
        ref, tie = ref_search(v, K, xi, sort=sort)
        assert_agree_except_near_ties(r.counts, ref, tie)


def test_unbiased_over_xi_grid():
    """mean over xi of count_i equals N p_i.

    For a fixed c, ceil(c - xi) averaged over uniform xi is exactly c; over the
    midpoint grid xi_k = (k + 1/2)/M it is off by at most 1/(2M). A count is a
    difference of two such terms, so |mean - N p_i| <= 1/M = 5e-4 (deterministic,
    no statistical tolerance needed).
    """
    rng = np.random.default_rng(2)
    v = rng.standard_normal(50)
    v[[3, 17]] = 0.0
    M = 2000
    grid = (np.arange(M) + 0.5) / M
    exact = 2 * 50 * np.abs(v) / np.abs(v).sum()  # N p_i, K = 2
    means = {}
    for sort in (False, True):
        total = np.zeros(50)
        for xi in grid:
            total += np.abs(sample_counts(v, 2.0, xi, sort=sort).counts)
        means[sort] = total / M
        assert np.max(np.abs(means[sort] - exact)) <= 1 / M + 1e-12
    # sorting changes the samples, not their expectation
    assert np.max(np.abs(means[False] - means[True])) <= 2 / M + 1e-12


def test_unbiased_random_xi():
    """With xi ~ U[0,1), E[count_i] = N p_i; 4000 draws, |count - N p| < 1: 5-sigma bound."""
    rng = np.random.default_rng(3)
    v = rng.standard_cauchy(30)
    T = 4000
    exact = 30 * np.abs(v) / np.abs(v).sum()
    total = np.zeros(30)
    for xi in rng.random(T):
        total += np.abs(sample_counts(v, 1.0, xi).counts)
    # each count lies in an interval of width < 2 around N p_i: sd <= 1, so the mean's
    # sd <= 1/sqrt(T); 5 sd keeps the false-alarm rate below 1e-5 per element
    assert np.max(np.abs(total / T - exact)) < 5 / math.sqrt(T)


def test_convergence_in_K():
    """Relative L1 error of counts*scale falls as K grows (about like 1/K)."""
    rng = np.random.default_rng(4)
    v = rng.standard_normal(4096).astype(np.float32)
    errs = []
    for K in (1, 4, 16, 64):
        e = [
            np.abs(sample_counts(v, K, xi).dequantize() - v).sum() / np.abs(v).sum()
            for xi in (np.arange(16) + 0.5) / 16
        ]
        errs.append(np.mean(e))
    for lo, hi in zip(errs[1:], errs[:-1]):
        assert lo < hi / 2, errs  # K x4 => error at least halves
    assert errs[-1] < 0.05


# ---------------------------------------------------------------------------
# exactness against the independent search reference, and why float64 matters


@pytest.mark.parametrize(
    "n, K, sort", [(10, 3.0, False), (1000, 1.0, True), (100_003, 2.0, False), (70_000, 0.7, True)]
)
def test_agrees_with_search_reference(n, K, sort):
    rng = np.random.default_rng(n)
    v = rng.standard_cauchy(n).astype(np.float32)
    xi = rng.random()
    r = sample_counts(v, K, xi, sort=sort)
    assert int(np.abs(r.counts).sum()) == r.N
    ref, tie = ref_search(v, K, xi, sort=sort)
    assert_agree_except_near_ties(r.counts, ref, tie)
    assert np.array_equal(r.counts, ref_ceil(v, K, xi, sort=sort))  # tiling is exact


def test_large_heavy_tail_exact_where_float32_is_not():
    """3M Cauchy values: float32 accumulation of the CDF misplaces many hits; ours matches."""
    rng = np.random.default_rng(5)
    v = rng.standard_cauchy(3_000_000).astype(np.float32)
    xi = 0.37
    r = sample_counts(v, 1.0, xi)
    assert r.N == 3_000_000
    assert int(np.abs(r.counts).sum()) == r.N
    ref, tie = ref_search(v, 1.0, xi)
    assert assert_agree_except_near_ties(r.counts, ref, tie) <= 2
    bad32, _ = ref_search(v, 1.0, xi, dtype=np.float32)
    assert int(np.abs(bad32).sum()) == r.N  # still N hits (P_last = 1) ...
    assert np.count_nonzero(bad32 != ref) > 1000  # ... but in the wrong places


# ---------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("sort", [False, True])
def test_all_zero(sort):
    r = sample_counts(np.zeros((4, 5), np.float32), 2.0, 0.5, sort=sort)
    assert r.N == 40 and r.l1 == 0.0 and r.scale == 0.0
    assert r.counts.shape == (4, 5) and not r.counts.any()
    assert r.sparsity == 1.0 and r.bits == 1
    assert not r.dequantize().any()


_XI_MAX = float(np.nextafter(1.0, 0.0))  # 1 - 2**-53, the largest legal xi


@pytest.mark.parametrize("xi", [0.0, 0.5, 0.999, _XI_MAX])
def test_single_element(xi):
    for v, K, want in (([-3.0], 5, -5), ([2.0], 1, 1), ([0.5], 2.4, 2), ([7.0], 0.5, 1)):
        r = sample_counts(np.array(v), K, xi)
        assert r.counts.tolist() == [want]
        assert r.dequantize()[0] == pytest.approx(v[0])
    r = sample_counts(np.float32(-1.5), 3, xi)  # 0-d input
    assert r.counts.shape == () and int(r.counts) == -3


@pytest.mark.parametrize("xi", [0.0, 5e-324, _XI_MAX])
def test_extreme_xi_keeps_all_samples(xi):
    """fl(N*P - xi) would drop xi's low bits (N=2, xi=1-2**-53 gives fl(2 - xi) = 1,
    losing a sample); ceil(y - xi) is taken exactly, so the sum stays N."""
    v = np.random.default_rng(10).standard_normal(100_000).astype(np.float32)
    for K in (0.02, 1.0, 7.0):
        for sort in (False, True):
            r = sample_counts(v, K, xi, sort=sort)
            assert int(np.abs(r.counts).sum()) == r.N
            assert np.array_equal(r.counts, ref_ceil(v, K, xi, sort=sort))


def test_does_not_modify_input():
    v = np.random.default_rng(6).standard_normal(1000)
    keep = v.copy()
    for sort in (False, True):
        sample_counts(v, 2, 0.3, sort=sort)
        sample_counts(v.astype(np.float32), 2, 0.3, sort=sort)
    assert np.array_equal(v, keep)


def test_result_properties():
    v = np.array([0.5, -0.25, 0.125, 0.0, -0.125])
    r = sample_counts(v, 2.0, 0.3)  # counts [5, -3, 1, 0, -1]
    assert r.sparsity == pytest.approx(0.2)
    assert r.bits == 4  # ceil(log2(5 + 1)) + 1
    assert r.dequantize().dtype == np.float32
    assert r.dequantize().tolist() == pytest.approx([0.5, -0.3, 0.1, 0.0, -0.1])
    assert int_dtype_for(r.counts) is np.int8


def test_int_dtype_for():
    assert int_dtype_for(np.array([127, -128])) is np.int8
    assert int_dtype_for(np.array([128])) is np.int16
    assert int_dtype_for(np.array([-129])) is np.int16
    assert int_dtype_for(np.array([40000])) is np.int32
    assert int_dtype_for(np.zeros(0, np.int64)) is np.int8
    with pytest.raises(MCQError, match="int32"):
        int_dtype_for(np.array([2**40]))


def test_mixed_dtypes_and_layout():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    want = sample_counts(w, 3, 0.4).counts
    assert np.array_equal(sample_counts(np.asfortranarray(w), 3, 0.4).counts, want)
    assert np.array_equal(sample_counts(w.astype(np.float64), 3, 0.4).counts, want)
    assert np.array_equal(sample_counts(w.astype(">f4"), 3, 0.4, sort=True).counts,
                          sample_counts(w, 3, 0.4, sort=True).counts)
    r = sample_counts(np.arange(-3, 4), 1, 0.5)  # integers are accepted
    assert int(np.abs(r.counts).sum()) == 7


# ---------------------------------------------------------------------------
# order="sign": the CDF runs slice by slice along `axis`, positives before negatives


def _sign_permutation(v, axis):
    """Flat indices of moveaxis(v, axis, 0) in sign order, built one slice at a time."""
    moved = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
    m = moved.shape[1]
    perm = []
    for c, row in enumerate(moved):
        perm += [c * m + j for j in range(m) if not np.signbit(row[j])]
        perm += [c * m + j for j in range(m) if np.signbit(row[j])]
    return np.array(perm)


@pytest.mark.parametrize("normalize", ["layer", "channel"])
@pytest.mark.parametrize("shape, axis", [((8, 3, 3, 3), 0), ((40, 6), 1), ((5, 4, 3), -1),
                                         ((1, 9), 0)])
def test_sign_order_is_natural_order_of_the_permuted_values(shape, axis, normalize):
    """Independent reference: permute explicitly, sample in natural order, scatter back."""
    rng = np.random.default_rng(11)
    v = rng.standard_normal(shape).astype(np.float32)
    C = v.shape[axis]
    xi = rng.random(C) if normalize == "channel" else 0.37
    r = sample_counts(v, 1.5, xi, normalize=normalize, axis=axis, order="sign")
    flat = np.moveaxis(v, axis, 0).ravel()
    perm = _sign_permutation(v, axis)
    if normalize == "layer":
        permuted = sample_counts(flat[perm], 1.5, xi).counts
    else:
        permuted = sample_counts(flat[perm].reshape(C, -1), 1.5, xi, normalize="channel",
                                 axis=0).counts.ravel()
    want = np.empty_like(permuted)
    want[perm] = permuted
    assert np.array_equal(np.moveaxis(r.counts, axis, 0).ravel(), want)
    _check_invariants(v, r, 1.5) if normalize == "layer" else None


@settings(max_examples=100, deadline=None, database=None)
@given(
    v=hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 40)),
                 elements=st.floats(-100, 100, width=32)),
    K=st.floats(0.1, 8),
    xi=st.floats(0, 1, exclude_max=True),
)
def test_sign_order_keeps_each_channels_signed_sums(v, K, xi):
    """Hits of consecutive values are within 1 of N times their share: with the signs
    grouped, each output channel's positive and negative weights each keep their sum."""
    assume(math.floor(K * v.size + 0.5) >= 1)
    r = sample_counts(v, K, xi, order="sign")
    _check_invariants(v, r, K)
    if r.l1 == 0:
        return
    share = r.N * v.astype(np.float64) / r.l1
    for sign in (1, -1):
        part = sign * v > 0
        err = (r.counts * part).sum(axis=1) - (share * part).sum(axis=1)
        assert np.all(np.abs(err) <= 1 + 1e-9)  # < 1 exactly; float64 shares may round to 1


def test_natural_order_does_not_keep_signed_sums():
    """The property above is the order's doing: interleaved signs break it."""
    v = np.tile([1.0, -1.0], (1, 50)).astype(np.float32)  # 100 alternating weights
    natural = sample_counts(v, 0.5, 0.25)  # samples at 0.005 + 0.02 j: every one on a +1
    grouped = sample_counts(v, 0.5, 0.25, order="sign")
    assert natural.counts.sum() == 50
    assert grouped.counts.sum() == 0  # 25 hits on each side


def test_sign_order_is_unbiased_over_xi_grid():
    rng = np.random.default_rng(12)
    v = rng.standard_normal((5, 10))
    M = 2000
    total = np.zeros_like(v)
    for xi in (np.arange(M) + 0.5) / M:
        total += np.abs(sample_counts(v, 2.0, xi, order="sign").counts)
    assert np.max(np.abs(total / M - 100 * np.abs(v) / np.abs(v).sum())) <= 1 / M + 1e-12


# ---------------------------------------------------------------------------
# channel mode and activations


@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("shape, axis", [((16, 3, 3, 3), 0), ((5, 7), 1), ((4, 70_000), 0),
                                         ((6000, 5), 0), ((3, 4, 5), -1)])
def test_channel_mode(shape, axis, sort):
    rng = np.random.default_rng(8)
    v = rng.standard_normal(shape).astype(np.float32)
    moved = np.moveaxis(v, axis, 0)
    C = moved.shape[0]
    moved[C // 2] = 0.0  # one all-zero channel
    xi = rng.random(C)
    K = 1.5
    r = sample_counts(v, K, xi, sort=sort, normalize="channel", axis=axis)
    nc = v.size // C
    assert r.counts.shape == v.shape
    assert np.all(r.N == math.floor(K * nc + 0.5)) and r.N.shape == (C,)
    assert r.scale.shape == (C,) and r.l1.shape == (C,)
    cm = np.moveaxis(r.counts, axis, 0).reshape(C, -1)
    sums = np.abs(cm).sum(axis=1)
    assert sums[C // 2] == 0 and r.scale[C // 2] == 0
    assert np.all(np.delete(sums, C // 2) == np.delete(r.N, C // 2))
    for c in (0, C - 1):  # each channel is a layer-wise MCQ of its own slice
        lay = sample_counts(moved[c], K, xi[c], sort=sort)
        assert np.array_equal(cm[c], lay.counts.ravel())
        assert r.scale[c] == lay.scale
    deq = r.dequantize()
    assert deq.shape == v.shape
    assert np.array_equal(np.moveaxis(deq, axis, 0)[C - 1], lay.dequantize())
    # one shared xi works too
    r2 = sample_counts(v, K, 0.5, normalize="channel", axis=axis)
    assert np.all(np.delete(np.abs(np.moveaxis(r2.counts, axis, 0)).reshape(C, -1).sum(1), C // 2)
                  == np.delete(r2.N, C // 2))


def test_activation_counts_per_sample():
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((4, 8, 5, 5)), 0).astype(np.float32)
    x[2] = 0.0  # a dead sample
    K = 3.0
    r = activation_counts(x, K, 0.25)
    n = x[0].size
    assert r.counts.dtype == np.int64 and r.counts.shape == x.shape
    assert r.scale.shape == (4,) and np.all(r.N == math.floor(K * n + 0.5))
    for b in range(4):
        lay = sample_counts(x[b], K, 0.25)
        assert np.array_equal(r.counts[b], lay.counts)
        assert r.scale[b] == lay.scale
        assert np.abs(r.counts[b]).sum() == (0 if b == 2 else r.N[b])
    assert np.all(r.counts >= 0)  # ReLU outputs: unsigned counts
    xis = np.array([0.1, 0.2, 0.3, 0.4])
    r2 = activation_counts(x, K, xis)
    for b in range(4):
        assert np.array_equal(r2.counts[b], sample_counts(x[b], K, xis[b]).counts)
    whole = activation_counts(x, K, 0.25, per_sample=False)
    assert np.array_equal(whole.counts, sample_counts(x, K, 0.25).counts)
    assert whole.scale.shape == (4,)
    assert np.allclose(r.dequantize(), r.counts * r.scale[:, None, None, None])
    with pytest.raises(MCQError, match="one per sample"):
        activation_counts(x, K, np.array([0.1, 0.2]))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 3000), st.integers(1, 700),
       st.floats(0.25, 8), st.floats(0, 0.999), st.integers(0, 2**31))
def test_blocked_scan_keeps_the_invariants(batch, n, block, K, xi, seed):
    # the run-time kernel's blocked scan: exact totals, within one count of the serial
    # scan, also when one block holds the whole sample (its lanes sum in another order)
    x = np.random.default_rng(seed).standard_cauchy((batch, n)).astype(np.float32)
    serial = activation_counts(x, K, xi)
    blocked = activation_counts(x, K, xi, scan_block=block)
    assert np.array_equal(np.abs(blocked.counts).sum(axis=1), serial.N)
    assert np.abs(blocked.counts - serial.counts).max() <= 1
    assert np.all(np.sign(blocked.counts) * np.sign(x) >= 0)
    np.testing.assert_allclose(blocked.l1, serial.l1, rtol=1e-12)
    whole = activation_counts(x, K, xi, scan_block=n)
    assert np.abs(whole.counts - serial.counts).max() <= 1
    np.testing.assert_allclose(whole.l1, serial.l1, rtol=1e-12)


@pytest.mark.parametrize("n", [8, 24, 40])
def test_lane_scan_sums_in_the_documented_order(n):
    # one value at a time, as its docstring spells the order out: within each chunk of 8,
    # lane l adds lane l - 1, then l - 2, then l - 4; chunk totals carried serially
    values = np.random.default_rng(n).random(n) * 10.0 ** np.random.default_rng(1).integers(
        -8, 8, n)
    want, carry = [], 0.0
    for chunk in values.reshape(-1, 8):
        v = list(chunk)
        for k in (1, 2, 4):
            v = [v[l] + v[l - k] if l >= k else v[l] for l in range(8)]
        want += [carry + x for x in v]
        carry = carry + v[7]
    got = values.copy()
    mcq._lane_scan(got)
    assert got.tolist() == want
    assert not np.array_equal(got, np.cumsum(values)) or n == 8  # not the serial order


def test_blocked_scan_bad_arguments():
    x = np.ones((2, 5), np.float32)
    with pytest.raises(MCQError, match="scan_block"):
        activation_counts(x, 1, 0.5, scan_block=0)
    with pytest.raises(MCQError, match="per_sample=True"):
        activation_counts(x, 1, 0.5, per_sample=False, scan_block=4)


# ---------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(values=[1.0, np.nan]), "NaN"),
        (dict(values=[1.0, np.inf]), "Inf"),
        (dict(values=np.array([-np.inf, 2.0], np.float32)), "Inf"),
        (dict(values=np.array([1e308, 1e308])), "overflows"),
        (dict(K=0), "K must be a positive finite number, got 0"),
        (dict(K=-1), "K=5 is the paper's ImageNet setting"),
        (dict(K=float("nan")), "K must be a positive finite"),
        (dict(K=float("inf")), "K must be a positive finite"),
        (dict(K="five"), "K must be a positive finite"),
        (dict(K=1e-3), "0 samples"),
        (dict(values=[]), "empty"),
        (dict(values=np.zeros((3, 0))), "empty"),
        (dict(values=np.array([1 + 1j])), "real float"),
        (dict(xi=1.0), r"xi must lie in \[0, 1\)"),
        (dict(xi=-0.1), r"xi must lie in \[0, 1\)"),
        (dict(xi=float("nan")), r"xi must lie in \[0, 1\)"),
        (dict(xi=[0.1, 0.2]), "one number"),
        (dict(normalize="neuron"), "'layer' or 'channel'"),
        (dict(normalize="channel", axis=3), "axis=3 is out of range"),
        (dict(order="sign", axis=2), "axis=2 is out of range"),
        (dict(order="magnitude"), "order must be one of"),
    ],
)
def test_errors(kwargs, match):
    args = dict(values=[0.5, -1.0, 2.0], K=2.0, xi=0.5)
    args.update(kwargs)
    values = args.pop("values")
    with pytest.raises(MCQError, match=match) as e:
        sample_counts(values, **args)
    assert isinstance(e.value, ValueError)


def test_error_names_first_bad_index():
    v = np.ones(100, np.float32)
    v[[42, 77]] = np.nan
    with pytest.raises(MCQError, match="2 NaN and 0 Inf.*index 42"):
        sample_counts(v, 1, 0.5)
    with pytest.raises(MCQError, match="NaN"):
        activation_counts(v.reshape(4, 25), 1, 0.5)
    with pytest.raises(MCQError, match="NaN"):
        sample_counts(v, 1, 0.5, sort=True)


def test_module_has_no_tvm_import():
    assert "tvm" not in mcq.__dict__
