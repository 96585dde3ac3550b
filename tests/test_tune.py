"""mctvm.tune and compile(tuning=...): records written, applied, checked; CLI; RPC runner."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mctvm
from mctvm.cli import main
from mctvm.tune import MANIFEST, _record_wins

SHAPES = {"x": (4, 32)}


def gemm_model(seed=0):
    """y = x W^T + b: one fused kernel (matmul + add) to tune."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B")
    node = helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1, name="fc")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 32])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["batch", 16])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal(SHAPES["x"]).astype(np.float32)


@pytest.fixture(scope="module")
def mcq_records(tmp_path_factory):
    """An integer MCQ program (K=1, the Gemm quantized), tuned for a few trials."""
    work_dir = tmp_path_factory.mktemp("tuning") / "records"
    result = mctvm.tune(gemm_model(), K=1, shapes=SHAPES, skip=(), trials=3,
                        work_dir=work_dir, progress=False, seed=0)
    return work_dir, result


@pytest.fixture(scope="module")
def every_record(mcq_records, tmp_path_factory):
    """The same records, with the default schedules' times dropped: compile then applies
    every record, also those slower than the default schedule."""
    import shutil

    work_dir = tmp_path_factory.mktemp("tuning") / "every"
    shutil.copytree(mcq_records[0], work_dir)
    manifest = json.loads((work_dir / MANIFEST).read_text())
    for kernel in manifest["kernels"].values():
        kernel["default_ms"] = None
    (work_dir / MANIFEST).write_text(json.dumps(manifest))
    return work_dir, mcq_records[1]


def test_tuning_writes_records_and_a_manifest(mcq_records):
    work_dir, result = mcq_records
    for name in ("database_workload.json", "database_tuning_record.json", MANIFEST):
        assert (work_dir / name).is_file()
    manifest = json.loads((work_dir / MANIFEST).read_text())
    assert manifest["program"]["K"] == 1 and manifest["program"]["inputs"][0]["shape"] == [4, 32]
    assert result.trials == 3 and result.failed == 0
    [kernel] = [k for k in result.kernels if "matmul" in k["name"]]
    assert kernel["best_ms"] > 0 and kernel["default_ms"] > 0 and kernel["name"] in str(result)
    assert result.untunable and all(n.startswith("mcq_sample") for n in result.untunable)


def test_only_records_faster_than_the_default_schedules_are_used(mcq_records):
    work_dir, result = mcq_records
    tuned = mctvm.compile(gemm_model(), K=1, shapes=SHAPES, skip=(), tuning=work_dir)
    info = tuned.metadata["tuning"]
    assert info["tuned"] == sorted(k["name"] for k in result.kernels if _record_wins(k))
    assert info["records_slower"] == sorted(
        k["name"] for k in result.kernels if not _record_wins(k))


def test_tuned_integer_program_is_bit_exact(every_record):
    work_dir, result = every_record
    default = mctvm.compile(gemm_model(), K=1, shapes=SHAPES, skip=())
    tuned = mctvm.compile(gemm_model(), K=1, shapes=SHAPES, skip=(), tuning=work_dir)
    info = tuned.metadata["tuning"]
    assert info["tuned"] == sorted(k["name"] for k in result.kernels)
    assert info["default"] == result.untunable and info["work_dir"] == str(work_dir.resolve())
    x = _x()
    np.testing.assert_array_equal(tuned(x, seed=7), default(x, seed=7))
    tuned(x, seed=7)
    assert f"kernels: {len(result.kernels)} tuned" in str(tuned.report())


def test_tuned_kernel_replaces_the_default_schedule(every_record):
    import tvm_ffi

    from mctvm.compiler import import_program
    from mctvm.passes import pipeline
    from mctvm.tune import TUNED_ATTR, TuningRecords

    work_dir, result = every_record
    program = import_program(gemm_model(), 1, shapes=SHAPES, skip=())
    records = TuningRecords.open(work_dir, program.tuning_key())
    [name] = [k["name"] for k in result.kernels if "matmul" in k["name"]]
    kernels = {}
    for tuned in ((), records.passes()):
        mod = pipeline.run(program.mod, program.target, program.mcq, program.onnx_gemms,
                           tuned=tuned)
        [kernels[bool(tuned)]] = [f for gv, f in mod.functions_items() if name in gv.name_hint]
    assert kernels[True].attrs.get(TUNED_ATTR) and not kernels[False].attrs.get(TUNED_ATTR)
    assert not tvm_ffi.structural_equal(kernels[True].body, kernels[False].body)


def test_records_for_another_program_are_refused(mcq_records, tmp_path):
    work_dir, _ = mcq_records
    with pytest.raises(mctvm.MctvmError, match=r"another program: K \(1 there, 2 here\)"):
        mctvm.compile(gemm_model(), K=2, shapes=SHAPES, skip=(), tuning=work_dir)
    with pytest.raises(mctvm.MctvmError, match=r"another program: .*inputs"):
        mctvm.compile(gemm_model(), K=1, shapes={"x": (2, 32)}, skip=(), tuning=work_dir)
    with pytest.raises(mctvm.MctvmError, match=r"another program: model \(sha256"):
        mctvm.compile(gemm_model(seed=1), K=1, shapes=SHAPES, skip=(), tuning=work_dir)
    with pytest.raises(mctvm.MctvmError, match="another program"):  # tune refuses it too
        mctvm.tune(gemm_model(), K=None, shapes=SHAPES, trials=1, work_dir=work_dir)


