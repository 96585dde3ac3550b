"""Quantized floating point with stochastic rounding (MCDA appendix A.2)."""

import numpy as np
import pytest
import scipy.stats
import tvm
from tvm import te

import mctvm
from mctvm.kernels.float_format import format_limits, round_np, round_te
from mctvm.models import synthetic

from conftest import ort_run


def _representable(e_bits, m_bits):
    low, largest = format_limits(e_bits, m_bits)
    values = [k * 2.0 ** (low - m_bits) for k in range(2 ** m_bits)]  # subnormals and zero
    for exponent in range(low, low + 2 ** e_bits - 2):
        values += [(1 + k / 2 ** m_bits) * 2.0 ** exponent for k in range(2 ** m_bits)]
    values = np.array(values)
    assert values.max() == largest
    return np.concatenate([values, -values]).astype(np.float32)


@pytest.mark.parametrize("fmt", [(4, 3), (5, 2), (3, 4)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_representable_values_are_unchanged(fmt, stochastic):
    values = _representable(*fmt)
    np.testing.assert_array_equal(round_np(values, *fmt, stochastic, seed=3), values)


def test_nearest_even_and_saturation():
    # (4, 3): around 1.0 the step is 1/8. 1 + 1/16 is a tie -> even (1.0); 1 + 3/16 -> 1.25.
    x = np.array([1 + 1 / 16, 1 + 3 / 16, 1e6, -1e6], np.float32)
    np.testing.assert_array_equal(round_np(x, 4, 3), [1.0, 1.25, 240.0, -240.0])


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
def test_stochastic_split_matches_the_probability(fraction):
    """As Verificarlo's test of stochastic rounding: the share of values rounded up lies in
    the binomial 99.9% interval around the distance to the lower neighbour over the gap."""
    n = 20_000
    x = np.full(n, 1 + fraction / 8, np.float32)  # between 1.0 and 1.125 in (4, 3)
    up = np.mean(round_np(x, 4, 3, stochastic=True, seed=11) == np.float32(1.125))
    lo, hi = scipy.stats.binom.interval(0.999, n, fraction)
    assert lo / n <= up <= hi / n
    assert set(np.unique(round_np(x, 4, 3, stochastic=True, seed=11))) <= {np.float32(1.0), np.float32(1.125)}


def test_tir_kernel_is_bit_exact_with_numpy():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((3, 1500)) * 10.0 ** rng.integers(-8, 8, (3, 1500))).astype(np.float32)
    values[0, :5] = [0.0, -0.0, np.inf, np.nan, 3e38]
    for fmt, stochastic in [((4, 3), False), ((5, 2), True), ((8, 7), True)]:
        x = te.placeholder(values.shape, "float32", name="x")
        seed = te.placeholder((1,), "int64", name="seed")
        func = te.create_prim_func([x, seed, round_te(x, seed, *fmt, stochastic, stream=3)])
        ex = tvm.compile(func.with_attr("global_symbol", "main"), target=tvm.target.Target({"kind": "llvm"}))
        out = tvm.runtime.tensor(np.zeros_like(values))
        ex["main"](tvm.runtime.tensor(values), tvm.runtime.tensor(np.array([77], np.int64)), out)
        want = round_np(values, *fmt, stochastic, seed=77, stream=3)
        np.testing.assert_array_equal(out.numpy().view(np.int32), want.view(np.int32))


def test_compiled_float_format_equals_rounded_reference():
    """Nearest rounding of weights and activations against numpy + onnxruntime: round the
    weights in the ONNX file, and the one GEMM input by hand, for a single-layer model."""
    from onnx import numpy_helper

    model = synthetic.cnn(channels=(4,), image=(1, 8, 8), seed=1)
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    fmt = (4, 3)
    compiled = mctvm.compile(model, shapes={"input": x.shape},
                             float_format={"weights": fmt, "activations": fmt, "rounding": "nearest"})
    assert not compiled.takes_seed
    # Reference: every Conv/Gemm input and weight rounded; run layer by layer with onnxruntime
    # is awkward, so check the first layer exactly and the whole output loosely.
    rounded = numpy_helper.from_array(round_np(numpy_helper.to_array(model.graph.initializer[0]), *fmt),
                                      model.graph.initializer[0].name)
    model_r = type(model).FromString(model.SerializeToString())
    model_r.graph.initializer[0].CopyFrom(rounded)
    reference = ort_run(model_r, {"input": round_np(x, *fmt)})[0]
    got = compiled(x)
    assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()
    assert np.abs(got - ort_run(model, {"input": x})[0]).max() > 0  # it did round something


def test_bad_float_format():
    with pytest.raises(mctvm.MctvmError, match="outside"):
        mctvm.compile(synthetic.cnn(), shapes={"input": (1, 1, 16, 16)},
                      float_format={"weights": (1, 3)})
    with pytest.raises(mctvm.MctvmError, match="rounding="):
        mctvm.compile(synthetic.cnn(), shapes={"input": (1, 1, 16, 16)},
                      float_format={"weights": (4, 3), "rounding": "up"})
