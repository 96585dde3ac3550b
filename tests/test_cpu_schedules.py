"""The CPU default schedules (mctvm/targets/cpu_schedules.py) against numpy and onnxruntime.

Each kernel is built through targets/cpu.py's lowering passes and checked against a numpy
reference: float results with allclose, integer accumulations bit-exact. Each case also
checks which rule scheduled the kernel, so a rule that stops matching fails here instead of
silently falling back to the slow loops.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

import mctvm
from mctvm.models import default_model, synthetic
from mctvm.targets import cpu, cpu_schedules
from mctvm.targets.lowering import fusion_passes

from conftest import ort_run

TARGET = cpu.default_target()


# ---------------------------------------------------------------------------------------------
# helpers


def _tensor(rng, shape, dtype):
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    high = min(info.max, 300)
    return rng.integers(-high, high + 1, size=shape).astype(dtype)


def _build(mod, target=TARGET):
    """Lower with cpu.lowering_passes and build; also say which rule took each kernel.

    `taken` maps kernel name -> rule name, plus "pairs" and "quads": whether the integer
    pair path (pmaddwd / vpdpwssd) or quad path (vpdpbusd) is in the lowered program, and
    "partitioned": whether a loop was partitioned (a group re-layout's row around padding)."""
    with target:
        fused = tvm.transform.Sequential(fusion_passes())(mod)
        taken = {}
        for gv, func in fused.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc):
                taken[gv.name_hint] = next(
                    (type(r).__name__ for r in cpu_schedules.rules()
                     if r.apply(func, target, False) is not None), None)
        lowered = tvm.transform.Sequential(cpu.lowering_passes(target))(mod)
        script = lowered.script(show_meta=False)
        taken["pairs"] = "pmadd" in script
        taken["quads"] = "vpdpbusd" in script
        taken["partitioned"] = "_partition" in script  # a loop split around padding
        executable, _ = cpu.build(lowered, target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return (lambda *xs: vm["main"](*[tvm.runtime.tensor(x) for x in xs]).numpy()), taken


def _has(*features) -> bool:
    """Whether the host target has these (x86) features."""
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(list(features), TARGET))
    except Exception:  # pylint: disable=broad-except  # not x86
        return False


# an AVX2-only target runs on any x86-64 host with AVX2: checks the 256-bit code paths
AVX2 = cpu.complete_target({"kind": "llvm", "mcpu": "haswell"}) if _has("avx2") else None