def test_missing_or_corrupt_work_dir(mcq_records, tmp_path):
    import shutil

    def compile_with(work_dir):
        return mctvm.compile(gemm_model(), K=1, shapes=SHAPES, skip=(), tuning=work_dir)

    with pytest.raises(mctvm.MctvmError, match="does not exist; tune first"):
        compile_with(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(mctvm.MctvmError, match="not written by mctvm.tune"):
        compile_with(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(mcq_records[0], broken)
    (broken / "database_tuning_record.json").write_text("[1, {not json\n")
    with pytest.raises(mctvm.MctvmError, match="database in .* is corrupt"):
        compile_with(broken)
    (broken / "database_tuning_record.json").unlink()
    with pytest.raises(mctvm.MctvmError, match="has no database_tuning_record.json"):
        compile_with(broken)
    (broken / MANIFEST).write_text("{")
    with pytest.raises(mctvm.MctvmError, match="is corrupt"):
        compile_with(broken)
    with pytest.raises(mctvm.MctvmError, match="not empty and holds no"):
        mctvm.tune(gemm_model(), shapes=SHAPES, trials=1, work_dir=mcq_records[0] / "logs")


def test_bad_arguments(tmp_path):
    with pytest.raises(mctvm.MctvmError, match="at least one trial"):
        mctvm.tune(gemm_model(), shapes=SHAPES, trials=0, work_dir=tmp_path)
    with pytest.raises(mctvm.MctvmError, match="runner="):
        mctvm.tune(gemm_model(), shapes=SHAPES, trials=1, work_dir=tmp_path, runner="here")
    assert not any(tmp_path.iterdir())


def test_cli_tune_then_compile_float(tmp_path, capsys):
    model = tmp_path / "gemm.onnx"
    onnx.save(gemm_model(), model)
    work_dir = tmp_path / "records"
    assert main(["tune", str(model), "--shape", "x=4,32", "--trials", "2",
                 "--work-dir", str(work_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 trials (0 failed)" in out and f"--tuning {work_dir}" in out
    library = tmp_path / "gemm.so"
    assert main(["compile", str(model), "--shape", "x=4,32", "--tuning", str(work_dir),
                 "-o", str(library)]) == 0
    assert "  kernels: " in capsys.readouterr().out
    tuned = mctvm.load(library)
    default = mctvm.compile(gemm_model(), shapes=SHAPES)
    np.testing.assert_allclose(tuned(_x()), default(_x()), rtol=1e-5, atol=1e-5)
    assert main(["compile", str(model), "--shape", "x=4,32", "--K", "1", "--tuning",
                 str(work_dir), "-o", str(library)]) == 2
    assert "another program: K (null there, 1.0 here)" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker and one server registered with it under key 'loopback'."""
    pytest.importorskip("tornado", reason="the RPC tracker needs tornado")
    port, server_port = _free_port(), _free_port()
    tracker = f"127.0.0.1:{port}"
    commands = [
        ["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
         "--port-end", str(port + 1)],
        ["tvm.exec.rpc_server", "--tracker", tracker, "--key", "loopback", "--host",
         "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)],
    ]
    procs = []
    try:
        for command in commands:  # each in its own group: its workers go with it
            procs.append(subprocess.Popen([sys.executable, "-m", *command],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            time.sleep(0.5)
        from tvm.s_tir.meta_schedule.runner import RPCConfig

        config = RPCConfig("127.0.0.1", port, "loopback")
        for _ in range(100):  # wait (bounded) until the server has registered
            try:
                if config.count_num_servers() > 0:
                    break
            except Exception:  # pylint: disable=broad-except  # tracker not listening yet
                pass
            time.sleep(0.3)
        yield tracker
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_tuning_measures_through_an_rpc_tracker(rpc_tracker, tmp_path):
    work_dir = tmp_path / "records"
    result = mctvm.tune(gemm_model(), shapes=SHAPES, trials=2, work_dir=work_dir,
                        runner={"tracker": rpc_tracker, "key": "loopback"}, progress=False)
    assert result.trials == 2 and result.failed == 0 and result.kernels[0]["best_ms"] > 0
    assert result.kernels[0]["default_ms"] > 0
    tuned = mctvm.compile(gemm_model(), shapes=SHAPES, tuning=work_dir)
    info = tuned.metadata["tuning"]
    assert info["tuned"] + info["records_slower"] == [result.kernels[0]["name"]]


def test_unknown_rpc_key_or_absent_tracker_is_a_clear_error(rpc_tracker, tmp_path):
    with pytest.raises(mctvm.MctvmError, match="key 'nobody'"):
        mctvm.tune(gemm_model(), shapes=SHAPES, trials=1, work_dir=tmp_path,
                   runner={"tracker": rpc_tracker, "key": "nobody"})
    with pytest.raises(mctvm.MctvmError, match="cannot reach the RPC tracker"):
        mctvm.tune(gemm_model(), shapes=SHAPES, trials=1, work_dir=tmp_path,
                   runner={"tracker": f"127.0.0.1:{_free_port()}", "key": "loopback"})
