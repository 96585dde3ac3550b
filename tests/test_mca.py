"""Monte Carlo Arithmetic: the inexact() kernel, the InsertMCANoise pass, and mcda()."""

import numpy as np
import onnx
import pytest
import scipy.stats
import tvm
from onnx import numpy_helper
from tvm import te

import mctvm
from mctvm.kernels.inexact import inexact_np, inexact_te
from mctvm.mcda import cross_entropy, mcda
from mctvm.models import synthetic


def _kernel(shape, stream, convention):
    x = te.placeholder(shape, "float32", name="x")
    seed = te.placeholder((1,), "int64", name="seed")
    t = te.placeholder((1,), "int32", name="t")
    func = te.create_prim_func([x, seed, t, inexact_te(x, seed, t, stream, convention)])
    ex = tvm.compile(func.with_attr("global_symbol", "main"), target=tvm.target.Target({"kind": "llvm"}))

    def run(values, s, tt):
        out = tvm.runtime.tensor(np.zeros(shape, np.float32))
        ex["main"](tvm.runtime.tensor(values), tvm.runtime.tensor(np.array([s], np.int64)),
                   tvm.runtime.tensor(np.array([tt], np.int32)), out)
        return out.numpy()
    return run


@pytest.mark.parametrize("convention", ["paper", "verificarlo", "mcalib"])
def test_kernel_is_bit_exact_with_numpy(convention):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 500)) * 10.0 ** rng.integers(-30, 30, (8, 500))).astype(np.float32)
    x[0, :5] = [0.0, np.inf, -np.inf, np.nan, 1e-42]
    run = _kernel(x.shape, 5, convention)
    for seed, t in [(1, 3), (2**40 + 5, 12), (9, 23)]:
        got = run(x, seed, t)
        np.testing.assert_array_equal(got.view(np.int32), inexact_np(x, seed, t, 5, convention).view(np.int32))
    assert got[0, 0] == 0.0 and np.isinf(got[0, 1]) and np.isnan(got[0, 3])


