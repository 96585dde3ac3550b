"""MCQ-compiled programs against a numpy emulation that applies mctvm.mcq to the same weights
and activations with the same xi: same counts, same outputs up to float rounding."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import mctvm
from mctvm import mcq
from mctvm.errors import ModelError
from mctvm.kernels.activation_sampling import SCAN_BLOCK, xi_for
from mctvm.models import synthetic
from mctvm.passes.fold_mcq_weights import weight_xi

from conftest import ort_run

SHAPE = (3, 1, 16, 16)


def _conv3x3(x, w):
    """Stride 1, padding 1 convolution in exact integer (or float64) arithmetic."""
    b, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([padded[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=2)
    return np.einsum("bckhw,ock->bohw", cols, w.reshape(w.shape[0], c, 9))


def _maxpool2(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _emulate(model, x, K, seed, compile_seed=0):
    """The synthetic CNN with every layer's weights and inputs quantized by mctvm.mcq (K: one
    for all layers, or a list of one per layer)."""
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    stats = []
    h = x
    for index, node in enumerate(convs):
        k = K[index] if isinstance(K, list) else K
        w, bias = init[node.input[1]], init[node.input[2]]
        if node.op_type == "Gemm":
            h = h.reshape(h.shape[0], -1)
            w = w.T  # transB: the compiled program's weight is (in, out)
        # the weights' CDF runs output channel by output channel, positives before negatives
        wq = mcq.sample_counts(w, k, weight_xi(compile_seed, index),
                               axis=1 if node.op_type == "Gemm" else 0, order="sign")
        aq = mcq.activation_counts(h, k, xi_for(seed, index), scan_block=SCAN_BLOCK)
        stats.append(aq)
        acc = _conv3x3(aq.counts, wq.counts) if node.op_type == "Conv" else aq.counts @ wq.counts
        scale = np.asarray(aq.scale, np.float32).reshape(-1, *([1] * (acc.ndim - 1)))
        h = acc.astype(np.float32) * scale * np.float32(wq.scale)
        h = h + (bias.reshape(1, -1, 1, 1) if node.op_type == "Conv" else bias)
        if node.op_type == "Conv":
            h = _maxpool2(np.maximum(h, 0))
    return h, stats


@pytest.fixture(scope="module")
def model():
    return synthetic.cnn(seed=4)


@pytest.mark.parametrize("K", [0.5, 2, 8])
def test_matches_numpy_emulation(model, K):
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    compiled = mctvm.compile(model, K=K, skip=(), shapes={"input": SHAPE})
    seed = 1234
    got = compiled(x, seed=seed)
    want, stats = _emulate(model, x, K, seed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    report = compiled.report()
    for row, aq in zip(report.rows, stats):
        assert row["N_activations"] == int(aq.N[0])
        assert row["activation_sparsity"] == pytest.approx(float(np.mean(aq.counts == 0)), abs=2e-3)


def test_uint8_counts_where_inputs_are_non_negative(model):
    """activation_dtype="uint8": the first layer's input may be negative (int8 counts), the
    others follow a Relu (uint8); the program matches the same emulation, count for count."""
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    compiled = mctvm.compile(model, K=2, skip=(), activation_dtype="uint8",
                             shapes={"input": SHAPE})
    got = compiled(x, seed=99)
    want, stats = _emulate(model, x, 2, 99)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    report = compiled.report()
    assert [r["activation_dtype"] for r in report.rows] == ["int8", "uint8", "uint8"]
    assert "uint8" in str(report)
    for row, aq in zip(report.rows, stats):
        assert row["saturated"] == 0 and row["max_activation_count"] == int(np.abs(aq.counts).max())
        assert row["activation_sparsity"] == pytest.approx(float(np.mean(aq.counts == 0)), abs=2e-3)


def test_auto_counts_uint8_where_non_negative_up_to_K_5(model):
    """The default activation_dtype="auto": uint8 after a Relu while K_activations <= 5, int16
    for the possibly negative first input and for larger K (here one layer's, by layer_K);
    the program still matches the emulation."""
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    names = [r["name"] for r in mctvm.compile(model, K=2, skip=(), shapes={"input": SHAPE})
             .report().rows]
    compiled = mctvm.compile(model, K=2, skip=(), layer_K={names[2]: 8}, shapes={"input": SHAPE})
    assert [r["activation_dtype"] for r in compiled.report().rows] == ["int16", "uint8", "int16"]
    got = compiled(x, seed=7)
    want, _ = _emulate(model, x, [2, 2, 8], 7)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _relu_conv_model(channels=3):
    """Relu then a 3x3 conv over `channels` (odd: padded to 4 for the quad path)."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(11).standard_normal((16, channels, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w"], ["y"], name="conv", pads=[1] * 4)],
        "relu_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def test_uint8_saturates_at_255_and_counts_it():
    model, w = _relu_conv_model()
    x = np.zeros((2, 3, 8, 8), np.float32)
    x[:, :, 0, 0] = -5.0  # Relu drops it
    x[:, 0, 2, 3] = 1000.0
    x[:, 1, 5, 5] = 1.0
    K = 4  # N = 4 * 192 = 768 hits, nearly all on the big value
    compiled = mctvm.compile(model, K=K, skip=(), activation_dtype="uint8")
    got = compiled(x, seed=0)
    row = compiled.report().rows[0]
    assert row["activation_dtype"] == "uint8"
    assert row["saturated"] == 2  # one clipped element per sample
    assert row["max_activation_count"] > 255
    # the program computed with the count clipped at 255 (not wrapped)
    aq = mcq.activation_counts(np.maximum(x, 0), K, xi_for(0, 0), scan_block=SCAN_BLOCK)
    wq = mcq.sample_counts(w, K, weight_xi(0, 0), axis=0, order="sign")
    acc = _conv3x3(np.minimum(aq.counts, 255), wq.counts)
    want = acc.astype(np.float32) * np.asarray(aq.scale, np.float32).reshape(-1, 1, 1, 1) \
        * np.float32(wq.scale)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_seeds_reproduce_and_fresh_calls_differ(model):
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    compiled = mctvm.compile(model, K=1, shapes={"input": SHAPE})
    assert compiled.takes_seed
    np.testing.assert_array_equal(compiled(x, seed=7), compiled(x, seed=7))
    assert not np.array_equal(compiled(x, seed=7), compiled(x, seed=8))
    assert not np.array_equal(compiled(x), compiled(x))
    with pytest.raises(mctvm.InputError, match="seed must be a non-negative integer"):
        compiled(x, seed=-3)


