"""The synthetic ResNet-18 (mctvm/models/synthetic.py) imports and matches onnxruntime."""

import numpy as np

import mctvm
from mctvm.models import synthetic

from conftest import ort_run


def test_resnet18_matches_onnxruntime():
    proto = synthetic.resnet18(image=64)
    compiled = mctvm.compile(proto, shapes={"input": (1, 3, 64, 64)})
    assert compiled.output_info[0].shape == (1, 1000)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    want = ort_run(proto, {"input": x})[0]
    assert np.std(want) > 1e-3
    np.testing.assert_allclose(compiled(x), want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_resnet18_is_deterministic():
    assert synthetic.resnet18(image=32, seed=1) == synthetic.resnet18(image=32, seed=1)