@pytest.mark.parametrize("convention,shift", [("paper", 0), ("verificarlo", 1), ("mcalib", 2)])
def test_delta_is_uniform_and_scaled_per_convention(convention, shift):
    """Recover delta = (inexact(x) - x) / 2^(E + shift - t): U(-1/2, 1/2), mean 0."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(1, 2, 200_000) * 2.0 ** rng.integers(-20, 20, 200_000)).astype(np.float32)
    t = 8
    exponent = np.floor(np.log2(np.abs(x.astype(np.float64))))
    delta = (inexact_np(x, 42, t, 0, convention).astype(np.float64) - x) / 2.0 ** (exponent + shift - t)
    assert np.abs(delta).max() <= 0.5 + 1e-3
    assert scipy.stats.kstest(delta, scipy.stats.uniform(loc=-0.5, scale=1).cdf).pvalue > 1e-3
    assert abs(delta.mean()) < 4 * np.sqrt(1 / 12 / delta.size)


def test_noise_is_independent_across_elements_and_trials():
    x = np.ones(100_000, np.float32)
    a = inexact_np(x, 1, 10, 0).astype(np.float64) - 1
    b = inexact_np(x, 2, 10, 0).astype(np.float64) - 1
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02


@pytest.fixture(scope="module")
def small():
    return synthetic.cnn(channels=(4, 8), image=(1, 8, 8), seed=2)


def test_pass_noise_scales_as_2_to_minus_t(small):
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    noisy = mctvm.compile(small, shapes={"input": x.shape}, mca=True)
    exact = mctvm.compile(small, shapes={"input": x.shape})(x)
    rsd = []
    for t in (6, 10, 14):
        outs = np.stack([noisy(x, seed=s, t=t) for s in range(24)])
        rsd.append(np.mean(outs.std(axis=0) / np.abs(exact)))
        assert np.abs(outs.mean(axis=0) - exact).max() < 8 * outs.std(axis=0).max() / np.sqrt(24) + 1e-6
    # each 4 more bits of virtual precision divides the spread by about 2^4
    assert 8 < rsd[0] / rsd[1] < 32 and 8 < rsd[1] / rsd[2] < 32
    np.testing.assert_array_equal(noisy(x, seed=5, t=8), noisy(x, seed=5, t=8))
    with pytest.raises(mctvm.InputError, match="pass the virtual precision"):
        noisy(x, seed=1)


@pytest.mark.parametrize("mode", ["pb", "rr"])
def test_modes_and_layer_selection(small, mode):
    x = np.random.default_rng(4).standard_normal((2, 1, 8, 8)).astype(np.float32)
    only_last = mctvm.compile(small, shapes={"input": x.shape},
                              mca={"mode": mode, "layers": [2], "convention": "mcalib"})
    sites = only_last.metadata["mca"]["sites"]
    assert [s["noisy"] for s in sites] == [False, False, True]
    assert only_last.metadata["mca"]["convention"] == "mcalib"
    assert not np.array_equal(only_last(x, seed=1, t=6), only_last(x, seed=2, t=6))


def test_bad_mca_options(small):
    with pytest.raises(mctvm.MctvmError, match="mca mode"):
        mctvm.compile(small, shapes={"input": (1, 1, 8, 8)}, mca={"mode": "full"})
    with pytest.raises(mctvm.MctvmError, match="unknown keys"):
        mctvm.compile(small, shapes={"input": (1, 1, 8, 8)}, mca={"precision": 3})


def _fragile(model, offset=1e4):
    """The same function with catastrophic cancellation built in: an Add of +offset before the
    dense layer, and -offset * sum(W) folded into its bias (the dense layer is linear)."""
    from onnx import helper

    fragile = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(fragile.graph.node)
    flatten = next(n for n in nodes if n.op_type == "Flatten")
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    inits = {t.name: t for t in fragile.graph.initializer}
    fragile.graph.initializer.append(numpy_helper.from_array(np.float32(offset), "offset"))
    shifted = helper.make_node("Add", [flatten.input[0], "offset"], ["shifted"], name="shift")
    flatten.input[0] = "shifted"
    w = numpy_helper.to_array(inits[gemm.input[1]])
    b = numpy_helper.to_array(inits[gemm.input[2]])
    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(
        (b - offset * w.sum(axis=1)).astype(np.float32), gemm.input[2]))
    del fragile.graph.node[:]
    fragile.graph.node.extend(nodes[:nodes.index(flatten)] + [shifted] + nodes[nodes.index(flatten):])
    onnx.checker.check_model(fragile)
    return fragile


def test_mcda_gives_finite_digits_and_fragile_model_loses_more(small):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    base = mcda(small, x, labels, t=range(4, 17, 2), trials=24, progress=False)
    assert np.isfinite(base.digits_lost) and base.t_min in base.fit.t
    same = mctvm.compile(_fragile(small), shapes={"input": x.shape})(x)
    np.testing.assert_allclose(same, mctvm.compile(small, shapes={"input": x.shape})(x),
                               atol=0.05)  # the float function is unchanged (up to rounding)
    fragile = mcda(_fragile(small), x, labels, t=range(4, 17, 2), trials=24, progress=False)
    assert fragile.digits_lost > base.digits_lost + 3
    assert "digits lost" in str(base) and base.convention.startswith("paper")


def test_cross_entropy_matches_the_definition():
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert cross_entropy(logits, np.array([0, 1])) == pytest.approx(-np.log(p[[0, 1], [0, 1]]).mean())


def test_layer_sensitivity_and_cli_ranking(small, tmp_path, capsys):
    from mctvm.cli import main
    from mctvm.mcda import layer_sensitivity, sensitivity_table

    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    results = layer_sensitivity(small, x, labels, t=range(6, 15, 2), trials=12, progress=False)
    assert [site["op"] for site, _ in results] == ["conv2d", "conv2d", "matmul"]
    assert all(np.isfinite(r.digits_lost) for _, r in results)
    assert "digits lost K" in sensitivity_table(results)

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(small, a)
    onnx.save(_fragile(small), b)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    assert main(["mcda", str(b), str(a), "--trials", "12", "--t", "6", "14", "--batch", "4",
                 "--data", str(tmp_path / "data.npz"), "--plot", str(tmp_path / "fig.png")]) == 0
    out = capsys.readouterr().out
    ranking = out[out.index("ranking"):].splitlines()
    assert ranking[1].endswith("a.onnx") and ranking[2].endswith("b.onnx")
    assert (tmp_path / "fig-a.png").is_file()


def test_qfp_accuracy_follows_the_ranking_mcda_predicts(small):
    """The model that loses more digits (built-in cancellation) also loses more accuracy in an
    8-bit float format, as the paper's model selection relies on."""
    from mctvm.sweep import float_format_sweep

    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    labels = mctvm.compile(small, shapes={"input": x.shape})(x).argmax(axis=1)  # float = 100%
    best = {}
    for name, model in (("original", small), ("fragile", _fragile(small))):
        rows = float_format_sweep(model, x, labels, bits=(8,), rounding="stochastic", batch=32,
                                  exponents=(3, 4))
        assert [(r["E"], r["M"]) for r in rows] == [(3, 4), (4, 3)]
        best[name] = max(r["accuracy"] for r in rows)
    assert best["original"] > best["fragile"]