def _single(builder, *inputs):
    """A Relax module main(inputs...) = builder(bb, vars...)."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(x.shape, str(x.dtype)))
              for i, x in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(builder(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def conv_ref(x, w, stride=1, padding=0, dilation=1, groups=1):
    """NCHW conv2d in int64 (integer inputs) or float64."""
    acc = np.int64 if x.dtype.kind == "i" else np.float64
    x, w = x.astype(acc), w.astype(acc)
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oc, oh, ow), acc)
    ocg = oc // groups
    for g in range(groups):
        xs = xp[:, g * icg:(g + 1) * icg]
        ws = w[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation: i * dilation + stride * (oh - 1) + 1: stride,
                           j * dilation: j * dilation + stride * (ow - 1) + 1: stride]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


# ---------------------------------------------------------------------------------------------
# float conv2d (+ bias + relu), odd shapes, strides, 1x1, padding, dilation, groups

FLOAT_CONVS = [
    # (batch, cin, cout, h, w, k, stride, pad, dilation, groups, rule)
    (1, 3, 17, 13, 11, 3, 1, 1, 1, 1, "Contraction"),
    (64, 5, 8, 9, 9, 3, 2, 1, 1, 1, "Contraction"),
    (2, 16, 24, 7, 7, 1, 1, 0, 1, 1, "Contraction"),
    (1, 16, 32, 8, 8, 1, 2, 0, 1, 1, "Contraction"),
    (1, 8, 33, 10, 10, 3, 1, 0, 1, 1, "Contraction"),
    (1, 3, 8, 15, 15, 7, 2, 3, 1, 1, "Contraction"),
    (1, 4, 10, 12, 12, 3, 1, 2, 2, 1, "Contraction"),
    (3, 16, 16, 9, 9, 3, 1, 1, 1, 16, "DirectConv"),
    (2, 12, 12, 10, 10, 3, 2, 1, 1, 12, "DirectConv"),
    (1, 8, 16, 6, 6, 3, 1, 1, 1, 2, "Contraction"),
    (2, 12, 48, 7, 7, 3, 1, 1, 1, 3, "Contraction"),
    # weights larger than the input: output-channel tiles outermost, padding per image row
    (2, 16, 256, 4, 4, 3, 1, 1, 1, 1, "Contraction"),
]


@pytest.mark.parametrize("batch,cin,cout,h,w,k,stride,pad,dil,groups,rule", FLOAT_CONVS)
def test_float_conv(rng, batch, cin, cout, h, w, k, stride, pad, dil, groups, rule):
    x = _tensor(rng, (batch, cin, h, w), "float32")
    weight = _tensor(rng, (cout, cin // groups, k, k), "float32")
    bias = _tensor(rng, (1, cout, 1, 1), "float32")

    def body(bb, xv):
        y = bb.emit(relax.op.nn.conv2d(xv, relax.const(weight), strides=stride, padding=pad,
                                       dilation=dil, groups=groups))
        return relax.op.nn.relu(relax.op.add(y, relax.const(bias)))

    run, taken = _build(_single(body, x))
    assert rule in taken.values(), taken
    want = np.maximum(conv_ref(x, weight, stride, pad, dil, groups) + bias, 0)
    np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(AVX2 is None, reason="host without AVX2")
def test_float_conv_avx2_target(rng):
    """The 256-bit tiles (8 lanes, fewer registers) on an AVX2-only target."""
    x = _tensor(rng, (2, 6, 11, 11), "float32")
    weight = _tensor(rng, (20, 6, 3, 3), "float32")
    run, taken = _build(_single(
        lambda bb, xv: relax.op.nn.conv2d(xv, relax.const(weight), padding=1), x), AVX2)
    assert "Contraction" in taken.values(), taken
    np.testing.assert_allclose(run(x), conv_ref(x, weight, 1, 1), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# integer conv2d: int8/int16 inputs, int32 accumulation, bit-exact; and a fused float epilogue

INT_CONVS = [
    # (batch, cin, cout, h, w, k, stride, pad, dtype, pairs): pairs = the pmaddwd path
    # applies (x86: even input channels, whole vectors of output channels)
    (3, 7, 13, 9, 9, 3, 1, 1, "int16", False),
    (64, 4, 16, 6, 6, 3, 1, 1, "int8", True),
    (1, 32, 32, 7, 7, 3, 2, 1, "int16", True),
    (2, 9, 40, 5, 5, 1, 1, 0, "int8", False),
    (2, 8, 32, 5, 5, 1, 1, 0, "int16", True),
    (1, 6, 64, 9, 7, 3, 1, 0, "int8", True),
    # weight-stationary order (weights larger than the input), with the pair layout of A
    (2, 16, 256, 4, 4, 3, 1, 1, "int16", True),
    (3, 8, 256, 5, 5, 3, 2, 1, "int8", True),
]
PAIRS_EXPECTED = _has("avx512bw") or _has("avx2")


@pytest.mark.parametrize("batch,cin,cout,h,w,k,stride,pad,dtype,pairs", INT_CONVS)
def test_int_conv_exact(rng, batch, cin, cout, h, w, k, stride, pad, dtype, pairs):
    # extremes of the input range, so products and sums are the widest they can be
    x = _tensor(rng, (batch, cin, h, w), dtype)
    weight = _tensor(rng, (cout, cin, k, k), dtype)
    x.flat[:3] = np.iinfo(dtype).min
    weight.flat[:3] = np.iinfo(dtype).min

    def body(bb, xv):
        return relax.op.nn.conv2d(xv, relax.const(weight), strides=stride, padding=pad,
                                  out_dtype="int32")

    want = conv_ref(x, weight, stride, pad).astype(np.int32)
    for target in (TARGET, AVX2):
        if target is None:
            continue
        run, taken = _build(_single(body, x), target)
        assert "Contraction" in taken.values(), taken
        assert taken["pairs"] == (pairs and PAIRS_EXPECTED), taken
        got = run(x)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


# small outputs: a tile holds whole output rows and several of them (oh x ow), exactly
SMALL_OUTPUTS = [
    # (batch, cin, cout, h, w, k, stride, pad, the tile's rows: oh x ow)
    (2, 16, 256, 4, 4, 3, 1, 1, "2x4"),
    (64, 8, 32, 7, 7, 3, 2, 1, "2x4"),
    (3, 8, 256, 5, 5, 3, 2, 1, "3x3"),
    (1, 8, 16, 6, 6, 3, 1, 1, "3x6"),
    (64, 12, 32, 6, 3, 1, 1, 0, "3x3"),
    (64, 6, 16, 3, 5, 1, 1, 0, "3x5"),
    (64, 16, 32, 7, 7, 1, 2, 0, "2x4"),
    (1, 8, 32, 7, 7, 3, 1, 1, "7"),  # 7 rows of 7: no exact tile of several within 12
]


@pytest.mark.parametrize("dtype", ["float32", "int16", "int8"])
@pytest.mark.parametrize("batch,cin,cout,h,w,k,stride,pad,rows", SMALL_OUTPUTS)
def test_small_outputs_tile_rows(rng, caplog, dtype, batch, cin, cout, h, w, k, stride, pad,
                                 rows):
    x = _tensor(rng, (batch, cin, h, w), dtype)
    weight = _tensor(rng, (cout, cin, k, k), dtype)
    out_dtype = "int32" if dtype.startswith("int") else None
    with caplog.at_level(logging.DEBUG, logger="mctvm.schedule"):
        run, taken = _build(_single(lambda bb, xv: relax.op.nn.conv2d(
            xv, relax.const(weight), strides=stride, padding=pad, out_dtype=out_dtype), x))
    assert "Contraction" in taken.values(), taken
    assert f"x {rows} rows" in caplog.text, caplog.text
    want = conv_ref(x, weight, stride, pad)
    if dtype.startswith("int"):
        assert taken["pairs"] == PAIRS_EXPECTED, taken
        np.testing.assert_array_equal(run(x), want.astype(np.int32))
    else:
        np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,cout", [("int8", 20), ("int16", 32)])
def test_int_conv_float_epilogue(rng, dtype, cout):
    """As quantized programs run them: cast(conv) * per-sample scale * constant + bias, relu."""
    batch, cin = 5, 6
    x = _tensor(rng, (batch, cin, 8, 8), dtype)
    scale = rng.random((batch, 1, 1, 1), dtype=np.float32)
    weight = _tensor(rng, (cout, cin, 3, 3), dtype)
    bias = _tensor(rng, (1, cout, 1, 1), "float32")

    def body(bb, xv, sv):
        y = bb.emit(relax.op.nn.conv2d(xv, relax.const(weight), padding=1, out_dtype="int32"))
        y = relax.op.multiply(relax.op.multiply(relax.op.astype(y, "float32"), sv),
                              relax.const(np.float32(0.01)))
        return relax.op.nn.relu(relax.op.add(y, relax.const(bias)))

    run, taken = _build(_single(body, x, scale))
    rules = [v for k, v in taken.items() if k not in ("pairs", "quads", "partitioned")]
    assert rules == ["Contraction"], taken
    assert taken["pairs"] == (cout == 32 and PAIRS_EXPECTED), taken
    acc = conv_ref(x, weight, 1, 1).astype(np.int32).astype(np.float32)
    want = np.maximum(acc * scale * np.float32(0.01) + bias, 0)
    np.testing.assert_allclose(run(x, scale), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# uint8 x int8: products summed in quads (vpdpbusd) where the CPU has VNNI, reductions padded
# to a multiple of 4; elsewhere the pair path (even reductions) or widened loads

QUADS_EXPECTED = _has("avx512vnni")
# a 256-bit target with AVX-VNNI (no AVX-512), where the host can run it
AVX_VNNI = cpu.complete_target({"kind": "llvm", "mcpu": "alderlake"}) if _has("avxvnni") else None


def _u8_s8(rng, x_shape, w_shape):
    x = rng.integers(0, 256, size=x_shape).astype(np.uint8)
    w = rng.integers(-128, 128, size=w_shape).astype(np.int8)
    x.flat[:3], w.flat[:3] = 255, -128  # the widest products
    return x, w


@pytest.mark.parametrize("batch,cin,cout,h,k,stride,pad", [
    (1, 3, 32, 9, 3, 2, 1),  # odd channels: padded to 4
    (8, 7, 16, 6, 1, 1, 0),  # 1x1, odd channels
    (1, 16, 64, 8, 3, 1, 1),
    (8, 32, 32, 7, 3, 2, 1),
    (2, 64, 256, 4, 3, 1, 1),  # weight-stationary
])
def test_u8_s8_conv_quads_exact(rng, batch, cin, cout, h, k, stride, pad):
    x, weight = _u8_s8(rng, (batch, cin, h, h), (cout, cin, k, k))

    def body(bb, xv):
        return relax.op.nn.conv2d(xv, relax.const(weight), strides=stride, padding=pad,
                                  out_dtype="int32")

    want = conv_ref(x.astype(np.int64), weight, stride, pad).astype(np.int32)
    for target, quads, pairs in ((TARGET, QUADS_EXPECTED, PAIRS_EXPECTED and cin % 2 == 0),
                                 (AVX_VNNI, True, False),
                                 (AVX2, False, cin % 2 == 0)):
        if target is None:
            continue
        run, taken = _build(_single(body, x), target)
        assert "Contraction" in taken.values(), taken
        assert taken["quads"] == quads, (target, taken)
        if not quads:
            assert taken["pairs"] == pairs, (target, taken)
        np.testing.assert_array_equal(run(x), want)


@pytest.mark.parametrize("batch,cin,cout,h,k,pad,partitioned,hoisted", [
    (1, 32, 32, 28, 3, 1, True, False),  # the built-in model's: rows of 28 (unrolled groups)
    (2, 8, 16, 20, 5, 2, True, False),
    (1, 16, 32, 16, 1, 0, False, False),  # no padding to partition around
    (1, 64, 64, 7, 3, 1, True, True),  # rows of 7 (each group gathered into one word)
    (1, 128, 128, 9, 3, 1, True, True),  # weight-stationary, 4 lane tiles
    (3, 64, 96, 5, 3, 1, True, True),  # hoisted over a batch
])
def test_group_relayout_rows_exact(rng, caplog, batch, cin, cout, h, k, pad, partitioned,
                                   hoisted):
    """Re-laying out A for quads/pairs partitions each padded row around its padding, and
    the interior is vectorised along the row or per group; where several weight-stationary
    lane tiles would each redo it, it runs once, hoisted (AVX-512: 32 lanes a tile). Still
    bit-exact."""
    x, weight = _u8_s8(rng, (batch, cin, h, h), (cout, cin, k, k))

    def body(bb, xv):
        return relax.op.nn.conv2d(xv, relax.const(weight), padding=pad, out_dtype="int32")

    want = conv_ref(x.astype(np.int64), weight, 1, pad).astype(np.int32)
    for target in (TARGET, AVX2):
        if target is None:
            continue
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="mctvm.schedule"):
            run, taken = _build(_single(body, x), target)
        assert "Contraction" in taken.values(), taken
        if taken["quads"] or taken["pairs"]:
            assert taken["partitioned"] == partitioned, taken
        if cpu_schedules.vector_bits(target) == 512:
            assert ("padding hoisted" in caplog.text) == hoisted, caplog.text
        np.testing.assert_array_equal(run(x), want)


@pytest.mark.parametrize("m,k,n", [(1, 37, 32), (64, 130, 48), (64, 256, 16), (1, 1152, 256)])
def test_u8_s8_matmul_quads_exact(rng, m, k, n):
    a, b = _u8_s8(rng, (m, k), (k, n))
    want = (a.astype(np.int64) @ b).astype(np.int32)
    for target, quads in ((TARGET, QUADS_EXPECTED), (AVX_VNNI, True)):
        if target is None:
            continue
        run, taken = _build(_single(
            lambda bb, av: relax.op.matmul(av, relax.const(b), out_dtype="int32"), a), target)
        assert "Contraction" in taken.values(), taken
        assert taken["quads"] == quads, (target, taken)
        np.testing.assert_array_equal(run(a), want)


def test_quads_in_the_assembly(rng):
    """The quad path's intrinsic becomes vpdpbusd instructions (AVX512-VNNI hosts)."""
    if not QUADS_EXPECTED:
        pytest.skip("the host has no AVX512-VNNI")
    x, weight = _u8_s8(rng, (1, 16, 6, 6), (32, 16, 3, 3))
    mod = _single(lambda bb, xv: relax.op.nn.conv2d(xv, relax.const(weight), padding=1,
                                                    out_dtype="int32"), x)
    with TARGET:
        lowered = tvm.transform.Sequential(cpu.lowering_passes(TARGET))(mod)
        executable, _ = cpu.build(lowered, TARGET)
    asm = "".join(m.inspect_source("asm") for m in executable.mod.imports
                  if m.kind == "llvm")
    assert "vpdpbusd" in asm


