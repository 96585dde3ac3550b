"""Whether a Relax value is provably non-negative at compile time: the test that lets MCQ
store a layer's activation counts unsigned (activation_dtype="uint8").

A Relu, a clip with min >= 0, abs, exp, sigmoid, sqrt and softmax are non-negative, and so
is what ops that only move, select or average values make of non-negative inputs (pooling,
reshapes, transposes, slices, concatenation, zero padding, casts that cannot wrap), as are
sums, products, maxima and minima of non-negative values. Anything else is not provably so.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import GenericConst

_NON_NEGATIVE = {"relax.nn.relu", "relax.abs", "relax.sigmoid", "relax.exp",
                 "relax.sqrt", "relax.nn.softmax"}
# ops whose output is non-negative when their data input (the first argument) is
_PRESERVING = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d",
               "relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze",
               "relax.expand_dims", "relax.strided_slice", "relax.concat"}
# binary ops whose output is non-negative when both inputs are
_BINARY = {"relax.add", "relax.multiply", "relax.maximum", "relax.minimum"}


def non_negative(expr, lookup, depth: int = 32) -> bool:
    """Whether `expr` is >= 0 everywhere for every input; `lookup` resolves bound vars
    (PyExprMutator.lookup_binding). False when unsure."""
    if depth == 0:
        return False
    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        return bound is not None and non_negative(bound, lookup, depth - 1)
    if isinstance(expr, GenericConst):
        return bool((expr.value.numpy() >= 0).all())
    if isinstance(expr, relax.Tuple):
        return all(non_negative(f, lookup, depth - 1) for f in expr.fields)
    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return False
    name = expr.op.name
    if name in _NON_NEGATIVE:
        return True
    if name == "relax.clip":
        low = expr.args[1]
        return isinstance(low, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) and float(low.value) >= 0
    if name == "relax.nn.pad":
        return float(expr.attrs.pad_value) >= 0 and non_negative(expr.args[0], lookup, depth - 1)
    if name == "relax.astype":
        return _cast_keeps_sign(expr) and non_negative(expr.args[0], lookup, depth - 1)
    if name in _PRESERVING:
        return non_negative(expr.args[0], lookup, depth - 1)
    if name in _BINARY:
        return all(non_negative(a, lookup, depth - 1) for a in expr.args[:2])
    return False


def _cast_keeps_sign(cast) -> bool:
    """Whether relax.astype maps non-negative values to non-negative ones: a cast to a float or
    an unsigned type, or to a signed integer wider than the integer it casts (a narrowing or
    float-to-int cast can wrap to a negative value)."""
    target = tvm.DataType(cast.attrs.dtype)
    if target.type_code in (tvm.DataTypeCode.FLOAT, tvm.DataTypeCode.UINT):
        return True
    source = getattr(cast.args[0].ty, "dtype", None)
    if not source:
        return False
    source = tvm.DataType(source)
    return source.type_code in (tvm.DataTypeCode.INT, tvm.DataTypeCode.UINT) \
        and target.bits > source.bits
