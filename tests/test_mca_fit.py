"""Tests for mctvm.mca_fit: the MCALIB regression (K, t_min) of MCA trials."""

import math
from pathlib import Path

import numpy as np
import pytest

from mctvm import mca_fit
from mctvm.mca_fit import fit, fit_from_file, fit_rsd, read_mcalib, relative_std


# MCALIB's LINPACK trials: a copy of shared/testdata/mcalib-linpack.res, shipped with the tests
LINPACK = Path(__file__).parent / "data" / "mcalib-linpack.res"


def _exact_samples(t_values, c=1.0, mu=1.0, low_t_rsd=None):
    """Two trials per t, mu*(1 -/+ a), so that sample sd / mu == c * 2^-t.

    With ``low_t_rsd=(t_break, r)``, every t < t_break gets rsd r instead.
    """
    samples = {}
    for t in t_values:
        rsd = c * 2.0 ** -t
        if low_t_rsd is not None and t < low_t_rsd[0]:
            rsd = low_t_rsd[1]
        a = rsd / math.sqrt(2.0)  # sample sd of {1-a, 1+a} is a*sqrt(2)
        samples[t] = mu * np.array([1.0 - a, 1.0 + a])
    return np.array(sorted(samples)), samples


# --------------------------------------------------------------------------- reference


def test_mcalib_linpack_reference():
    f = fit_from_file(LINPACK)
    # Values printed by the MCALIB R script (R/mca.r) on this file.
    assert f.digits_lost == pytest.approx(5.14556, abs=5e-5)
    assert f.ci_halfwidth == pytest.approx(0.01353642, abs=5e-8)
    assert f.t_min == 13
    assert f.intercept == pytest.approx(1.549679, abs=5e-6)
    assert f.slope == pytest.approx(-math.log10(2))
    assert f.t.tolist() == list(range(1, 54))
    assert f.dropped == ()
    assert f.outlier[11] and not f.outlier[12:].any()  # t = 12 is the highest outlier
    assert f.convention == mca_fit.DEFAULT_CONVENTION == "paper: 2^(E-t)"
    assert f.weights[-1] == 1.0 and f.weights[-2] == 0.75
    text = str(f)
    assert "t_min = 13" in text and "5.14556" in text and "paper: 2^(E-t)" in text


def test_read_mcalib_linpack_shape():
    t, samples = read_mcalib(LINPACK)
    assert t.dtype.kind == "i" and t.tolist() == list(range(1, 54))
    assert all(len(samples[k]) == 1024 for k in t)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("c", [1.0, 3.0, 0.5])
def test_exact_power_law_gives_log2_c(c):
    t, samples = _exact_samples(range(1, 17), c=c, mu=-2.5)  # sign of mu must not matter
    ts, rsd, k_t = relative_std(samples)
    np.testing.assert_allclose(rsd, c * 2.0 ** -ts, rtol=1e-9)
    np.testing.assert_allclose(k_t, math.log2(c), atol=1e-9)
    f = fit(t, samples)
    assert f.digits_lost == pytest.approx(math.log2(c), abs=1e-9)
    assert f.intercept == pytest.approx(math.log10(c), abs=1e-9)
    assert not f.outlier.any()
    assert f.t_min == 1
    assert f.ci_halfwidth == pytest.approx(0.0, abs=1e-8)


def test_breakdown_at_low_t_sets_t_min():
    # rsd = 2^(2-t) for t >= 5, saturated at 1 below: K = 2, t_min = 5.
    t, samples = _exact_samples(range(1, 17), c=4.0, low_t_rsd=(5, 1.0))
    f = fit(t, samples)
    assert f.t_min == 5
    assert f.digits_lost == pytest.approx(2.0, abs=1e-9)
    assert f.outlier.tolist()[:4] == [True, False, True, True]  # t = 2 lies on the line
    assert f.used.tolist() == [False] * 4 + [True] * 12
    rows = f.as_table()
    assert [r["t"] for r in rows] == list(range(1, 17))
    assert rows[3]["outlier"] and not rows[3]["used"] and rows[4]["used"]
    # max_t keeps only the first t; the breakdown is still found.
    g = fit(t, samples, max_t=10, convention="mcalib: 2^(E+2-t)")
    assert g.t.tolist() == list(range(1, 11)) and g.t_min == 5
    assert g.digits_lost == pytest.approx(2.0, abs=1e-9)
    assert g.convention == "mcalib: 2^(E+2-t)" and "mcalib: 2^(E+2-t)" in str(g)