# ---------------------------------------------------------------------------------------------
# matmul / dense


@pytest.mark.parametrize("m,k,n,dtype,const_b", [
    (37, 29, 23, "float32", True),
    (1, 100, 10, "float32", True),
    (64, 70, 130, "float32", False),
    (33, 65, 17, "int8", True),
    (8, 300, 48, "int16", False),
    (1, 64, 32, "int8", True),
    (19, 128, 64, "int16", True),
])
def test_matmul(rng, m, k, n, dtype, const_b):
    a = _tensor(rng, (m, k), dtype)
    b = _tensor(rng, (k, n), dtype)
    out_dtype = "int32" if dtype.startswith("int") else None
    if const_b:
        mod = _single(lambda bb, av: relax.op.matmul(av, relax.const(b), out_dtype=out_dtype), a)
        args = (a,)
    else:
        mod = _single(lambda bb, av, bv: relax.op.matmul(av, bv, out_dtype=out_dtype), a, b)
        args = (a, b)
    for target in (TARGET, AVX2) if dtype.startswith("int") else (TARGET,):
        if target is None:
            continue
        run, taken = _build(mod, target)
        assert "Contraction" in taken.values(), taken
        if dtype.startswith("int"):
            assert taken["pairs"] == (k % 2 == 0 and n % 16 == 0 and PAIRS_EXPECTED), taken
            np.testing.assert_array_equal(run(*args), (a.astype(np.int64) @ b).astype(np.int32))
        else:
            np.testing.assert_allclose(run(*args), a.astype(np.float64) @ b, rtol=1e-4,
                                       atol=1e-4)


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_int_weight_first_broadcast_matmul(rng, dtype):
    """W[m, k] @ x[b, k, n]: the weight (first operand) is the vector operand, the batched
    activation is re-laid out with k-pairs adjacent."""
    w = _tensor(rng, (32, 64), dtype)
    x = _tensor(rng, (3, 64, 8), dtype)
    run, taken = _build(_single(
        lambda bb, xv: relax.op.matmul(relax.const(w), xv, out_dtype="int32"), x))
    assert "Contraction" in taken.values(), taken
    assert taken["pairs"] == PAIRS_EXPECTED, taken
    np.testing.assert_array_equal(run(x), np.matmul(w.astype(np.int64), x).astype(np.int32))


