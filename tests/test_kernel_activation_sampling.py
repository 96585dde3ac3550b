"""The TIR activation-sampling kernel against mctvm.mcq.activation_counts, count for count."""

import functools
import re
import zlib
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm.target import codegen

from mctvm import mcq
from mctvm.targets.cuda import device_modules
from mctvm.kernels.activation_sampling import (
    COUNT_LIMITS,
    SCAN_BLOCK,
    SERIAL_MAX,
    MaxPool2d,
    cuda_sampling_prim_func,
    sampling_prim_func,
    xi_for,
)

GENERIC = {"kind": "llvm"}
HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
NP_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "uint8": np.uint8}


@functools.lru_cache(maxsize=None)
def build(shape, K, stream, out_dtype="int8", target=tuple(GENERIC.items()), pool=None):
    func = sampling_prim_func(shape, K, stream, out_dtype, name="main", pool=pool)
    return tvm.compile(func, target=tvm.target.Target(dict(target)))


def run(x, K, seed, stream=3, out_dtype="int8", target=GENERIC, pool=None, shape=None):
    """The kernel's (counts, scale, stats) for x; with a pool, x is its input and `shape`
    the sampled shape."""
    shape = shape or x.shape
    ex = build(shape, K, stream, out_dtype, tuple(target.items()), pool)
    B = x.shape[0]
    counts = tvm.runtime.tensor(np.full(shape, 99, NP_DTYPES[out_dtype]))  # junk to overwrite
    scale = tvm.runtime.tensor(np.full(B, -1, np.float32))
    stats = tvm.runtime.tensor(np.full((B, 3), -1, np.int32))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([seed], np.int64)),
               counts, scale, stats)
    return counts.numpy(), scale.numpy(), stats.numpy()


def expected(x, K, seed, stream=3, out_dtype="int8"):
    ref = mcq.activation_counts(x, K, xi_for(seed, stream), scan_block=SCAN_BLOCK)
    lim = COUNT_LIMITS[out_dtype]
    c = ref.counts.reshape(len(x), -1)
    stats = np.stack([
        np.count_nonzero(c, axis=1),
        np.minimum(np.abs(c).max(axis=1), 2**31 - 1),
        np.count_nonzero(np.abs(c) > lim, axis=1),
    ], axis=1).astype(np.int32)
    counts = np.clip(ref.counts, -lim, lim).astype(NP_DTYPES[out_dtype])
    return counts, np.asarray(ref.scale, np.float64), stats, ref


def check(x, K, seed, stream=3, out_dtype="int8", target=GENERIC):
    counts, scale, stats = run(x, K, seed, stream, out_dtype, target)
    want_counts, want_scale, want_stats, ref = expected(x, K, seed, stream, out_dtype)
    np.testing.assert_array_equal(counts, want_counts)
    # f / N in float64 then rounded once: the float32 of the reference's scale, exactly
    np.testing.assert_array_equal(scale, want_scale.astype(np.float32))
    np.testing.assert_allclose(scale, want_scale, rtol=2**-24, atol=0)
    np.testing.assert_array_equal(stats, want_stats)
    return counts, scale, stats, ref