@pytest.mark.parametrize("normalize, order", [("layer", "sign"), ("layer", "natural"),
                                              ("channel", "sign")])
def test_weights_only_equals_onnxruntime_on_dequantized_weights(model, normalize, order):
    """Independent check: put counts * f/N into the ONNX model and run onnxruntime."""
    K = 3
    compiled = mctvm.compile(model, K=K, quantize=("weights",), skip=(), normalize=normalize,
                             order=order, shapes={"input": SHAPE})
    assert not compiled.takes_seed
    emulated = onnx.ModelProto.FromString(model.SerializeToString())
    gemms = [n for n in emulated.graph.node if n.op_type in ("Conv", "Gemm")]
    inits = {t.name: t for t in emulated.graph.initializer}
    for index, node in enumerate(gemms):
        w = numpy_helper.to_array(inits[node.input[1]])
        oriented = w.T if node.op_type == "Gemm" else w
        # channel: one CDF and one jitter per output channel (the compiled Gemm weight is
        # (in, out): its output channels run along axis 1)
        axis = 1 if node.op_type == "Gemm" else 0
        xi = weight_xi(0, index, oriented.shape[axis] if normalize == "channel" else None)
        q = mcq.sample_counts(oriented, K, xi, normalize=normalize, axis=axis,
                              order=order).dequantize()
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(
            (q.T if node.op_type == "Gemm" else q).astype(np.float32), node.input[1]))
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    want = ort_run(emulated, {"input": x})[0]
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_error_shrinks_as_K_grows(model):
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    reference = ort_run(model, {"input": x})[0]
    errors = []
    for K in (1, 8, 64):
        compiled = mctvm.compile(model, K=K, skip=(), shapes={"input": SHAPE})
        errors.append(np.mean([np.abs(compiled(x, seed=s) - reference).mean() for s in range(4)]))
    assert errors[0] > errors[1] > errors[2]