@pytest.mark.parametrize("dtype", ["float32", "int16", "int8"])
def test_batched_activation_matmul(rng, caplog, dtype):
    """x[b, m, k] @ W[k, n] with few rows m: tiles of all m rows x several b."""
    x = _tensor(rng, (6, 5, 64), dtype)
    w = _tensor(rng, (64, 32), dtype)
    out_dtype = "int32" if dtype.startswith("int") else None
    with caplog.at_level(logging.DEBUG, logger="mctvm.schedule"):
        run, taken = _build(_single(
            lambda bb, xv: relax.op.matmul(xv, relax.const(w), out_dtype=out_dtype), x))
    assert "Contraction" in taken.values(), taken
    assert "x 2x5 rows" in caplog.text, caplog.text
    if dtype.startswith("int"):
        assert taken["pairs"] == PAIRS_EXPECTED, taken
        np.testing.assert_array_equal(run(x), (x.astype(np.int64) @ w).astype(np.int32))
    else:
        np.testing.assert_allclose(run(x), x.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cache_bytes,order", [(None, "input"), (0, "weight")])
@pytest.mark.parametrize("dtype", ["float32", "int16", "int8"])
def test_stationary_order(rng, monkeypatch, caplog, dtype, cache_bytes, order):
    """Both fit in cache: the larger operand (the input) stays. With no cache to count on,
    reading the input again per output-channel tile is cheaper than reading the weights
    again per image: weight-stationary (stride 2, batch 8)."""
    if cache_bytes is not None:
        monkeypatch.setattr(cpu_schedules, "_CACHE_BYTES", cache_bytes)
    x = _tensor(rng, (8, 16, 8, 8), dtype)
    weight = _tensor(rng, (64, 16, 3, 3), dtype)
    out_dtype = "int32" if dtype.startswith("int") else None
    with caplog.at_level(logging.DEBUG, logger="mctvm.schedule"):
        run, taken = _build(_single(lambda bb, xv: relax.op.nn.conv2d(
            xv, relax.const(weight), strides=2, padding=1, out_dtype=out_dtype), x))
    assert "Contraction" in taken.values(), taken
    assert f"{order}-stationary" in caplog.text, caplog.text
    want = conv_ref(x, weight, 2, 1)
    if dtype.startswith("int"):
        assert taken["pairs"] == PAIRS_EXPECTED, taken
        np.testing.assert_array_equal(run(x), want.astype(np.int32))
    else:
        np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-4)


