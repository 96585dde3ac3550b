"""Real architectures from the onnx wheel (opset 9, upgraded on import) against references.

Two checks per model: the shipped reference output on onnx's dummy input, and, since the
light models' weights are constant-filled, onnxruntime on the same graph with random
He-scaled weights (logits, before the final softmax).
"""

import numpy as np
import onnx
import pytest

import mctvm

import zoo
from conftest import ort_run


def _params(names):
    return [pytest.param(n, marks=[] if n in zoo.FAST else [pytest.mark.slow]) for n in names]


@pytest.mark.parametrize("name", _params(zoo.MODELS))
def test_matches_shipped_reference(name):
    proto = onnx.load(str(zoo.path(name)))
    out = mctvm.compile(proto)(zoo.dummy_input(proto))
    np.testing.assert_allclose(out, zoo.reference_output(name), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", _params(zoo.MODELS))
def test_random_weights_match_onnxruntime(name):
    proto = zoo.with_random_weights(onnx.load(str(zoo.path(name))))
    compiled = mctvm.compile(proto)
    x = np.random.default_rng(1).random(compiled.input_info[0].shape, dtype=np.float32)
    want = ort_run(proto, {compiled.input_info[0].name: x})[0]
    got = compiled(x)
    assert np.std(want) > 1e-3, "degenerate reference: weights gave a constant output"
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