def test_allocation_keeps_the_total_and_follows_sensitivity():
    from mctvm.allocate import allocate_K

    sizes = {"a": 100, "b": 300, "c": 600}
    ks = allocate_K(5.0, sizes, {"a": 1.0, "b": 3.0, "c": 1.0})
    assert sum(ks[n] * sizes[n] for n in sizes) == pytest.approx(5.0 * 1000)
    assert ks["b"] == pytest.approx(4 * ks["a"]) and ks["a"] == pytest.approx(ks["c"])
    even = allocate_K(2.0, sizes, {"a": 0.5, "b": 0.5, "c": 0.5})
    assert all(k == pytest.approx(2.0) for k in even.values())


def test_compile_with_sensitivity_allocation(small):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    compiled = mctvm.compile(small, K=2, shapes={"input": x.shape}, skip=(),
                             allocate="sensitivity", calibration=(x, labels))
    rows = compiled.report().rows
    total = sum(r["N_weights"] for r in rows)
    sizes = [int(np.prod(r["weight_shape"])) for r in rows]
    assert abs(total - 2 * sum(sizes)) <= len(rows)  # same samples as uniform K=2
    assert len({r["K_weights"] for r in rows}) > 1
    with pytest.raises(mctvm.MctvmError, match="calibration"):
        mctvm.compile(small, K=2, shapes={"input": x.shape}, allocate="sensitivity")


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rpc_servers():
    """Two TVM RPC servers on loopback, as `python -m tvm.exec.rpc_server` starts them."""
    import subprocess
    import sys
    import time

    from tvm import rpc

    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                               "--port", str(p), "--port-end", str(p + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its own group: its workers go with it
             for p in ports]
    try:
        for port in ports:  # wait (bounded) until each accepts a session
            for _ in range(100):
                try:
                    rpc.connect("127.0.0.1", port, session_timeout=5)
                    break
                except Exception:  # not listening yet
                    time.sleep(0.2)
        yield [f"127.0.0.1:{p}" for p in ports]
    finally:
        import os
        import signal

        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_mcda_over_two_rpc_servers_equals_a_local_run(small, rpc_servers):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    local = mcda(small, x, labels, t=range(4, 12, 2), trials=10, progress=False)
    remote = mcda(small, x, labels, t=range(4, 12, 2), trials=10, progress=False,
                  devices=rpc_servers)
    for t in local.samples:
        np.testing.assert_array_equal(remote.samples[t], local.samples[t])
    assert remote.digits_lost == local.digits_lost