def test_dense_transposed_weight_and_batch_matmul(rng):
    """x @ W^T with W [n, k] as given (B's lane axis first: packed), and a batched matmul."""
    x = _tensor(rng, (6, 40), "float32")
    w = _tensor(rng, (24, 40), "float32")
    run, taken = _build(_single(
        lambda bb, xv, wv: relax.op.matmul(xv, relax.op.permute_dims(wv)), x, w))
    np.testing.assert_allclose(run(x, w), x @ w.T, rtol=1e-4, atol=1e-4)
    a = _tensor(rng, (3, 5, 7), "float32")
    b = _tensor(rng, (3, 7, 9), "float32")
    run, taken = _build(_single(lambda bb, av, bv: relax.op.matmul(av, bv), a, b))
    assert "Contraction" in taken.values(), taken
    np.testing.assert_allclose(run(a, b), a @ b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# pooling / elementwise, whole models


def test_pooling_and_elementwise(rng):
    x = _tensor(rng, (4, 12, 30, 30), "float32")

    def body(bb, xv):
        y = bb.emit(relax.op.nn.max_pool2d(xv, pool_size=2, strides=2))
        y = bb.emit(relax.op.nn.avg_pool2d(y, pool_size=3, strides=1, padding=1))
        return relax.op.sigmoid(relax.op.multiply(y, relax.const(np.float32(2.0))))

    run, taken = _build(_single(body, x))
    assert "Elementwise" in taken.values(), taken
    mx = x.reshape(4, 12, 15, 2, 15, 2).max(axis=(3, 5))
    padded = np.pad(mx, ((0, 0), (0, 0), (1, 1), (1, 1)))
    avg = sum(padded[:, :, i:i + 15, j:j + 15] for i in range(3) for j in range(3))
    counts = np.pad(np.ones((15, 15)), 1)
    counts = sum(counts[i:i + 15, j:j + 15] for i in range(3) for j in range(3))
    want = 1 / (1 + np.exp(-2 * avg / counts))
    np.testing.assert_allclose(run(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 12, 32, 32), (2, 3, 5, 40), (64, 7)])
