"""Bad input gets an mctvm error that names the problem and the way out."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import mctvm
from mctvm.models import synthetic


def _model_with(nodes, inputs=("x",)):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.example", 1)])


def test_missing_file(tmp_path):
    with pytest.raises(mctvm.ModelError, match="does not exist"):
        mctvm.compile(tmp_path / "nope.onnx")


def test_corrupt_file(tmp_path):
    good = synthetic.cnn().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(mctvm.ModelError, match="truncated.onnx"):
        mctvm.compile(path)


def test_not_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(mctvm.ModelError, match="notes.onnx"):
        mctvm.compile(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(mctvm.ModelError, match="no ONNX graph"):
        mctvm.compile(path)


def test_wrong_python_type():
    with pytest.raises(mctvm.ModelError, match="pass a path"):
        mctvm.compile(12345)


def test_checker_rejects_invalid_graph():
    # A node reading a tensor that nothing produces.
    model = _model_with([helper.make_node("Relu", ["ghost"], ["y"], name="r")])
    with pytest.raises(mctvm.ModelError, match="checker"):
        mctvm.compile(model)


def test_all_unsupported_ops_listed_with_node_names():
    model = _model_with([
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("FancyOp", ["a"], ["b"], name="custom_1", domain="com.example"),
        helper.make_node("OtherOp", ["b"], ["c"], name="custom_2", domain="com.example"),
    ])
    with pytest.raises(mctvm.UnsupportedOpError) as info:
        mctvm.compile(model)
    message = str(info.value)
    assert "2 node(s)" in message
    assert "'com.example.FancyOp' at node 'custom_1'" in message
    assert "'com.example.OtherOp' at node 'custom_2'" in message
    assert "Supported ops:" in message and "Conv" in message


def test_unsupported_default_domain_op():
    from mctvm import frontend

    model = _model_with([helper.make_node("Relu", ["x"], ["y"], name="r")])
    # Pretend the importer lacks Relu: the check must name it and its node.
    original = frontend.supported_ops
    frontend.supported_ops = lambda: original() - {"Relu"}
    try:
        with pytest.raises(mctvm.UnsupportedOpError, match="'Relu' at node 'r'"):
            mctvm.compile(model)
    finally:
        frontend.supported_ops = original


def test_dynamic_batch_needs_shapes():
    with pytest.raises(mctvm.ShapeError, match=r"shapes=\{'input': \(1, 1, 16, 16\)\}"):
        mctvm.compile(synthetic.cnn())


def test_shapes_must_fit_declared_dims():
    with pytest.raises(mctvm.ShapeError, match="does not fit"):
        mctvm.compile(synthetic.cnn(), shapes={"input": (2, 3, 16, 16)})
    with pytest.raises(mctvm.ShapeError, match="not model inputs"):
        mctvm.compile(synthetic.cnn(), shapes={"image": (2, 1, 16, 16)})
    with pytest.raises(mctvm.ShapeError, match="negative"):
        mctvm.compile(synthetic.cnn(), shapes={"input": (-1, 1, 16, 16)})


@pytest.mark.parametrize("target", ["tpu", "llvm -mcpu=skylake", {"kind": "opencl"}, 42,
                                    {"kind": "cuda", "arch": 7}, "{not json"])
def test_unknown_target(target):
    with pytest.raises(mctvm.TargetError):
        mctvm.compile(synthetic.cnn(), target=target, shapes={"input": (1, 1, 16, 16)})


@pytest.mark.parametrize("K", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_K(K):
    with pytest.raises(mctvm.MctvmError, match="K must be a positive"):
        mctvm.compile(synthetic.cnn(), K=K, shapes={"input": (1, 1, 16, 16)})


@pytest.fixture(scope="module")
def small():
    return mctvm.compile(synthetic.cnn(), shapes={"input": (2, 1, 16, 16)})


def test_wrong_shape_at_call(small):
    with pytest.raises(mctvm.InputError, match=r"expects shape \(2, 1, 16, 16\), got \(3, 1, 16, 16\)"):
        small(np.zeros((3, 1, 16, 16), np.float32))


def test_wrong_dtype_at_call(small):
    with pytest.raises(mctvm.InputError, match="expects dtype float32, got float64"):
        small(np.zeros((2, 1, 16, 16)))


def test_wrong_input_names_and_counts(small):
    x = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(mctvm.InputError, match="'image' is not an input"):
        small(image=x)
    with pytest.raises(mctvm.InputError, match="missing input"):
        small()
    with pytest.raises(mctvm.InputError, match="takes 1 input"):
        small(x, x)
    with pytest.raises(mctvm.InputError, match="both by position and by name"):
        small(x, input=x)


def test_load_rejects_non_library(tmp_path):
    path = tmp_path / "fake.so"
    path.write_bytes(b"\x7fELF not really")
    with pytest.raises(mctvm.ModelError, match="cannot load"):
        mctvm.load(path)
    with pytest.raises(mctvm.ModelError, match="does not exist"):
        mctvm.load(tmp_path / "missing.so")
