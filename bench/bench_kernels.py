"""Kernel and whole-model latency of the CPU default schedules (targets/cpu_schedules.py).

    python bench/bench_kernels.py [--repeat 10] [--quick]

'before' is the same build with MCTVM_CPU_SCHEDULES=0 (dlight's GEMV/Reduction rules only),
'after' the default build. Kernels: the built-in VGG-7's largest convs (3x3, pad 1, fused
bias + relu) in float32 and with int16 / int8 inputs accumulated in int32 and a float
epilogue (cast, scale, bias, relu) as the quantized programs run them, and a 256^3 matmul;
then the whole built-in model, float and quantized (K=5), at batch 1 and 64, and
onnxruntime on the float model. All use every core. Times are the best of the repeats
(each repeat the mean of enough calls to last 0.1 s): on a shared machine other processes
only ever add time. Writes bench/out/kernels.{txt,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np
import onnx

import mctvm
from mctvm.models import default_model
from mctvm.targets import cpu, cpu_schedules

from common import machine, ort_session, print_table, random_input, save, time_ms

# (label, batch, in_channels, out_channels, size, input dtype)
CONVS = [
    ("conv 32->32 28x28", 1, 32, 32, 28, "float32"),
    ("conv 64->64 14x14", 1, 64, 64, 14, "float32"),
    ("conv 128->128 7x7", 1, 128, 128, 7, "float32"),
    ("conv 32->32 28x28", 64, 32, 32, 28, "float32"),
    ("conv 64->64 14x14", 64, 64, 64, 14, "float32"),
    ("conv 128->128 7x7", 64, 128, 128, 7, "float32"),
    ("conv 32->32 28x28", 64, 32, 32, 28, "int16"),
    ("conv 128->128 7x7", 64, 128, 128, 7, "int16"),
    ("conv 32->32 28x28", 64, 32, 32, 28, "int8"),
    ("conv 128->128 7x7", 64, 128, 128, 7, "int8"),
]
MATMULS = [("matmul 256x256x256", 256, 256, 256, "float32"),
           ("matmul 256x256x256", 256, 256, 256, "int8")]


@contextlib.contextmanager
def schedules(on: bool):
    old = os.environ.get(cpu_schedules.ENV_SWITCH)
    os.environ[cpu_schedules.ENV_SWITCH] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[cpu_schedules.ENV_SWITCH]
        else:
            os.environ[cpu_schedules.ENV_SWITCH] = old


def _rng_tensor(rng, shape, dtype):
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(-100, 100, size=shape).astype(dtype)


def conv_module(batch, cin, cout, size, dtype, rng):
    """conv2d 3x3 pad 1 + epilogue as a Relax module; integer inputs accumulate in int32."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, cin, size, size), dtype))
    w = relax.const(_rng_tensor(rng, (cout, cin, 3, 3), dtype))
    bias = relax.const(rng.standard_normal((1, cout, 1, 1)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if dtype == "float32":
                y = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            else:
                y = bb.emit(relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32"))
                y = bb.emit(relax.op.astype(y, "float32"))
                y = bb.emit(relax.op.multiply(y, relax.const(np.float32(1e-3))))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, bias)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), [_rng_tensor(rng, (batch, cin, size, size), dtype)]


def matmul_module(m, k, n, dtype, rng):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), dtype))
    w = relax.const(_rng_tensor(rng, (k, n), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            if dtype == "float32":
                y = bb.emit(relax.op.matmul(x, w))
            else:
                y = bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), [_rng_tensor(rng, (m, k), dtype)]


def time_module(mod, inputs, repeat):
    """Lower with targets/cpu.py's passes, build, and time 'main' with TVM's time evaluator."""
    import tvm
    from tvm import relax

    target = cpu.default_target()
    with target:
        lowered = tvm.transform.Sequential(cpu.lowering_passes(target))(mod)
        executable, _ = cpu.build(lowered, target)
    device = tvm.cpu(0)
    vm = relax.VirtualMachine(executable, device)
    tensors = [tvm.runtime.tensor(x, device) for x in inputs]
    vm.set_input("main", *tensors)
    probe = vm.time_evaluator("invoke_stateful", device, number=1, repeat=1)
    seconds = max(probe("main").mean, 1e-6)
    number = max(1, int(0.1 / seconds))
    timer = vm.time_evaluator("invoke_stateful", device, number=number,
                              repeat=repeat if seconds < 0.2 else min(repeat, 3))
    return min(timer("main").results) * 1e3


def kernel_rows(repeat, quick):
    rows = []
    rng = np.random.default_rng(0)
    convs = [c for c in CONVS if not quick or c[1] == 1 or c[5] != "float32"]
    for label, batch, cin, cout, size, dtype in convs:
        mod, inputs = conv_module(batch, cin, cout, size, dtype, rng)
        ops = 2.0 * batch * cout * size * size * cin * 9
        rows.append(_row(label, f"{batch}x{cin}x{size}x{size}", dtype, mod, inputs, ops, repeat))
    for label, m, k, n, dtype in MATMULS:
        mod, inputs = matmul_module(m, k, n, dtype, rng)
        rows.append(_row(label, f"{m}x{k} @ {k}x{n}", dtype, mod, inputs, 2.0 * m * k * n,
                         repeat))
    return rows


def _row(op, shape, dtype, mod, inputs, ops, repeat):
    with schedules(False):
        before = time_module(mod, inputs, repeat)
    with schedules(True):
        after = time_module(mod, inputs, repeat)
    unit = "GFLOP/s" if dtype.startswith("float") else "GOP/s"
    row = {"op": op, "shape": shape, "dtype": dtype, "ms_before": before, "ms_after": after,
           "speedup": before / after, "rate_after": f"{ops / after / 1e6:.1f} {unit}"}
    print(row, flush=True)
    return row


def best_ms(fn, repeat) -> float:
    """Best of `repeat` samples (common.time_ms with min)."""
    return time_ms(fn, repeat, statistic=min)


def model_rows(repeat):
    proto = onnx.load(default_model())
    name = proto.graph.input[0].name
    rows = []
    for K in (None, 5):
        for batch in (1, 64):
            shape = (batch, 1, 28, 28)
            x = random_input(shape)
            times, medians = {}, {}
            for on in (False, True):
                with schedules(on):
                    compiled = mctvm.compile(proto, K=K, shapes={name: shape})
                stats = compiled.benchmark(x, repeat=repeat if on else 3)
                times[on], medians[on] = stats.min_ms, stats.median_ms
            ort = "-"
            if K is None:
                session = ort_session(proto)
                ort = best_ms(lambda: session.run(None, {name: x}), repeat)
            row = {"model": "fmnist-vgg7" + ("" if K is None else f" K={K}"), "batch": batch,
                   "ms_before": times[False], "ms_after": times[True],
                   "median_after": medians[True], "speedup": times[False] / times[True],
                   "onnxruntime_ms": ort, "after/ort": times[True] / ort if K is None else "-"}
            print(row, flush=True)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="skip the slow batch-64 float kernels (minutes 'before')")
    args = parser.parse_args()
    cpu.configure_threads()
    kernels = kernel_rows(args.repeat, args.quick)
    models = model_rows(args.repeat)
    header = (f"{machine()}, TVM threads {cpu.thread_count()}, load average "
              f"{os.getloadavg()[0]:.2f}; best of {args.repeat}")
    text = print_table(kernels, f"kernels: before/after the CPU default schedules; {header}")
    text += "\n\n" + print_table(
        models, "whole built-in model, ms per batch (best of repeats; median_after: median)")
    save("kernels", kernels + models, text)


if __name__ == "__main__":
    main()