def data(kind, shape, rng):
    if kind == "gaussian":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "relu":
        return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    if kind == "cauchy":
        return rng.standard_cauchy(shape).astype(np.float32)
    if kind == "zero-sample":
        x = rng.standard_normal(shape).astype(np.float32)
        x[len(x) // 2] = 0
        return x
    raise ValueError(kind)


# one scan block per sample, several (a batch: one task per sample; one sample: its blocks
# in parallel), and sizes that are not multiples of the block
# (1, > SERIAL_MAX): one sample's blocks in parallel; smaller single samples run serially
SHAPES = [(1, 7), (4, 3, 5), (4, 2, 3, 3), (3, 1), (2, 1, 1, 1), (5, 131),
          (1, SCAN_BLOCK * 5 + 3), (1, SERIAL_MAX + SCAN_BLOCK * 3 + 5),
          (3, SCAN_BLOCK * 9 + 1), (2, SCAN_BLOCK * 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("K", [0.5, 1, 2, 5])
@pytest.mark.parametrize("kind", ["gaussian", "relu", "cauchy", "zero-sample"])
def test_matches_the_numpy_reference(shape, K, kind):
    rng = np.random.default_rng(zlib.crc32(repr((shape, K, kind)).encode()))
    x = data(kind, shape, rng)
    for seed in (0, 1234567):
        counts, scale, stats, ref = check(x, K, seed)
        if kind == "zero-sample" and len(x) > 1:
            b = len(x) // 2
            assert not counts[b].any() and scale[b] == 0 and not stats[b].any()


@pytest.mark.parametrize("seed", [5, -5, 2**62 + 17, -(2**63)])
def test_seed_bits_and_streams(seed):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    for stream in (0, 9, 2**32 - 1):
        check(x, 2, seed, stream)


def test_one_xi_for_the_whole_batch():
    rng = np.random.default_rng(2)
    row = rng.standard_normal(50).astype(np.float32)
    x = np.stack([row] * 4)
    counts, scale, stats = run(x, 1.5, 77)
    assert (counts == counts[0]).all() and (scale == scale[0]).all()


def test_counts_sum_to_N_and_follow_the_seed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 7)).astype(np.float32)
    N = mcq._num_samples(5, 21, "sample")
    seen = set()
    for seed in range(20):
        counts, _, _ = run(x, 5, seed)
        assert (np.abs(counts.astype(np.int64)).reshape(4, -1).sum(axis=1) == N).all()
        seen.add(counts.tobytes())
    assert len(seen) > 10  # the run-time seed changes the draw


def test_within_one_count_of_the_serial_scan():
    # the bound against the float64 serial reference: |difference| <= 1, same total
    rng = np.random.default_rng(8)
    for shape in ((1, 300_000), (4, 50_001)):
        x = rng.standard_cauchy(shape).astype(np.float32)
        counts, _, _ = run(x, 3, 21, out_dtype="int32")
        serial = mcq.activation_counts(x, 3, xi_for(21, 3)).counts
        assert np.abs(counts.astype(np.int64) - serial).max() <= 1
        np.testing.assert_array_equal(np.abs(counts.astype(np.int64)).sum(axis=1),
                                      np.abs(serial).sum(axis=1))


def test_odd_sizes_across_numpy_tiles():
    # rows of more than mcq's 2**15-element tile: numpy carries the cumsum across tiles
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 40_000)).astype(np.float32)
    check(x, 1, 99)


def test_about_three_million_elements():
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal((4, 3, 512, 512)), 0).astype(np.float32)  # 3.1M
    counts, scale, stats, ref = check(x, 2, 2024)
    assert (stats[:, 2] == 0).all()


def test_host_cpu_target_is_also_exact():
    # the host's mcpu (with FMA units where the CPU has them)
    rng = np.random.default_rng(6)
    for kind in ("gaussian", "cauchy"):
        x = data(kind, (4, 3, 50), rng)
        for K in (0.5, 5):
            check(x, K, 31337, target=HOST)