def test_monte_carlo_uniform_noise():
    # x = 1 + 2^(3-t) * U(-1/2, 1/2): rsd = 2^(3-t)/sqrt(12), K = 3 - log2(sqrt 12).
    rng = np.random.default_rng(0)
    t = np.arange(1, 21)
    samples = {int(k): 1.0 + 2.0 ** (3 - k) * rng.uniform(-0.5, 0.5, 1000) for k in t}
    f = fit(t, samples)
    expected = 3 - math.log2(math.sqrt(12))
    assert abs(f.digits_lost - expected) < 4 * f.ci_halfwidth + 0.01
    assert f.t_min <= 4


def test_undefined_statistics_are_dropped():
    t, samples = _exact_samples(range(1, 9))
    samples[9] = np.array([1.0, 1.0, 1.0])  # sd = 0, as in R's `sd > 0` filter
    samples[10] = np.array([1.0])  # one trial: sd undefined
    f = fit(np.arange(1, 11), samples)
    assert f.dropped == (9, 10) and f.t.tolist() == list(range(1, 9))
    assert "dropped" in str(f)
    with pytest.raises(ValueError, match="no samples for t"):
        fit([1, 2, 42], samples)
    with pytest.raises(ValueError, match="no virtual precision"):
        fit([9, 10], samples)


def test_fit_rsd_matches_fit():
    t, samples = _exact_samples(range(1, 13), c=2.0, low_t_rsd=(3, 1.0))
    a = fit(t, samples)
    ts, rsd, _ = relative_std(samples)
    b = fit_rsd(ts, rsd)
    assert (a.t_min, a.digits_lost, a.intercept) == (b.t_min, b.digits_lost, b.intercept)


# --------------------------------------------------------------------------- reader


def _write(tmp_path, text):
    p = tmp_path / "trials.res"
    p.write_text(text)
    return p


def test_reader_accepts_mcalib_format(tmp_path):
    p = _write(tmp_path, "Type, t, x\nLINPACK, 2, 1.5\n\nLINPACK, 1, 2.0\nLINPACK,1,  3e0\n")
    t, samples = read_mcalib(p)
    assert t.tolist() == [1, 2]
    np.testing.assert_array_equal(samples[1], [2.0, 3.0])
    np.testing.assert_array_equal(samples[2], [1.5])


@pytest.mark.parametrize(
    "text, match",
    [
        ("t, x\n1, 2.0\n", r":1: expected the header 'Type, t, x'"),
        ("Type, t, x\nA, 1, 2.0\nA, 1\n", r":3: expected 3 comma-separated fields"),
        ("Type, t, x\nA, 1, 2.0, 4\n", r":2: expected 3 comma-separated fields"),
        ("Type, t, x\nA, 1.5, 2.0\n", r":2: t must be a positive integer"),
        ("Type, t, x\nA, one, 2.0\n", r":2: t must be a positive integer"),
        ("Type, t, x\n\nA, 1, 2.0\nA, 2, abc\n", r":4: x must be a number"),
        ("Type, t, x\n", r"no data rows"),
        ("", r"empty file"),
        ("Type, t, x\nA, 1, 2.0\nB, 1, 2.0\n", r"several series \['A', 'B'\]"),
    ],
)
def test_reader_errors(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as err:
        read_mcalib(p)
    assert str(p) in str(err.value)


def test_reader_series_selection(tmp_path):
    p = _write(tmp_path, "Type, t, x\nA, 1, 2.0\nB, 1, 3.0\nB, 1, 4.0\n")
    t, samples = read_mcalib(p, series="B")
    np.testing.assert_array_equal(samples[1], [3.0, 4.0])
    with pytest.raises(ValueError, match="no series 'C'"):
        read_mcalib(p, series="C")
