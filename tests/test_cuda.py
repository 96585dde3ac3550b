"""The CUDA path without a GPU: compile, inspect the generated source, export.

Where a GPU is present, the same program runs and must match the CPU.
"""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tvm

import mctvm
from mctvm.models import synthetic

HAVE_GPU = tvm.cuda(0).exist


@pytest.fixture(scope="module")
def cnn_cuda():
    return mctvm.compile(synthetic.cnn(), target="cuda", shapes={"input": (4, 1, 16, 16)})


def test_target_defaults(cnn_cuda):
    assert cnn_cuda.target.kind.name == "cuda"
    assert str(cnn_cuda.target.attrs["arch"]).startswith("sm_")
    assert cnn_cuda.target.host.kind.name == "llvm"


def test_generated_source_has_the_kernels(cnn_cuda):
    source = cnn_cuda.sources["cuda"]
    kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', source)
    assert len(kernels) >= 4, kernels
    assert any("conv2d" in k for k in kernels) and any("matmul" in k or "dense" in k for k in kernels)
    assert "blockIdx.x" in source and "threadIdx.x" in source


@pytest.mark.parametrize("arch", ["sm_70", "sm_75", "sm_80", "sm_90"])
def test_source_compiles_with_nvcc(tmp_path, arch):
    if not shutil.which("nvcc"):
        pytest.skip("nvcc is not installed")
    supported = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True).stdout
    if f"compute_{arch[3:]}" not in supported:
        pytest.skip(f"this nvcc does not support {arch} (CUDA 13 dropped Volta)")
    compiled = mctvm.compile(synthetic.transformer(seq=8, dim=32, heads=2, ffn=64),
                             target={"kind": "cuda", "arch": arch}, shapes={"input": (1, 8, 32)})
    source = tmp_path / "kernels.cu"
    source.write_text(compiled.sources["cuda"])
    ptx = tmp_path / "kernels.ptx"
    subprocess.run(["nvcc", f"-arch={arch}", "--ptx", str(source), "-o", str(ptx)], check=True,
                   capture_output=True)
    text = ptx.read_text()
    assert f".target {arch}" in text and ".entry" in text


def test_export_holds_the_device_program(cnn_cuda, tmp_path):
    library = cnn_cuda.export_library(tmp_path / "cnn_cuda.so")
    data = library.read_bytes()
    # Without a CUDA driver TVM keeps CUDA source in the library; with one, device code.
    assert b"__global__" in data or bytes.fromhex("50ed55ba") in data
    for name in re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(",
                           cnn_cuda.sources["cuda"]):
        assert name.encode() in data


@pytest.mark.skipif(HAVE_GPU, reason="a GPU is present")
def test_calling_without_a_gpu_is_a_clear_error(cnn_cuda):
    with pytest.raises(mctvm.ModelError, match="no cuda device is present"):
        cnn_cuda(np.zeros((4, 1, 16, 16), np.float32))


@pytest.mark.skipif(HAVE_GPU, reason="a GPU is present")
def test_exported_program_loads_in_a_fresh_process(cnn_cuda, tmp_path):
    # the library's device code needs TVM's CUDA runtime; mctvm.load provides it, reads the
    # metadata on the CPU, and a call names the missing device
    library = cnn_cuda.export_library(tmp_path / "cnn_cuda.so")
    script = (
        "import mctvm, numpy as np\n"
        f"m = mctvm.load({str(library)!r})\n"
        "print(m.target.kind.name, m.input_info[0].shape)\n"
        "try:\n"
        "    m(np.zeros((4, 1, 16, 16), np.float32))\n"
        "except mctvm.ModelError as err:\n"
        "    print('error:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert "cuda (4, 1, 16, 16)" in out and "no cuda device is present" in out


@pytest.mark.skipif(not HAVE_GPU, reason="needs a GPU")
def test_runs_on_the_gpu_like_the_cpu(cnn_cuda, rng):
    x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    cpu = mctvm.compile(synthetic.cnn(), shapes={"input": (4, 1, 16, 16)})
    np.testing.assert_allclose(cnn_cuda(x), cpu(x), rtol=1e-4, atol=1e-5)