def test_softmax_rows(rng, shape):
    """Softmax (max, exp, sum, divide along the last axis) per row: rows of 32 values reduce
    in partial results side by side (a vector's lanes), rows of 40 and 7 serially."""
    x = (_tensor(rng, shape, "float32") - 0.5) * 20
    run, taken = _build(_single(lambda bb, xv: relax.op.nn.softmax(xv, axis=-1), x))
    assert list(taken.values())[0] == "RowReduction", taken
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(run(x), e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 32, 384), (3, 9, 48), (5, 20)])
def test_layer_norm_rows(rng, shape):
    x = _tensor(rng, shape, "float32") * 4 + 3
    gamma = _tensor(rng, shape[-1:], "float32")
    beta = _tensor(rng, shape[-1:], "float32")
    run, taken = _build(_single(lambda bb, xv: relax.op.nn.layer_norm(
        xv, relax.const(gamma), relax.const(beta), axes=[-1]), x))
    assert list(taken.values())[0] == "RowReduction", taken
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(x64.var(axis=-1, keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 64])
def test_builtin_model_matches_onnxruntime(rng, batch):
    model = onnx.load(default_model())
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    compiled = mctvm.compile(model, shapes={"input": x.shape})
    np.testing.assert_allclose(compiled(x), ort_run(model, {"input": x})[0], rtol=1e-4,
                               atol=1e-4)