@pytest.mark.parametrize("batch", [1, 4])
def test_no_fused_multiply_add(batch):
    # an FMA-capable CPU: LLVM must not contract y = cs * r into y - k
    ex = tvm.compile(sampling_prim_func((batch, 3000), 5, 0, name="main"),
                     target=tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    asm = ex.mod.inspect_source("asm")
    assert "vdivsd" in asm  # r = N / f, once per scan block: the kernel is there
    # y - k contracted would be an fmsub (or an fnm* form); the scan's v + shifted * {0, 1}
    # may be an fmadd, whose product is exact
    assert not re.findall(r"\bv?f(n?msub|nmadd)\w*", asm)
    assert "vdivpd" not in asm  # no division per value
    if batch > 1:  # one task per sample: y = cs * r runs in SIMD lanes
        assert "vmulpd" in asm


def test_saturation_int8():
    x = np.full((2, 100), 0.01, np.float32)
    x[0, 10] = 1e4
    x[1, 20] = -1e4
    x[1, 30] = 50.0  # gets more than 127 hits too
    counts, scale, stats, ref = check(x, 5, 11)
    assert ref.counts[0, 10] > 127 and ref.counts[1, 20] < -127
    assert counts[0, 10] == 127 and counts[1, 20] == -127
    assert stats[0, 1] == ref.counts[0, 10] and stats[0, 2] == 1
    assert stats[1, 1] == -ref.counts[1, 20]
    assert stats[1, 2] == np.count_nonzero(np.abs(ref.counts[1]) > 127)
    assert counts.min() >= -127 and counts.max() <= 127  # clipped, never wrapped


def test_saturation_int16():
    x = np.full((2, 10_000), 1e-3, np.float32)
    x[0, 123] = 1e6
    x[1, 456] = -1e6
    counts, scale, stats, ref = check(x, 5, 12, out_dtype="int16")
    assert ref.counts[0, 123] > 32767 and counts[0, 123] == 32767
    assert counts[1, 456] == -32767
    assert (stats[:, 2] == 1).all() and (stats[:, 1] > 32767).all()
    # int8 on the same data: many more saturations, all reported
    c8, _, s8, ref8 = check(x, 5, 12, out_dtype="int8")
    assert (s8[:, 2] >= 1).all()


def test_uint8_counts_of_non_negative_inputs_saturate_at_255():
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((3, 700)), 0).astype(np.float32)
    x[0, 17] = 1e5  # nearly all of N = 3500 hits
    counts, _, stats, ref = check(x, 5, 4, out_dtype="uint8")
    assert ref.counts[0, 17] > 255 and counts[0, 17] == 255
    assert stats[0, 2] == 1 and (stats[1:, 2] == 0).all()


def max_pool_reference(x, size, stride):
    """Max pool of NCHW x without padding, window by window."""
    (kh, kw), (sh, sw) = size, stride
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("shape, size, stride, flat", [
    ((3, 4, 8, 10), (2, 2), (2, 2), False),  # even width: rows read as 64-bit pairs
    ((2, 5, 7, 7), (2, 2), (2, 2), True),  # odd width, output flattened (VGG-7's last pool)
    ((2, 3, 9, 11), (3, 3), (2, 2), False),
    ((1, 4, 9, 9), (3, 3), (1, 1), False),  # one sample, serial
    ((1, 64, 48, 48), (2, 2), (2, 2), False),  # one sample over SERIAL_MAX: parallel stages
])
@pytest.mark.parametrize("out_dtype, kind", [("uint8", "relu"), ("int16", "gaussian")])
@pytest.mark.parametrize("target", [GENERIC, HOST], ids=["generic", "host"])
def test_fused_max_pool_samples_the_pooled_values(shape, size, stride, flat, out_dtype, kind,
                                                  target):
    rng = np.random.default_rng(sum(shape))
    x = data(kind, shape, rng)
    pooled = max_pool_reference(x, size, stride)
    if flat:
        pooled = pooled.reshape(len(pooled), -1)
    if shape == (1, 64, 48, 48):
        assert pooled.size > SERIAL_MAX
    pool = MaxPool2d(shape[1], shape[2], shape[3], size, stride)
    got = run(x, 2, 77, out_dtype=out_dtype, target=target, pool=pool, shape=pooled.shape)
    want_counts, want_scale, want_stats, _ = expected(pooled, 2, 77, out_dtype=out_dtype)
    np.testing.assert_array_equal(got[0], want_counts)
    np.testing.assert_array_equal(got[1], want_scale.astype(np.float32))
    np.testing.assert_array_equal(got[2], want_stats)


def test_fused_max_pool_must_produce_the_sampled_values():
    pool = MaxPool2d(4, 8, 8, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="4x4x4 values per sample"):
        sampling_prim_func((2, 4, 8, 8), 1, 0, pool=pool)
    assert sampling_prim_func((2, 64), 1, 0, pool=pool) is not None


def test_int32_output():
    rng = np.random.default_rng(7)
    check(rng.standard_cauchy((2, 500)).astype(np.float32), 5, 8, out_dtype="int32")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="K must be"):
        sampling_prim_func((2, 3), 0, 0)
    with pytest.raises(ValueError, match="0 samples"):
        sampling_prim_func((2, 1), 0.1, 0)
    with pytest.raises(ValueError, match="out_dtype"):
        sampling_prim_func((2, 3), 1, 0, "uint16")
    with pytest.raises(ValueError, match="stream"):
        sampling_prim_func((2, 3), 1, -1)
    with pytest.raises(ValueError, match="int32 indexing"):
        sampling_prim_func((2**16, 2**15), 1, 0)
    with pytest.raises(ValueError, match="device"):
        sampling_prim_func((2, 3), 1, 0, device="vta")