def test_first_layer_skipped_by_default_and_report(model):
    compiled = mctvm.compile(model, K=2, shapes={"input": SHAPE})
    compiled(np.ones(SHAPE, np.float32), seed=0)
    report = compiled.report()
    first, *rest = report.rows
    assert first["K_weights"] is None and first["K_activations"] is None
    assert all(r["K_weights"] == 2 and r["K_activations"] == 2 for r in rest)
    assert all(r["weight_dtype"] == "int8" for r in rest)
    text = str(report)
    assert "total:" in text and "w-" in text and first["name"] in text
    assert report.totals["notation"].endswith("a")


def test_saturation_is_counted_never_wrapped():
    """A heavy-tailed input with int8 counts: the big counts clip at 127 and are reported."""
    model = synthetic.cnn(seed=6)
    x = np.zeros(SHAPE, np.float32)
    x[:, :, 0, 0] = 1000.0
    x[:, :, 5, 5] = 1.0
    compiled = mctvm.compile(model, K=4, skip=(), activation_dtype="int8", shapes={"input": SHAPE})
    compiled(x, seed=0)
    row = compiled.report().rows[0]
    assert row["saturated"] == SHAPE[0]  # one clipped element per sample
    assert row["max_activation_count"] > 127


def test_export_and_load_keep_the_seed_input(model, tmp_path):
    compiled = mctvm.compile(model, K=2, shapes={"input": SHAPE})
    loaded = mctvm.load(compiled.export_library(tmp_path / "q.so"))
    x = np.random.default_rng(6).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(loaded(x, seed=11), compiled(x, seed=11))
    assert [r["name"] for r in loaded.report().rows] == [r["name"] for r in compiled.report().rows]


def test_library_with_other_stats_layout_is_refused(model, tmp_path, monkeypatch):
    """A library whose statistics come back in another layout (an older mctvm's) is refused
    with a clear error, never misread."""
    import mctvm.compiler

    monkeypatch.setattr(mctvm.compiler, "STATS_LAYOUT", "one tensor per layer")
    library = mctvm.compile(model, K=2, shapes={"input": SHAPE}).export_library(tmp_path / "q.so")
    with pytest.raises(ModelError, match="older mctvm.*compile and export"):
        mctvm.load(library)


def test_cuda_program_has_sampling_and_integer_gemm_kernels(model):
    compiled = mctvm.compile(model, K=5, target="cuda", activation_dtype="int8",
                             shapes={"input": SHAPE})
    source = compiled.sources["cuda"]
    assert "mcq_sample_1_kernel" in source and "mcq_sample_2_kernel" in source
    assert "signed char" in source or "int8_t" in source
    assert "blockIdx.x" in source


