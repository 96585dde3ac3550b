"""Sparse integer GEMM/conv kernels (kernels/sparse_gemm.py) bit for bit against numpy, their
CUDA variants through nvcc, and LowerSparseGEMM: the same outputs with dense, CSR, BSR or
auto kernels for the same seed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tvm

import mctvm
from mctvm.kernels import sparse_gemm
from mctvm.models import synthetic
from mctvm.passes import lower_sparse_gemm
from mctvm.targets import cpu

from test_cpu_schedules import _has, conv_ref

TARGET = cpu.default_target()
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host=TARGET)
LANES = (16, 8)  # AVX-512 and AVX2 widths of int32 vectors (the BSR matmul block)
# the pmaddwd kernels (pairs=True) run where the host has AVX2 (lanes 8) / AVX-512BW (16)
PAIR_LANES = {8: _has("avx2"), 16: _has("avx512bw")}


def _weight(rng, shape, sparsity, dtype):
    high = 120 if dtype == "int8" else 3000
    w = rng.integers(-high, high + 1, size=shape)
    w[rng.random(shape) < sparsity] = 0
    return w.astype(dtype)


def _input(rng, shape, dtype):
    high = 127 if dtype == "int8" else 32767
    return rng.integers(-high, high + 1, size=shape).astype(dtype)


def _run(func, arrays, x, out_shape, target=TARGET):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros(out_shape, "int32"))
    ex["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def _exact(acc) -> np.ndarray:
    """int64 sums wrapped to int32, as the int32 accumulation computes them."""
    return acc.astype(np.int64).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# formats

def test_csr_and_bsr_formats_hold_the_weight():
    rng = np.random.default_rng(0)
    w = _weight(rng, (13, 21), 0.6, "int16")
    w[3] = 0  # an all-zero output row
    csr = sparse_gemm.csr_rows(w)
    dense = np.zeros_like(w)
    for o in range(13):
        lo, hi = csr.indptr[o], csr.indptr[o + 1]
        dense[o, csr.indices[lo:hi]] = csr.data[lo:hi]
    np.testing.assert_array_equal(dense, w)
    assert csr.nnz == np.count_nonzero(w) and csr.indptr[4] == csr.indptr[3]
    bsr = sparse_gemm.bsr_rows(w, 4)
    dense = np.zeros((16, 21), w.dtype)
    for b in range(4):
        for j in range(bsr.indptr[b], bsr.indptr[b + 1]):
            dense[4 * b:4 * b + 4, bsr.indices[j]] = bsr.data[j]
    np.testing.assert_array_equal(dense[:13], w)
    assert not dense[13:].any()
    assert sparse_gemm.csr_rows(np.zeros((3, 5), "int8")).arrays[1].shape == (1,)


def test_pair_formats_hold_the_weight():
    rng = np.random.default_rng(1)
    w = _weight(rng, (7, 11), 0.6, "int16")  # odd reduction: the last pair's high half is 0
    pairs = sparse_gemm.pair_blocks(w)
    dense = np.zeros((7, 12), np.int64)
    for o in range(7):
        for j in range(pairs.indptr[o], pairs.indptr[o + 1]):
            packed = int(pairs.data[j]) & 0xFFFFFFFF
            low, high = packed & 0xFFFF, packed >> 16
            dense[o, 2 * pairs.indices[j]:2 * pairs.indices[j] + 2] = [
                low - (low >> 15) * 0x10000, high - (high >> 15) * 0x10000]
    np.testing.assert_array_equal(dense[:, :11], w)
    csr = sparse_gemm.paired_csr(sparse_gemm.csr_rows(w))
    assert csr.indices.shape == (int(csr.indptr[-1]), 2)
    assert np.all(np.diff(csr.indptr) == (np.count_nonzero(w, axis=1) + 1) // 2)


def test_matmul_chunks_and_padded_pairs_hold_the_weight():
    """Rows split by reduction chunk and padded with zero entries to a multiple of the
    accumulator sets still hold every nonzero once, in its chunk, and the pads point inside
    the row's chunk (for pair blocks) or at the row's own first index (for CSR pairs)."""
    rng = np.random.default_rng(2)
    w = _weight(rng, (9, 50), 0.7, "int16")
    chunked = sparse_gemm._matmul_chunks(sparse_gemm.csr_rows(w), 16, 50, 3)
    nk = 4
    assert chunked.indptr.shape == (9 * nk + 1,) and np.all(np.diff(chunked.indptr) % 3 == 0)
    dense = np.zeros((9, 50), np.int64)
    for row in range(9 * nk):
        lo, hi = chunked.indptr[row], chunked.indptr[row + 1]
        assert np.all(chunked.indices[lo:hi] // 16 == row % nk)
        np.add.at(dense[row // nk], chunked.indices[lo:hi], chunked.data[lo:hi])
    np.testing.assert_array_equal(dense, w)
    pairs = sparse_gemm.paired_csr(sparse_gemm._matmul_chunks(sparse_gemm.csr_rows(w), 16, 50,
                                                              1), multiple=2)
    assert np.all(np.diff(pairs.indptr) % 2 == 0)
    halves = pairs.data.view(np.int16).reshape(-1, 2)
    dense = np.zeros((9, 50), np.int64)
    for row in range(9 * nk):
        lo, hi = pairs.indptr[row], pairs.indptr[row + 1]
        assert np.all(pairs.indices[lo:hi] // 16 == row % nk)
        for h in range(2):
            np.add.at(dense[row // nk], pairs.indices[lo:hi, h], halves[lo:hi, h])
    np.testing.assert_array_equal(dense, w)


@pytest.mark.skipif(not PAIR_LANES[16], reason="needs AVX-512BW")
def test_matmul_pairs_beyond_uint16_reduction_fall_back():
    """CSR pairs pack two reduction indices in uint16 halves: a reduction beyond 2**16 takes
    the plain CSR kernel, still exact."""
    rng = np.random.default_rng(5)
    K = (1 << 16) + 3
    w = _weight(rng, (K, 2), 0.999, "int16")
    w[K - 1] = [7, -9]  # nonzeros past the uint16 range
    a = _input(rng, (2, K), "int16")
    func, arrays = sparse_gemm.sparse_matmul((2, K), "int16", w, "csr", pairs=True, name="main")
    assert arrays[1].ndim == 1 and arrays[1].max() >= 1 << 16  # plain indices, not packed
    np.testing.assert_array_equal(_run(func, arrays, a, (2, 2)),
                                  _exact(a.astype(np.int64) @ w.astype(np.int64)))


def test_data_takes_the_narrowest_type():
    assert sparse_gemm.csr_rows(np.array([[1, -128]], "int32")).data.dtype == np.int8
    assert sparse_gemm.csr_rows(np.array([[1, 300]], "int16")).data.dtype == np.int16


# ---------------------------------------------------------------------------------------------
# matmul, CPU

# (100, 70, 40): two row tiles, the second partial; (64, 1152, 33): four reduction chunks
MATMULS = [(1, 37, 29), (64, 96, 48), (13, 50, 17), (64, 1152, 33), (3, 1, 1), (1, 7, 16),
           (100, 70, 40)]
SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)


@pytest.mark.parametrize("fmt", sparse_gemm.FORMATS)
@pytest.mark.parametrize("M,K,N", MATMULS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_matmul_matches_numpy(fmt, M, K, N, dtype):
    rng = np.random.default_rng(M * 1000 + K + N)
    for i, sparsity in enumerate(SPARSITIES):
        w = _weight(rng, (K, N), sparsity, dtype)
        w[:, N // 2] = 0  # an all-zero output column
        w[K // 2, :] = 0  # an all-zero input row
        a = _input(rng, (M, K), dtype)
        lanes = LANES[i % 2]
        pairs = i % 3 != 2 and PAIR_LANES[lanes]
        func, arrays = sparse_gemm.sparse_matmul((M, K), dtype, w, fmt, lanes=lanes, pairs=pairs,
                                                 name="main")
        got = _run(func, arrays, a, (M, N))
        np.testing.assert_array_equal(got, _exact(a.astype(np.int64) @ w.astype(np.int64)),
                                      err_msg=f"{fmt} {sparsity} lanes={lanes} pairs={pairs}")


def test_matmul_mixed_operand_types():
    """int8 activations with int16 weights (and the reverse) accumulate exactly too."""
    rng = np.random.default_rng(3)
    for a_dtype, w_dtype in (("int8", "int16"), ("int16", "int8")):
        w = _weight(rng, (40, 24), 0.5, w_dtype)
        a = _input(rng, (5, 40), a_dtype)
        for fmt in sparse_gemm.FORMATS:
            func, arrays = sparse_gemm.sparse_matmul(a.shape, a_dtype, w, fmt, name="main")
            np.testing.assert_array_equal(_run(func, arrays, a, (5, 24)),
                                          _exact(a.astype(np.int64) @ w.astype(np.int64)))


def test_kernels_are_marked_scheduled_and_parallel():
    w = _weight(np.random.default_rng(4), (32, 32), 0.5, "int8")
    for fmt in sparse_gemm.FORMATS:
        func, _ = sparse_gemm.sparse_matmul((8, 32), "int8", w, fmt)
        assert bool(func.attrs["tirx.is_scheduled"])
        text = func.script()
        assert "T.parallel" in text and "T.vectorized" in text


# ---------------------------------------------------------------------------------------------
# conv2d, CPU

CONVS = [
    # (batch, cin, cout, h, w, k, stride, pad, dilation)
    (1, 3, 17, 13, 11, 3, 1, 1, 1),
    (2, 5, 8, 9, 9, 3, 2, 1, 1),
    (1, 16, 24, 7, 7, 1, 1, 0, 1),
    (1, 4, 10, 12, 12, 3, 1, 2, 2),
    (1, 3, 8, 15, 15, 7, 2, 3, 1),
    (3, 6, 5, 8, 10, 3, 1, 0, 1),
    (64, 8, 8, 7, 7, 3, 1, 1, 1),
    # batch in the lanes (pair blocks from one vector of samples on): a partial last group,
    # odd channels, stride 2, and 70 channels (two chunks of channel pairs)
    (17, 5, 6, 9, 11, 3, 1, 1, 1),
    (20, 3, 4, 10, 20, 3, 2, 1, 1),
    (33, 70, 9, 5, 6, 3, 1, 1, 1),
]


@pytest.mark.parametrize("fmt", sparse_gemm.FORMATS)
@pytest.mark.parametrize("B,C,O,H,W,k,s,p,d", CONVS)
def test_conv2d_matches_numpy(fmt, B, C, O, H, W, k, s, p, d):
    rng = np.random.default_rng(B * 100 + C * 10 + O)
    for i, (dtype, sparsity) in enumerate((("int16", 0.0), ("int8", 0.5), ("int16", 0.9),
                                           ("int8", 0.99), ("int16", 1.0), ("int16", 0.7))):
        w = _weight(rng, (O, C, k, k), sparsity, dtype)
        w[O // 2] = 0  # an all-zero output channel
        x = _input(rng, (B, C, H, W), dtype)
        lanes = LANES[i % 2]
        pairs = i != 4 and PAIR_LANES[lanes]
        func, arrays = sparse_gemm.sparse_conv2d(x.shape, dtype, w, fmt, strides=(s, s),
                                                 padding=(p, p, p, p), dilation=(d, d),
                                                 lanes=lanes, pairs=pairs, name="main")
        want = _exact(conv_ref(x, w, s, p, d))
        np.testing.assert_array_equal(_run(func, arrays, x, want.shape), want,
                                      err_msg=f"{fmt} {dtype} {sparsity} pairs={pairs}")


def test_conv2d_asymmetric_padding_and_strides():
    rng = np.random.default_rng(5)
    x = _input(rng, (2, 3, 10, 9), "int16")
    w = _weight(rng, (6, 3, 3, 2), 0.4, "int8")
    for fmt in sparse_gemm.FORMATS:
        func, arrays = sparse_gemm.sparse_conv2d(x.shape, "int16", w, fmt, strides=(2, 1),
                                                 padding=(1, 0, 2, 1), dilation=(1, 2),
                                                 name="main")
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 2), (0, 1)))
        want = _exact(_conv_valid(xp, w.astype(np.int64), (2, 1), (1, 2)))
        np.testing.assert_array_equal(_run(func, arrays, x, want.shape), want)


def _conv_valid(xp, w, strides, dilation):
    (sh, sw), (dh, dw) = strides, dilation
    b, c, hp, wp = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, o, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                       j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="matmul needs"):
        sparse_gemm.sparse_matmul((2, 3), "int8", np.zeros((4, 2), "int8"), "csr")
    with pytest.raises(ValueError, match="groups = 1"):
        sparse_gemm.sparse_conv2d((1, 4, 5, 5), "int8", np.zeros((4, 1, 3, 3), "int8"), "csr")
    with pytest.raises(ValueError, match="sparse format"):
        sparse_gemm.sparse_matmul((2, 3), "int8", np.zeros((3, 2), "int8"), "coo")


# ---------------------------------------------------------------------------------------------
# CUDA: compiles, and nvcc turns the source into PTX

def _cuda_source(func):
    from mctvm.targets import cuda

    with CUDA:
        _, sources = cuda.build(tvm.IRModule({"main": func}), CUDA)
    return sources["cuda"]


@pytest.mark.parametrize("fmt", sparse_gemm.FORMATS)
def test_cuda_kernels_compile_to_ptx(fmt, tmp_path):
    rng = np.random.default_rng(6)
    matmul, _ = sparse_gemm.sparse_matmul((64, 96), "int16", _weight(rng, (96, 40), 0.7, "int8"),
                                          fmt, device="cuda", name="main")
    conv, _ = sparse_gemm.sparse_conv2d((2, 8, 9, 9), "int8", _weight(rng, (12, 8, 3, 3), 0.7,
                                                                       "int8"),
                                        fmt, strides=(2, 2), padding=(1, 1, 1, 1), device="cuda",
                                        name="main")
    for index, func in enumerate((matmul, conv)):
        source = _cuda_source(func)
        assert "blockIdx.x" in source and "threadIdx.x" in source
        if shutil.which("nvcc") is None:
            pytest.skip("nvcc not installed: the CUDA source compiled, PTX not checked")
        cu, ptx = tmp_path / f"k{index}.cu", tmp_path / f"k{index}.ptx"
        cu.write_text(source)
        subprocess.run(["nvcc", "-arch=sm_80", "--ptx", str(cu), "-o", str(ptx)], check=True,
                       capture_output=True)
        text = ptx.read_text()
        assert ".entry" in text and ("mad.lo.s32" in text or "mul.lo.s32" in text)


# ---------------------------------------------------------------------------------------------
# LowerSparseGEMM in the MCQ pipeline

# Batch 4: every epilogue (int32 -> float rescale, bias, ReLU) after a sparse kernel has >=
# 4096 elements, so the default CPU schedules inline it into one expression, as the dense
# GEMM's fused epilogue computes it (both contract the last multiply-add into an FMA).
# Smaller epilogue kernels stay unscheduled (targets/cpu_schedules.Elementwise), compute
# without FMA and can differ from the dense program by one float32 ulp; hence skip "last"
# (the 10-logit GEMM) in the equality tests. The int32 results are exact in every case.
SHAPE = (4, 1, 16, 16)


@pytest.fixture(scope="module")
def model():
    return synthetic.cnn(seed=4)


@pytest.fixture(scope="module")
def compiled(model):
    return {mode: mctvm.compile(model, K=0.5, skip=("last",), sparse=mode,
                                shapes={"input": SHAPE})
            for mode in ("dense", "csr", "bsr", "auto")}


def test_every_kernel_choice_gives_the_same_outputs(compiled):
    x = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    want = compiled["dense"](x, seed=1)
    for mode in ("csr", "bsr", "auto"):
        np.testing.assert_array_equal(compiled[mode](x, seed=1), want, err_msg=mode)


def test_uint8_counts_stay_dense_or_widen_for_sparse_kernels(model):
    """activation_dtype="uint8": "auto" keeps the uint8 layers dense (u8 x s8 quads); csr and
    bsr run them on int16 counts; all give the same outputs."""
    x = np.random.default_rng(12).standard_normal(SHAPE).astype(np.float32)
    programs = {mode: mctvm.compile(model, K=0.5, skip=("last",), sparse=mode,
                                    activation_dtype="uint8", shapes={"input": SHAPE})
                for mode in ("dense", "csr", "bsr", "auto")}
    want = programs["dense"](x, seed=3)
    for mode in ("csr", "bsr", "auto"):
        np.testing.assert_array_equal(programs[mode](x, seed=3), want, err_msg=mode)
    rows = programs["auto"].report().rows  # the last layer is float
    assert [(r["activation_dtype"], r["gemm_kernel"]) for r in rows[:2]] == [
        ("int8", rows[0]["gemm_kernel"]), ("uint8", "dense")]
    assert [r["gemm_kernel"] for r in programs["csr"].report().rows[:2]] == ["csr", "csr"]


@pytest.mark.skipif(not _has("avx2"), reason="needs an x86 host with AVX2")
def test_avx2_target_gives_the_same_outputs(model):
    """An AVX2-only target (8 lanes, pmaddwd without VNNI) on this host."""
    target = {"kind": "llvm", "mcpu": "haswell"}
    x = np.random.default_rng(11).standard_normal(SHAPE).astype(np.float32)
    want = mctvm.compile(model, K=0.5, skip=("last",), sparse="dense", target=target,
                         shapes={"input": SHAPE})(x, seed=2)
    for mode in ("csr", "bsr"):
        got = mctvm.compile(model, K=0.5, skip=("last",), sparse=mode, target=target,
                            shapes={"input": SHAPE})(x, seed=2)
        np.testing.assert_array_equal(got, want, err_msg=mode)


def test_report_shows_the_kernel(compiled):
    x = np.ones(SHAPE, np.float32)
    for mode in ("dense", "csr", "bsr"):
        compiled[mode](x, seed=0)
        report = compiled[mode].report()
        assert [r["gemm_kernel"] for r in report.rows] == [mode] * 2 + [None]
        assert "kernel" in str(report).splitlines()[0]
        assert f"  {mode}" in str(report)
    assert all(r["gemm_kernel"] in ("dense", "csr", "bsr")
               for r in compiled["auto"].report().rows[:2])


def test_sparse_kernels_and_fused_epilogue_in_the_program(model, tmp_path):
    mctvm.compile(model, K=0.5, skip=(), sparse="csr", shapes={"input": SHAPE},
                  dump_dir=tmp_path)
    sparse = (tmp_path / "05-mcq-sparse.py").read_text()
    assert sparse.count("R.call_tir(cls.mcq_csr_") == 3
    lowered = next(tmp_path.glob("*-lower-llvm.py")).read_text()
    # the int32 -> float rescale, bias and ReLU after each sparse kernel: one fused kernel
    assert lowered.count("def fused_cast") == 3 and lowered.count("_multiply") >= 3


def test_float_layers_and_no_integer_gemm_keep_no_kernel(model):
    weights_only = mctvm.compile(model, K=2, quantize=("weights",), sparse="csr",
                                 shapes={"input": SHAPE})
    assert all(r["gemm_kernel"] is None for r in weights_only.report().rows)


def test_choose_follows_the_crossover_table(monkeypatch):
    w = np.zeros((64, 32), "int8")
    w[:2] = 1  # 97% zeros
    monkeypatch.setattr(lower_sparse_gemm, "CROSSOVER",
                        {("conv2d", "csr", 1): 0.9, ("conv2d", "bsr", 1): 0.5,
                         ("conv2d", "csr", 64): 0.95, ("conv2d", "bsr", 64): None})
    choose = lower_sparse_gemm.choose
    assert choose("conv2d", w, 1, "auto") == "bsr"  # 0.97 - 0.5 > 0.97 - 0.9
    assert choose("conv2d", w, 64, "auto") == "csr"
    assert choose("conv2d", w, 16, "auto") == "csr"  # 16 samples fill the lanes: batched
    assert choose("conv2d", w, 8, "auto") == "bsr"  # fewer: the batch-1 crossovers
    assert choose("conv2d", w, 64, "auto", measured=False) == "dense"
    assert choose("matmul", w, 1, "auto") == "dense"  # not in the table
    assert choose("conv2d", np.ones_like(w), 1, "auto") == "dense"
    assert choose("conv2d", np.ones_like(w), 1, "bsr") == "bsr"


def test_bad_sparse_option_is_a_clear_error(model):
    with pytest.raises(mctvm.MctvmError, match="sparse='coo'"):
        mctvm.compile(model, K=2, sparse="coo", shapes={"input": SHAPE})


def test_cuda_program_uses_the_sparse_kernels(model):
    compiled = mctvm.compile(model, K=0.5, skip=(), target="cuda", sparse="bsr",
                             shapes={"input": SHAPE})
    assert "mcq_bsr_conv2d_1" in compiled.sources["cuda"]
    assert [r["gemm_kernel"] for r in compiled.report().rows] == ["bsr"] * 3


@pytest.mark.slow
def test_builtin_model_batch_64_same_outputs():
    from mctvm.models import default_model

    shape = (64, 1, 28, 28)
    x = np.random.default_rng(8).random(shape, dtype=np.float32)
    outputs = [mctvm.compile(default_model(), K=0.5, skip=("first", "last"), sparse=mode,
                             shapes={"input": shape})(x, seed=3)
               for mode in ("dense", "csr", "bsr")]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_array_equal(outputs[2], outputs[0])


@pytest.mark.slow
def test_transformer_matmuls_with_3d_inputs():
    model = synthetic.transformer(seq=8, dim=32, heads=2, ffn=64)
    # 16 x 8 tokens: every epilogue has >= 4096 elements (see SHAPE)
    shapes = {model.graph.input[0].name: (16, 8, 32)}
    x = np.random.default_rng(9).standard_normal((16, 8, 32)).astype(np.float32)
    dense = mctvm.compile(model, K=1, skip=(), sparse="dense", shapes=shapes)
    csr = mctvm.compile(model, K=1, skip=(), sparse="csr", shapes=shapes)
    np.testing.assert_array_equal(csr(x, seed=2), dense(x, seed=2))
    assert "csr" in [r["gemm_kernel"] for r in csr.report().rows]
