"""CUDA integer GEMM schedules (targets/cuda_schedules.py) and device code in exports, without
a GPU: the schedule's semantics are checked on the CPU by replaying it without its thread
bindings (serial loops, each 'thread' then fetches the whole shared tile itself) and with the
dp4a intrinsic's description computed by scalar code; nvcc checks the generated source."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, te

import mctvm
from mctvm.targets import cuda
from mctvm.targets.cuda_schedules import DP4A_INTRIN, IntegerGemm

FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian
ARCHS = ["sm_70", "sm_75", "sm_80", "sm_90"]


def nvcc_for(arch):
    """The nvcc on PATH if it supports `arch` (CUDA 13's dropped sm_70), else None."""
    nvcc = shutil.which("nvcc")
    if nvcc and f"compute_{arch[3:]}" in subprocess.run(
            [nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout:
        return nvcc
    return None


def nvrtc12():
    """CUDA 12's NVRTC and the headers it needs, where installed (test-only, ~100 MB: pip
    install nvidia-cuda-nvrtc-cu12 nvidia-cuda-cccl-cu12 nvidia-cuda-runtime-cu12); it
    compiles for compute_70, which no nvcc on PyPI does (nvidia-cuda-nvcc-cu12 ships ptxas
    and libnvvm, not nvcc). Returns (library, include dirs) or None."""
    import importlib.util

    dirs = []
    for name in ("cuda_nvrtc", "cuda_cccl", "cuda_runtime"):
        try:
            spec = importlib.util.find_spec(f"nvidia.{name}")
        except ModuleNotFoundError:
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        dirs.append(Path(list(spec.submodule_search_locations)[0]))
    library = dirs[0] / "lib" / "libnvrtc.so.12"
    return (library, [d / "include" for d in dirs[1:]]) if library.exists() else None


def ptx_with_nvrtc(source: str, arch: str) -> str:
    import ctypes

    library, includes = nvrtc12()
    nvrtc = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"kernels.cu", 0,
                                    None, None) == 0
    options = [f"--gpu-architecture=compute_{arch[3:]}".encode()] + [
        f"-I{d}".encode() for d in includes]
    status = nvrtc.nvrtcCompileProgram(program, len(options),
                                       (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    if status != 0:
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        pytest.fail(log.value.decode(errors="replace")[-3000:])
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return ptx.value.decode()


def gemm_te(kind, shape_a, shape_b, dtype="int8", **conv):
    """int GEMM -> int32, then a float epilogue (cast, per-row rescale), as a PrimFunc."""
    a = te.placeholder(shape_a, dtype, name="A")
    b = te.placeholder(shape_b, dtype, name="B")
    if kind == "matmul":
        r = te.reduce_axis((0, shape_a[-1]), "r")
        acc = te.compute((shape_a[0], shape_b[1]), lambda i, j: te.sum(
            a[i, r].astype("int32") * b[r, j].astype("int32"), axis=r), name="acc")
    else:
        from tvm import topi

        acc = topi.nn.conv2d_nchw(a, b, dilation=1, out_dtype="int32", **conv)
    scale = te.placeholder((shape_a[0],), "float32", name="scale")
    out = te.compute(acc.shape, lambda n, *rest: acc[(n, *rest)].astype("float32") * scale[n],
                     name="out")
    return te.create_prim_func([a, b, scale, out])


def reference(kind, a, b, scale, **conv):
    a, b = a.astype(np.int64), b.astype(np.int64)
    if kind == "matmul":
        acc = a @ b
    else:
        stride, pad = conv.get("stride", 1), conv.get("padding", 0)
        n, c, h, w = a.shape
        f, _, kh, kw = b.shape
        x = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
        acc = np.zeros((n, f, oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                acc += np.einsum("nchw,fc->nfhw", patch, b[:, :, i, j])
    return acc.astype(np.float32) * scale.reshape((-1,) + (1,) * (acc.ndim - 1))


CPU_DP4A = "mctvm_test_dp4a_scalar"


def register_cpu_dp4a():
    """The dp4a intrinsic's description with a scalar implementation the CPU can run."""
    from tvm.script import tirx as T

    desc = s_tir.TensorIntrin.get(DP4A_INTRIN).desc

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] = C[0] + T.Cast("int32", A[0]) * T.Cast("int32", B[0]) \
                + T.Cast("int32", A[1]) * T.Cast("int32", B[1]) \
                + T.Cast("int32", A[2]) * T.Cast("int32", B[2]) \
                + T.Cast("int32", A[3]) * T.Cast("int32", B[3])

    s_tir.TensorIntrin.register(CPU_DP4A, desc, impl, override=True)


def on_cpu(func, scheduled):
    """Replay `scheduled`'s trace on `func` without thread bindings; the dp4a tensorize is
    replayed with the scalar implementation."""
    insts = scheduled.trace.insts
    tensorized = insts[-1].kind.name == "Tensorize"
    keep = [i for i in insts if i.kind.name not in ("Bind", "Tensorize")]
    sch = s_tir.Schedule(func)
    s_tir.schedule.Trace(keep, {}).apply_to_schedule(sch, remove_postproc=False)
    if tensorized:
        register_cpu_dp4a()
        update = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if sch.get(b).name_hint.endswith("_update")]
        sch.tensorize(sch.get_loops(update[0])[-1], CPU_DP4A)
    return sch.mod


CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host="llvm")

# M, N, K not multiples of the tiles (32 x 64 x 16), batch 1 and 64
CASES = [
    ("matmul", (1, 100), (100, 10), {}),
    ("matmul", (64, 784), (784, 128), {}),
    ("matmul", (33, 70), (70, 45), {}),
    ("matmul", (7, 3), (3, 5), {}),
    ("conv", (1, 1, 28, 28), (16, 1, 3, 3), {"stride": 1, "padding": 1}),
    ("conv", (64, 3, 9, 9), (10, 3, 3, 3), {"stride": 2, "padding": 1}),
    ("conv", (2, 13, 7, 7), (17, 13, 1, 1), {"stride": 1, "padding": 0}),
]


def case_id(case):
    kind, a, b, conv = case
    return f"{kind}-{'x'.join(map(str, a))}-{'x'.join(map(str, b))}"


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_schedule_keeps_the_computation(case, dtype, rng):
    kind, shape_a, shape_b, conv = case
    func = gemm_te(kind, shape_a, shape_b, dtype, **conv)
    scheduled = IntegerGemm().apply(func, CUDA, False)
    assert scheduled is not None
    names = [i.kind.name for i in scheduled.trace.insts]
    assert ("Tensorize" in names) == (dtype == "int8")  # dp4a only for int8 x int8
    text = scheduled.mod["main"].script()
    assert "blockIdx.x" in text and "threadIdx.x" in text and 'scope="shared"' in text
    if dtype == "int8":
        assert "__dp4a" in text

    limit = 128 if dtype == "int8" else 1 << 12
    a = rng.integers(-limit, limit, shape_a).astype(dtype)
    b = rng.integers(-limit, limit, shape_b).astype(dtype)
    scale = rng.random(shape_a[0]).astype(np.float32)
    expected = reference(kind, a, b, scale, **conv)
    for mod in (tvm.IRModule({"main": func}), on_cpu(func, scheduled)):
        lib = tvm.compile(mod, target="llvm")
        out = tvm.runtime.tensor(np.zeros(expected.shape, np.float32))
        lib(*(tvm.runtime.tensor(x) for x in (a, b, scale)), out)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_other_kernels_are_left_to_dlight():
    assert IntegerGemm().apply(gemm_te("matmul", (8, 16), (16, 8), "float32"), CUDA, False) is None
    llvm = tvm.target.Target("llvm")
    assert IntegerGemm().apply(gemm_te("matmul", (8, 16), (16, 8)), llvm, False) is None


def relax_gemms():
    """A Relax program with every CASES GEMM in int8 (weights constant), rescaled to float."""
    bb = relax.BlockBuilder()
    params, outputs = [], []
    with bb.function("main"):
        with bb.dataflow():
            for index, (kind, shape_a, shape_b, conv) in enumerate(CASES):
                x = relax.Var(f"x{index}", relax.TensorType(shape_a, "int8"))
                scale = relax.Var(f"s{index}", relax.TensorType(
                    [shape_a[0]] + [1] * (len(shape_a) - 1), "float32"))
                params += [x, scale]
                w = relax.const(np.ones(shape_b, np.int8))
                if kind == "matmul":
                    acc = bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
                else:
                    acc = bb.emit(relax.op.nn.conv2d(x, w, strides=conv["stride"],
                                                     padding=conv["padding"], out_dtype="int32"))
                acc = bb.emit(relax.op.astype(acc, "float32"))
                outputs.append(bb.emit(relax.op.multiply(acc, scale)))
            out = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(out, params)
    return bb.get()


def build_gemms(arch):
    target = cuda.complete_target({"kind": "cuda", "arch": arch})
    with target:
        mod = tvm.ir.transform.Sequential(cuda.lowering_passes(target))(relax_gemms())
        return cuda.build(mod, target)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_gemms_compile_to_dp4a(arch, tmp_path):
    nvcc = nvcc_for(arch)
    if nvcc is None and (arch != "sm_70" or nvrtc12() is None):
        pytest.skip(f"no compiler for {arch}: CUDA 13 dropped sm_70; CUDA 12's NVRTC compiles "
                    "it (pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-cccl-cu12 "
                    "nvidia-cuda-runtime-cu12)")
    source = build_gemms(arch)[1]["cuda"]
    gemm_kernels = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?"
                              r"(fused_(?:matmul|conv2d)\w*)\(", source)
    assert len(set(gemm_kernels)) == len(CASES)
    assert source.count("__dp4a(") >= len(CASES)
    if nvcc is None:
        ptx = ptx_with_nvrtc(source, arch)
    else:
        (tmp_path / "k.cu").write_text(source)
        subprocess.run([nvcc, f"-arch={arch}", "--ptx", str(tmp_path / "k.cu"), "-o",
                        str(tmp_path / "k.ptx")], check=True, capture_output=True)
        ptx = (tmp_path / "k.ptx").read_text()
    assert f".target {arch}" in ptx and "dp4a.s32.s32" in ptx


@pytest.fixture(scope="module")
def vgg_int8():
    return mctvm.compile(Path(mctvm.__file__).parent / "models" / "fmnist_vgg7.onnx", K=1,
                         target={"kind": "cuda", "arch": "sm_80"}, activation_dtype="int8",
                         shapes={"input": (2, 1, 28, 28)})


def test_mcq_int8_program_uses_dp4a(vgg_int8):
    source = vgg_int8.sources["cuda"]
    for match in re.finditer(r"__global__ void (?:__launch_bounds__\(\d+\) )?"
                             r"(fused_(?:matmul|conv2d)\w*)\([^)]*\) \{", source):
        body = source[match.end():source.find('extern "C"', match.end())]
        # the first conv's input is the float image: a float GEMM, dlight's
        assert ("__dp4a(" in body) != ("float* __restrict__ input" in match.group(0)), match[1]


@pytest.mark.skipif(not shutil.which("nvcc"), reason="nvcc is not installed")
def test_export_holds_compiled_device_code(vgg_int8, tmp_path):
    data = vgg_int8.export_library(tmp_path / "vgg.so").read_bytes()
    assert FATBIN_MAGIC in data
    assert b"__global__" not in data and b"__dp4a" not in data  # no CUDA source
    loaded = cuda.device_modules(tvm.runtime.load_module(str(tmp_path / "vgg.so")))
    assert len(loaded) == 1 and "__global__" not in loaded[0].inspect_source()


@pytest.mark.skipif(not shutil.which("nvcc") or cuda.nvcc_supports("sm_70"),
                    reason="needs an nvcc that does not support sm_70 (CUDA 13)")
def test_arch_nvcc_dropped_keeps_the_source(tmp_path):
    cuda.load_cuda_runtime()  # as after an earlier build: TVM would compile at build time
    executable, sources = build_gemms("sm_70")
    assert "__dp4a(" in sources["cuda"]
    executable.export_library(str(tmp_path / "sm70.so"))
    data = (tmp_path / "sm70.so").read_bytes()
    assert b"__global__" in data and FATBIN_MAGIC not in data
    assert "TVM_COMPILE_FORCE_FALLBACK" not in os.environ