def test_synthetic_models_match_onnxruntime(rng):
    for model, shape in ((synthetic.cnn(channels=(5, 12), image=(3, 18, 18)), (2, 3, 18, 18)),
                         (synthetic.transformer(seq=8, dim=32, heads=4, ffn=48), (2, 8, 32))):
        x = rng.standard_normal(shape).astype(np.float32)
        compiled = mctvm.compile(model, shapes={"input": shape})
        np.testing.assert_allclose(compiled(x), ort_run(model, {"input": x})[0], rtol=1e-4,
                                   atol=1e-4)


def test_weights_are_prepacked_at_compile_time():
    """The conv weights' re-packing is folded into constants: no packing kernel at run time."""
    rng = np.random.default_rng(1)
    weight = _tensor(rng, (32, 16, 3, 3), "float32")
    mod = _single(lambda bb, xv: relax.op.nn.conv2d(xv, relax.const(weight), padding=1),
                  _tensor(rng, (1, 16, 8, 8), "float32"))
    with TARGET:
        lowered = tvm.transform.Sequential(cpu.lowering_passes(TARGET))(mod)
    names = [gv.name_hint for gv, f in lowered.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)]
    assert names == ["fused_conv2d_prepacked"] or names == ["conv2d_prepacked"], names


def test_switch_and_threads(monkeypatch):
    monkeypatch.setenv(cpu_schedules.ENV_SWITCH, "0")
    assert not cpu_schedules.enabled()
    assert not any(isinstance(p, cpu_schedules.SplitWeightPrepack)
                   for p in cpu.lowering_passes(TARGET))
    monkeypatch.setenv(cpu_schedules.ENV_SWITCH, "1")
    assert cpu_schedules.enabled()
    # mctvm sets TVM_NUM_THREADS to the physical cores unless the user did
    assert os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu.configure_threads() == cpu.usable_cores() >= 1
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert cpu.configure_threads() == 3
