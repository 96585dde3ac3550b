"""The built-in Fashion-MNIST model: shipped files, and compiled output against onnxruntime."""

import numpy as np
import onnx
import pytest

import mctvm
from mctvm import models
from mctvm.cli import main
from mctvm.evaluate import accuracy, predict

from conftest import ort_run


def test_shipped_files_are_consistent():
    card = models.model_card()
    assert card["float_accuracy_10k"] > 0.9
    x, labels = models.test_sample()
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10
    ops = {node.op_type for node in onnx.load(models.default_model()).graph.node}
    assert ops == {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"}


def test_logits_match_onnxruntime():
    x, _ = models.test_sample()
    x = x[:16]
    compiled = mctvm.compile(models.default_model(), shapes={"input": x.shape})
    want = ort_run(onnx.load(models.default_model()), {"input": x})[0]
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-4)


def test_predictions_match_onnxruntime_on_the_sample():
    x, labels = models.test_sample()
    x, labels = x[:320], labels[:320]
    compiled = mctvm.compile(models.default_model(), shapes={"input": (64, 1, 28, 28)})
    ours = predict(compiled, x).argmax(axis=1)
    theirs = ort_run(onnx.load(models.default_model()), {"input": x})[0].argmax(axis=1)
    assert (ours == theirs).all()
    assert accuracy(compiled, x, labels) == pytest.approx(float(np.mean(theirs == labels)))


@pytest.mark.skipif(not models.have_fashion_mnist(), reason="Debian's dataset-fashion-mnist absent")
def test_full_test_set_reader():
    x, labels = models.fashion_mnist("test")
    sample_x, sample_labels = models.test_sample()
    with np.load(models.TEST_SAMPLE) as data:
        indices = data["indices"]
    assert x.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(x[indices], sample_x)
    np.testing.assert_array_equal(labels[indices], sample_labels)


@pytest.mark.slow
def test_demo_runs(capsys):
    assert main(["demo", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on committed test sample (1,000): 94.60%" in out
    assert "latency batch  32:" in out


@pytest.mark.parametrize("K,max_drop", [(1, 3.0), (5, 1.0)])
def test_mcq_accuracy_on_the_sample(K, max_drop):
    """Looser than the benchmark's 10k targets (1.0 and 0.3 points): 1,000 images are noisy."""
    x, labels = models.test_sample()
    compiled = mctvm.compile(models.default_model(), K=K, shapes={"input": (100, 1, 28, 28)})
    compiled._seeds = np.random.default_rng(0)
    drop = 100 * (models.model_card()["sample_accuracy_1k"] - accuracy(compiled, x, labels))
    assert drop < max_drop
    report = compiled.report()
    # the default uint8 counts (activation_dtype="auto") may clip a rare one at K = 5; reported
    counts = len(x) * sum(r["N_activations"] / r["K_activations"] for r in report.rows[1:])
    assert report.totals["saturated"] <= 1e-6 * counts and report.rows[0]["K_weights"] is None


def test_mcda_on_the_builtin_model_is_finite():
    from mctvm.mcda import mcda

    x, labels = models.test_sample()
    result = mcda(models.default_model(), x[:8], labels[:8], t=range(4, 17, 2), trials=8,
                  progress=False)
    assert np.isfinite(result.digits_lost) and np.isfinite(result.fit.intercept)
    assert 4 <= result.t_min <= 16
