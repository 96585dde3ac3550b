"""kernels/max_pool.py and passes/lower_max_pool.py: mctvm's CPU max pool against numpy,
onnxruntime and TVM's own lowering."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

import mctvm
from mctvm.kernels.max_pool import LANES, MaxPool, max_pool2d_prim_func
from mctvm.passes.lower_max_pool import LowerMaxPool, max_pool_of
from mctvm.targets import cpu

LOWEST = np.finfo(np.float32).min


def pool_ref(x, size, stride, padding):
    """Max over each window of x padded with the lowest float32 (TVM's legalisation)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = size, stride, padding
    xp = np.full((n, c, h + pt + pb, w + pl + pr), LOWEST, np.float32)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    out = np.full((n, c, oh, ow), LOWEST, np.float32)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw])
    return out


CASES = [
    # (shape, size, stride, padding (top, left, bottom, right))
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1)),  # ResNet's stem pool
    ((2, 3, 40, 41), (3, 3), (1, 1), (1, 1, 1, 1)),  # stride 1, odd width
    ((3, 4, 33, 70), (3, 2), (2, 3), (0, 1, 1, 0)),  # stride 3 along rows, uneven padding
    ((1, 2, 5, 5), (5, 5), (1, 1), (2, 2, 2, 2)),  # rows too short for a vector chunk
    ((1, 1, 64, 64), (2, 2), (2, 2), (0, 0, 0, 0)),  # no padding: the whole row in chunks
    ((2, 8, 9, 37), (2, 2), (2, 2), (0, 0, 0, 0)),  # an odd last column dropped
    ((1, 2, 6, 36), (2, 4), (3, 1), (2, 3, 2, 3)),  # whole window rows in the padding
]


@pytest.mark.parametrize("shape,size,stride,padding", CASES)
def test_kernel_matches_numpy(rng, shape, size, stride, padding):
    pool = MaxPool(shape, size, stride, padding)
    ex = tvm.compile(tvm.IRModule({"main": max_pool2d_prim_func(pool, name="main")}),
                     target=cpu.default_target())
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :3] = -np.inf  # windows of -inf: the lowest float32, as TVM pads
    y = tvm.runtime.empty(pool.output_shape, "float32", tvm.cpu())
    ex["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), pool_ref(x, size, stride, padding))


def test_interior_columns():
    """The columns done LANES at a time load only inside the input row."""
    for shape, size, stride, padding in CASES:
        pool = MaxPool(shape, size, stride, padding)
        first, stop = pool.interior()
        if stop == 0:
            continue
        assert stop - first >= LANES
        assert first * stride[1] - padding[1] >= 0
        assert (stop * stride[1] - 1) + (size[1] - 1) - padding[1] <= shape[3] - 1
    assert MaxPool((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1)).interior() == (1, 55)
    assert MaxPool((1, 2, 5, 5), (5, 5), (1, 1), (2, 2, 2, 2)).interior() == (0, 0)


def _pool_module(shape, **attrs):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.max_pool2d(x, **attrs))
        bb.emit_func_output(out)
    return bb.get()


def _call(mod):
    (binding,) = [b for block in mod["main"].body.blocks for b in block.bindings]
    return binding.value


def test_pass_replaces_what_it_can():
    lowered = LowerMaxPool()(_pool_module((1, 4, 16, 16), pool_size=3, strides=2, padding=1))
    assert _call(lowered).op.name == "relax.call_tir"
    assert any(isinstance(f, tvm.tirx.PrimFunc) for f in lowered.functions.values())
    kept = [
        dict(pool_size=2, strides=2, dilation=2),  # dilation
        dict(pool_size=2, strides=2, layout="NHWC"),  # layout
        dict(pool_size=2, strides=2, ceil_mode=True),  # a partial last window (15 wide)
    ]
    for attrs in kept:
        mod = _pool_module((1, 4, 15, 15), **attrs)
        assert max_pool_of(_call(mod)) is None, attrs
        assert _call(LowerMaxPool()(mod)).op.name == "relax.nn.max_pool2d"


def _onnx_pool(shape, **attrs):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                        None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),  # left to TVM: a partial window
])
def test_compiled_model_matches_onnxruntime(rng, attrs):
    shape = [2, 5, 33, 40]
    model = _onnx_pool(shape, **attrs)
    x = rng.standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString())
    want = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(mctvm.compile(model)(x), want)
