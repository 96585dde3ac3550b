"""passes/non_negative.py: which GEMM/conv inputs MCQ may sample into uint8 counts."""

import numpy as np
from tvm import relax

from mctvm.passes.non_negative import non_negative


def _bound(build):
    """Emit build(bb, x) in a dataflow block; return (its result var, a binding lookup)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 4, 8, 8], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    bindings = {b.var: b.value for block in bb.get()["main"].body.blocks for b in block.bindings}
    return out, bindings.get


def test_relu_and_what_keeps_it_non_negative():
    def build(bb, x):
        r = bb.emit(relax.op.nn.relu(x))
        p = bb.emit(relax.op.nn.max_pool2d(r, pool_size=2, strides=2))
        a = bb.emit(relax.op.nn.avg_pool2d(p, pool_size=2))
        c = bb.emit(relax.op.concat([a, a], axis=1))
        s = bb.emit(relax.op.add(c, relax.const(np.ones((1, 8, 1, 1), np.float32))))
        return relax.op.reshape(s, [2, -1])

    out, lookup = _bound(build)
    assert non_negative(out, lookup)


def test_possibly_negative_values():
    cases = [
        lambda bb, x: relax.op.reshape(x, [2, -1]),  # the raw input
        lambda bb, x: relax.op.subtract(bb.emit(relax.op.nn.relu(x)), x),
        lambda bb, x: relax.op.add(bb.emit(relax.op.nn.relu(x)),
                                   relax.const(np.full((1, 4, 1, 1), -1, np.float32))),
        lambda bb, x: relax.op.clip(x, -1.0, 6.0),
    ]
    for build in cases:
        out, lookup = _bound(build)
        assert not non_negative(out, lookup)


def test_clip_from_zero():
    out, lookup = _bound(lambda bb, x: relax.op.clip(x, 0.0, 6.0))
    assert non_negative(out, lookup)


def test_casts_that_cannot_wrap_keep_the_sign():
    def relu_cast(*dtypes):
        def build(bb, x):
            value = bb.emit(relax.op.nn.relu(x))
            for dtype in dtypes[:-1]:
                value = bb.emit(relax.op.astype(value, dtype))
            return relax.op.astype(value, dtypes[-1])
        return build

    for dtypes in (["float16"], ["float64"], ["uint8", "int16"], ["uint16", "int32"]):
        out, lookup = _bound(relu_cast(*dtypes))
        assert non_negative(out, lookup), dtypes
    # float -> int overflows and int32 -> int8 wraps: 200 becomes -56
    for dtypes in (["int8"], ["int32", "int8"], ["uint8", "int8"]):
        out, lookup = _bound(relu_cast(*dtypes))
        assert not non_negative(out, lookup), dtypes
