"""The mctvm command line: compile, run, info (demo is exercised in test_builtin_model.py)."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest

from mctvm.cli import main
from mctvm.models import synthetic

from conftest import ort_run


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(synthetic.cnn(seed=2), path)
    return path


def test_compile_then_run(model_file, tmp_path, capsys, rng):
    library = tmp_path / "cnn.so"
    assert main(["compile", str(model_file), "--target", "llvm", "--shape", "input=3,1,16,16",
                 "-o", str(library)]) == 0
    assert library.is_file()
    assert "input  input: [3, 1, 16, 16] float32" in capsys.readouterr().out
    x = rng.standard_normal((3, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", str(library), "--input", str(tmp_path / "x.npy"), "-o", str(out),
                 "--benchmark", "2"]) == 0
    text = capsys.readouterr().out
    assert "latency:" in text and "shape [3, 10]" in text
    want = ort_run(onnx.load(model_file), {"input": x})[0]
    np.testing.assert_allclose(np.load(out), want, rtol=1e-4, atol=1e-5)


def test_info_on_model_and_library(model_file, tmp_path, capsys):
    assert main(["info", str(model_file)]) == 0
    text = capsys.readouterr().out
    assert "opset: 17" in text and "Conv x2" in text and "all ops are supported" in text
    assert "input  input: ['batch', 1, 16, 16]" in text
    library = tmp_path / "m.so"
    main(["compile", str(model_file), "--shape", "input=1,1,16,16", "-o", str(library)])
    capsys.readouterr()
    assert main(["info", str(library)]) == 0
    assert '"shape": [\n        1,' in capsys.readouterr().out


def test_errors_are_one_line_not_tracebacks(model_file, tmp_path, capsys):
    assert main(["compile", str(model_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mctvm: error: input 'input' has dynamic dimension") and "Traceback" not in err
    assert main(["compile", str(model_file), "--target", "tpu", "--shape", "input=1,1,16,16"]) == 2
    assert "unknown target 'tpu'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.so")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compile", str(model_file), "--shape", "input:1,1"])


def test_console_script_is_installed(model_file):
    exe = shutil.which("mctvm")
    if exe is None:
        pytest.skip("package not installed (pip install -e .)")
    done = subprocess.run([exe, "info", str(model_file)], capture_output=True, text=True)
    assert done.returncode == 0 and "all ops are supported" in done.stdout


def test_compile_quantized_with_options(model_file, tmp_path, capsys):
    library = tmp_path / "q.so"
    assert main(["compile", str(model_file), "--K", "5", "--skip", "--activation-dtype", "int8",
                 "--sparse", "csr", "--order", "natural", "--shape", "input=2,1,16,16", "-o", str(library)]) == 0
    capsys.readouterr()
    assert main(["info", str(library)]) == 0
    info = capsys.readouterr().out
    assert '"K": 5.0' in info and '"activation_dtype": "int8"' in info and '"skip": []' in info
    assert '"sparse": "csr"' in info and '"order": "natural"' in info
    assert main(["run", str(library)]) == 0
    assert "shape [2, 10]" in capsys.readouterr().out
