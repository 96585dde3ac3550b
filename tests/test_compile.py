"""The float path on the CPU: mctvm.compile output against onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import mctvm
from mctvm.models import synthetic

from conftest import ort_run


@pytest.mark.parametrize("batch", [1, 5])
def test_cnn_matches_onnxruntime(batch, rng):
    model = synthetic.cnn()
    x = rng.standard_normal((batch, 1, 16, 16)).astype(np.float32)
    compiled = mctvm.compile(model, shapes={"input": x.shape})
    np.testing.assert_allclose(compiled(x), ort_run(model, {"input": x})[0], rtol=1e-4, atol=1e-5)


def test_transformer_matches_onnxruntime(rng):
    model = synthetic.transformer(seq=16, dim=32, heads=4, ffn=64, layers=2)
    x = rng.standard_normal((3, 16, 32)).astype(np.float32)
    compiled = mctvm.compile(model, shapes={"input": x.shape})
    np.testing.assert_allclose(compiled(x), ort_run(model, {"input": x})[0], rtol=1e-4, atol=1e-4)


def test_model_as_path_bytes_and_proto(tmp_path, rng):
    model = synthetic.cnn(seed=3)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    outs = [mctvm.compile(m, shapes={"input": x.shape})(x)
            for m in (model, path, str(path), path.read_bytes())]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def _two_input_two_output():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
         helper.make_node("Mul", ["a", "b"], ["prod"], name="mul")],
        "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("prod", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inputs_by_position_and_name_and_io_info(rng):
    compiled = mctvm.compile(_two_input_two_output())
    a, b = rng.standard_normal((2, 2, 3)).astype(np.float32)
    assert [(i.name, i.shape, i.dtype) for i in compiled.input_info] == [
        ("a", (2, 3), "float32"), ("b", (2, 3), "float32")]
    assert [(o.name, o.shape, o.dtype) for o in compiled.output_info] == [
        ("sum", (2, 3), "float32"), ("prod", (2, 3), "float32")]
    for outputs in (compiled(a, b), compiled(b=b, a=a), compiled(a, b=b)):
        assert isinstance(outputs, list) and len(outputs) == 2
        np.testing.assert_allclose(outputs[0], a + b, rtol=1e-6)
        np.testing.assert_allclose(outputs[1], a * b, rtol=1e-6)


def test_old_opset_is_upgraded(rng):
    """An opset-9 model is converted to MIN_OPSET and still matches onnxruntime."""
    from mctvm import frontend

    model = synthetic.cnn()
    old = onnx.ModelProto.FromString(model.SerializeToString())
    old.opset_import[0].version = 9  # Conv, Relu, MaxPool, Flatten, Gemm: same meaning at 9
    # A Clip with min/max attributes: the form opset 11 replaced by inputs.
    out = old.graph.output[0].name
    old.graph.node.append(helper.make_node("Clip", [out], ["clipped"], name="clip", min=-1.0, max=1.0))
    old.graph.output[0].name = "clipped"
    onnx.checker.check_model(old)
    assert frontend.default_opset(old) == 9
    assert frontend.default_opset(frontend.upgrade_opset(old)) == frontend.MIN_OPSET
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    compiled = mctvm.compile(old, shapes={"input": x.shape})
    want = np.clip(ort_run(model, {"input": x})[0], -1, 1)
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(compiled(x), ort_run(old, {"input": x})[0], rtol=1e-4, atol=1e-5)


def test_benchmark_reports_latency_statistics():
    compiled = mctvm.compile(synthetic.cnn(), shapes={"input": (1, 1, 16, 16)})
    stats = compiled.benchmark(repeat=3, number=2)
    assert stats.repeat == 3 and stats.number == 2
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    # number from min_repeat_ms: a call of this tiny program takes microseconds, not 20 ms
    auto = compiled.benchmark(repeat=2, min_repeat_ms=20)
    assert auto.repeat == 2 and auto.number > 1


def test_dump_dir_writes_ir_after_each_phase(tmp_path):
    mctvm.compile(synthetic.cnn(), shapes={"input": (1, 1, 16, 16)}, dump_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "00-imported.py" and files[1] == "01-simplify.py"
    assert files[-1].endswith("lower-llvm.py")
    assert "R.nn.conv2d" in (tmp_path / "00-imported.py").read_text()
    assert "T.prim_func" in (tmp_path / files[-1]).read_text() or "prim_func" in (tmp_path / files[-1]).read_text()


def test_host_target_names_this_cpu():
    from tvm.target import codegen

    from mctvm import targets

    for name in ("cpu", "llvm"):
        target = targets.resolve(name)
        assert target.kind.name == "llvm"
        assert str(target.attrs["mcpu"]) == codegen.llvm_get_system_cpu()