def _grouped_model():
    """Depthwise 3x3 conv (groups = channels) then a grouped 1x1 conv (groups = 2)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((6, 2, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="depthwise", group=4, pads=[1] * 4),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="grouped", group=2)],
        "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_grouped_and_depthwise_convs_quantize():
    model = _grouped_model()
    x = np.random.default_rng(9).standard_normal((2, 4, 8, 8)).astype(np.float32)
    compiled = mctvm.compile(model, K=4, skip=())
    assert [r["name"] for r in compiled.report().rows] == ["depthwise", "grouped"]
    reference = ort_run(model, {"x": x})[0]
    errors = [np.abs(mctvm.compile(model, K=K, skip=())(x, seed=3) - reference).mean()
              for K in (1, 16, 256)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * np.abs(reference).mean()


def test_profile_names_the_sampling_kernels(model):
    compiled = mctvm.compile(model, K=2, shapes={"input": SHAPE})
    kernels = compiled.profile(repeat=2)
    assert any("mcq_sample" in name for name in kernels)
    assert all(ms >= 0 for ms in kernels.values())
    assert list(kernels.values()) == sorted(kernels.values(), reverse=True)


def test_activations_only_matches_numpy_emulation(model):
    """quantize=('activations',): float weights, integer-valued sampled activations."""
    x = np.random.default_rng(10).standard_normal(SHAPE).astype(np.float32)
    compiled = mctvm.compile(model, K=3, quantize=("activations",), skip=(), shapes={"input": SHAPE})
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x
    for index, node in enumerate(n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        w, bias = init[node.input[1]], init[node.input[2]]
        if node.op_type == "Gemm":
            h = h.reshape(h.shape[0], -1)
        aq = mcq.activation_counts(h, 3, xi_for(5, index), scan_block=SCAN_BLOCK)
        acc = _conv3x3(aq.counts.astype(np.float64), w) if node.op_type == "Conv" \
            else aq.counts @ w.T.astype(np.float64)
        h = acc * np.asarray(aq.scale).reshape(-1, *([1] * (acc.ndim - 1)))
        h = h + (bias.reshape(1, -1, 1, 1) if node.op_type == "Conv" else bias)
        if node.op_type == "Conv":
            h = _maxpool2(np.maximum(h, 0))
    got = compiled(x, seed=5)
    np.testing.assert_allclose(got, h, rtol=1e-3, atol=1e-3 * np.abs(h).max())


def test_report_sums_the_statistics_of_every_call():
    """Calls' statistics are folded in batches; the report counts each call once, before and
    after a fold, and reset_stats forgets the ones not folded yet too."""
    compiled = mctvm.compile(synthetic.cnn(seed=6), K=2, skip=(), shapes={"input": SHAPE})
    x = np.random.default_rng(8).standard_normal(SHAPE).astype(np.float32)
    compiled(x, seed=3)
    once = compiled.report().rows
    compiled.reset_stats()
    calls = 70  # more than runtime._FOLD_EVERY
    for _ in range(calls):
        compiled(x, seed=3)
    many = compiled.report().rows
    for one, row in zip(once, many):
        assert row["calls_samples"] == calls * one["calls_samples"] == calls * SHAPE[0]
        assert row["activation_sparsity"] == pytest.approx(one["activation_sparsity"])
        assert row["activation_bits"] == pytest.approx(one["activation_bits"])
    compiled(x, seed=3)
    compiled.reset_stats()
    assert all(r["calls_samples"] == 0 for r in compiled.report().rows)


def test_inputs_of_successive_calls_do_not_leak():
    """Argument tensors are reused from call to call: each call sees only its own input."""
    compiled = mctvm.compile(synthetic.cnn(seed=6), K=2, shapes={"input": SHAPE})
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    first = [compiled(x, seed=s) for s, x in enumerate(xs)]
    again = [compiled(x, seed=s) for s, x in reversed(list(enumerate(xs)))][::-1]
    assert not np.array_equal(first[0], first[1])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_max_pools_are_fused_into_the_sampling(model):
    """Both of the CNN's pools feed only a sampled layer (one through Flatten): the quantized
    program has no pool kernel left (test_matches_numpy_emulation checks its numbers); the
    float program keeps them."""
    quantized = mctvm.compile(model, K=2, skip=(), shapes={"input": SHAPE})
    assert not [k for k in quantized.profile(repeat=1) if "pool" in k]
    assert len([k for k in mctvm.compile(model, shapes={"input": SHAPE}).profile(repeat=1)
                if "pool" in k]) == 2


def _pool_model(pads, pool_is_output):
    """Conv-Relu-MaxPool-Conv; the pool's output also an output of the model, or not."""
    from onnx import TensorProto, helper

    g = synthetic._Graph(5)
    h = g.op("Conv", ["input", g.weight("w", (4, 1, 3, 3))], pads=[1, 1, 1, 1])
    pooled = g.op("MaxPool", [g.op("Relu", [h])], kernel_shape=[2, 2], strides=[2, 2],
                  pads=pads)
    out = g.op("Conv", [pooled, g.weight("w", (3, 4, 3, 3))], pads=[1, 1, 1, 1])
    hw = 5 if pads[0] else 4
    outputs = [(out, [2, 3, hw, hw])] + ([(pooled, [2, 4, hw, hw])] if pool_is_output else [])
    return g.model("pool_model", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                [2, 1, 8, 8])],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])


@pytest.mark.parametrize("pads, pool_is_output", [([0, 0, 0, 0], True), ([1, 1, 1, 1], False)])
def test_pools_used_elsewhere_or_padded_stay_kernels(pads, pool_is_output):
    """A pool whose output is used elsewhere, or with padding, is not fused; the program
    still computes it, and at a large K the quantized output nears onnxruntime's."""
    model = _pool_model(pads, pool_is_output)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    compiled = mctvm.compile(model, K=200, shapes={"input": (2, 1, 8, 8)})
    assert [k for k in compiled.profile(x, repeat=1) if "pool" in k]
    got, want = compiled(x, seed=1), ort_run(model, {"input": x})
    if pool_is_output:  # the first layer stays float: the pool's output is the float one
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
        got = got[0]
    np.testing.assert_allclose(got, want[0], rtol=0.05, atol=0.05 * np.abs(want[0]).max())