def _cuda_source(pool=None, shape=(100, 8, 5, 5)):
    func = cuda_sampling_prim_func(shape, 5, 3, "int8", name="main", pool=pool)
    ex = tvm.compile(func, target=tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    return "\n".join(m.inspect_source() for m in device_modules(ex.mod))


@pytest.fixture(scope="module")
def cuda_source():
    return _cuda_source()


def test_cuda_fused_max_pool_compiles(cuda_source):
    # a first kernel pools each channel plane into a buffer that the sampling kernels read
    source = _cuda_source(MaxPool2d(8, 10, 10, (2, 2), (2, 2)))

    def kernels(text):  # name -> parameters
        return dict(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)",
                               text))

    fused, plain = kernels(source), kernels(cuda_source)
    assert len(fused) == len(plain) + 1 == 5
    assert [name for name, params in fused.items() if "xv_ptr" in params] == ["main_kernel"]
    assert "pv_ptr" in fused["main_kernel"]


def test_cuda_compiles(cuda_source):
    assert re.search(r'extern "C" __global__ void (__launch_bounds__\(\d+\) )?main_kernel\(',
                     cuda_source)
    assert "blockIdx.x" in cuda_source and "threadIdx.x" in cuda_source
    assert "__dmul_rn" in cuda_source  # y = N * P never contracted into an FMA
    # xi's 2**-53 as a division by 2**53: TVM prints float64 constants with 15 decimals
    assert "9007199254740992.0" in cuda_source
    assert "3528531795" in cuda_source and "3449720151" in cuda_source  # Philox multipliers


@pytest.mark.parametrize("fused_pool", [False, True])
def test_cuda_source_compiles_with_nvcc(cuda_source, tmp_path, fused_pool):
    if not shutil.which("nvcc"):
        pytest.skip("nvcc is not installed")
    src = tmp_path / "sample.cu"
    src.write_text(_cuda_source(MaxPool2d(8, 10, 10, (2, 2), (2, 2))) if fused_pool
                   else cuda_source)
    ptx = tmp_path / "sample.ptx"
    subprocess.run(["nvcc", "-arch=sm_80", "--ptx", str(src), "-o", str(ptx)], check=True,
                   capture_output=True)
    text = ptx.read_text()
    assert ".entry main_kernel" in text
    # no fused multiply-add on float64 between N * P and the subtraction of floor
    assert "mul.rn.f64" in text


def test_in_a_relax_module_through_call_tir():
    # the default kernel is private, as Relax wants: two of them in one module, each named
    # after its GlobalVar, called with R.call_tir in destination-passing style
    from tvm import relax

    shape = (2, 3, 10)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), "float32"))
    seed = relax.Var("seed", relax.TensorType([1], "int64"))
    out_ty = [relax.TensorType(list(shape), "int8"), relax.TensorType([2], "float32"),
              relax.TensorType([2, 3], "int32")]
    with bb.function("main", [x, seed]):
        with bb.dataflow():
            outs = []
            for stream in (0, 1):
                func = sampling_prim_func(shape, 2, stream)
                assert "global_symbol" not in (func.attrs or {})
                gvar = bb.add_func(func, f"mcq_sample_{stream}")
                sampled = bb.emit(relax.call_tir(gvar, [x, seed], out_ty=out_ty))
                outs += [bb.emit(relax.TupleGetItem(sampled, i)) for i in range(3)]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    ex = tvm.compile(bb.finalize(), target=tvm.target.Target(GENERIC))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xv = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(np.array([4242], np.int64)))
    for stream in (0, 1):
        want_counts, want_scale, want_stats, _ = expected(xv, 2, 4242, stream)
        np.testing.assert_array_equal(got[3 * stream].numpy(), want_counts)
        np.testing.assert_array_equal(got[3 * stream + 1].numpy(), want_scale.astype(np.float32))
        np.testing.assert_array_equal(got[3 * stream + 2].numpy(), want_stats)
