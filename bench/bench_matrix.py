"""The issue-4 benchmark matrix: onnxruntime against mctvm, side by side, on this CPU.

    python bench/bench_matrix.py [--models fmnist-vgg7,resnet18,minilm-2l] [--batches 1,64]
                                 [--K 1 2 5] [--activation-dtype int16 uint8] [--trials 32]
                                 [--repeat 10] [--quick]

Models: the built-in Fashion-MNIST VGG-7; a ResNet-18-shaped network (synthetic.resnet18,
random weights, BatchNorm in the graph) on 224x224 images at batch 1 and 112x112 at larger
batches (224x224 x 64 takes seconds per call on 2 cores); a MiniLM-shaped encoder (hidden 384,
12 heads, FFN 1536, 32 tokens, 2 of MiniLM's 6 layers, random weights).
Programs: onnxruntime float; onnxruntime int8 (quantize_static, QDQ, u8 activations and s8
weights calibrated on 4 random batches, for the CNNs; quantize_dynamic for the transformer; the
other one when the preferred one fails); mctvm float untuned (default schedules) and tuned;
mctvm MCQ at each K (and each --activation-dtype; mctvm's default, auto) as dense integer GEMMs
(sparse="dense") and sparse ones (sparse="auto"), tuned. Tuning is `mctvm.tune` with
--trials trials per program; while mctvm has no `tune` the tuned float column is n/a and MCQ
programs run untuned (trials 0), and while MCQ has no `sparse=` option the sparse rows are
n/a. All programs use every core; times are medians.
The `target` column checks the issue's goals: mctvm's untuned float path within 1.5x of
onnxruntime float, MCQ faster than onnxruntime float and not slower than onnxruntime int8.

Then each model's biggest GEMM/conv alone (at the largest batch), after a Relu: its
kernel's time from CompiledModel.profile() and its GFLOP/s (float) or GOP/s (integer) against
this CPU's peak. --quick: batches 1 and 8, 64x64 ResNet images, 3 repeats, 4 trials.
Writes bench/out/matrix.{txt,json,csv,png}; tuning logs go to bench/out/tuning/.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import mctvm
from mctvm.mcq_options import ACTIVATION_DTYPES, MCQOptions
from mctvm.models import default_model, synthetic

from common import OUT, machine, ort_session, print_table, random_input, save, save_csv, time_ms

NA_TUNING = "n/a (not tuned: no mctvm.tune, or --trials 0)"
NA_SPARSE = "n/a (sparse not available)"


def make_model(name, batch, quick):
    """(label, ONNX model, input shape) of a benchmark model at `batch`."""
    if name == "fmnist-vgg7":
        return name, onnx.load(default_model()), (batch, 1, 28, 28)
    if name == "resnet18":
        image = 64 if quick else 224 if batch == 1 else 112
        return f"resnet18@{image}", synthetic.resnet18(image=image), (batch, 3, image, image)
    if name == "minilm-2l":
        return name, synthetic.transformer(seq=32, dim=384, heads=12, ffn=1536, layers=2), \
            (batch, 32, 384)
    raise SystemExit(f"unknown model {name!r}; choose from fmnist-vgg7, resnet18, minilm-2l")


def has_sparse() -> bool:
    try:
        MCQOptions.from_args(1, sparse="dense")
    except TypeError:
        return False
    return True


class Calibration:
    """onnxruntime's CalibrationDataReader protocol: 4 random batches of 8."""

    def __init__(self, name, shape):
        self.batches = iter([{name: random_input((8, *shape[1:]), seed)} for seed in range(4)])

    def get_next(self):
        return next(self.batches, None)


def ort_int8(proto, shape, prefer_static):
    """(method, session) of onnxruntime's own int8 quantization of `proto`."""
    from onnxruntime import quantization as q

    name = proto.graph.input[0].name
    methods = {
        "static QDQ": lambda src, dst: q.quantize_static(
            src, dst, Calibration(name, shape), quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8),
        "dynamic": lambda src, dst: q.quantize_dynamic(src, dst, weight_type=q.QuantType.QInt8),
    }
    order = ["static QDQ", "dynamic"] if prefer_static else ["dynamic", "static QDQ"]
    with tempfile.TemporaryDirectory() as folder:
        src, pre, dst = (os.path.join(folder, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, src)
        q.quant_pre_process(src, pre)
        for method in order:
            try:
                methods[method](pre, dst)
                return method, ort_session(onnx.load(dst))
            except Exception as err:  # noqa: BLE001  onnxruntime raises many kinds
                print(f"onnxruntime int8 {method} failed ({err}); trying the other", flush=True)
    raise RuntimeError("onnxruntime could not quantize the model either way")


def build(proto, shape, K, options, tune_dir, trials):
    """mctvm.compile, after mctvm.tune into `tune_dir` when that is given."""
    shapes = {proto.graph.input[0].name: shape}
    if tune_dir is None:
        return mctvm.compile(proto, K=K, shapes=shapes, **options)
    shutil.rmtree(tune_dir, ignore_errors=True)
    mctvm.tune(proto, K=K, target="llvm", trials=trials, work_dir=str(tune_dir), shapes=shapes,
               **options)
    return mctvm.compile(proto, K=K, shapes=shapes, tuning=str(tune_dir), **options)


def programs(K_values, tuning, sparse, dtypes=("auto",)):
    """(program, K, MCQ options, tuned, why not available) for each mctvm column; MCQ
    programs with activation counts other than the default ("auto") name their type."""
    yield "mctvm float untuned", None, {}, False, None
    yield "mctvm float tuned", None, {}, True, None if tuning else NA_TUNING
    for K in K_values:
        for dtype in dtypes:
            name = f"K={K:g}" if dtype == "auto" else f"K={K:g} {dtype}"
            typed = {} if dtype == "auto" else {"activation_dtype": dtype}
            yield (f"mctvm MCQ {name} dense", K, {"sparse": "dense", **typed} if sparse else typed,
                   tuning, None)
            yield (f"mctvm MCQ {name} sparse", K, {"sparse": "auto", **typed}, tuning,
                   None if sparse else NA_SPARSE)


def target(program, vs_float, vs_int8):
    """Whether a program meets the issue's goal for it ('-' where there is none)."""
    if program == "mctvm float untuned":
        return "ok" if vs_float <= 1.5 else "MISSED"
    if "MCQ" in program:
        return "ok" if vs_float < 1 and vs_int8 <= 1 else "MISSED"
    return "-"


def matrix(models, batches, K_values, trials, repeat, quick, dtypes=("auto",)):
    tuning, sparse = hasattr(mctvm, "tune") and trials > 0, has_sparse()
    rows = []
    for name in models:
        for batch in batches:
            label, proto, shape = make_model(name, batch, quick)
            x = random_input(shape)
            feed = {proto.graph.input[0].name: x}
            session = ort_session(proto)
            ort_float = time_ms(lambda: session.run(None, feed), repeat=repeat)
            method, int8 = ort_int8(proto, shape, prefer_static=name != "minilm-2l")
            ort_int8_ms = time_ms(lambda: int8.run(None, feed), repeat=repeat)
            results = [("onnxruntime float", 0, ort_float),
                       (f"onnxruntime int8 {method}", 0, ort_int8_ms)]
            for program, K, options, tuned, missing in programs(K_values, tuning, sparse,
                                                                dtypes):
                if missing:
                    results.append((program, 0, missing))
                    continue
                tune_dir = OUT / "tuning" / f"{label}-b{batch}-{program.replace(' ', '_')}"
                compiled = build(proto, shape, K, options, tune_dir if tuned else None, trials)
                ms = compiled.benchmark(x, repeat=repeat).median_ms
                results.append((program, trials if tuned else 0, ms))
                print(f"{label} batch {batch} {program}: {ms:.3f} ms", flush=True)
            for program, used_trials, ms in results:
                timed = isinstance(ms, float)
                vs_float = ms / ort_float if timed else "-"
                vs_int8 = ms / ort_int8_ms if timed else "-"
                rows.append({"model": label, "batch": batch, "program": program,
                             "trials": used_trials, "ms": ms, "x ort float": vs_float,
                             "x ort int8": vs_int8,
                             "target": target(program, vs_float, vs_int8) if timed else "-"})
    return rows


_CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {  /* 4e9 dependent adds of 1 cycle each, timed: the clock while running */
    struct timespec a, b;
    long n = 1000000000L, x = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", 4.0 * n / ((b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec)) / 1e9);
    return x == 0;
}
"""


def measured_clock_ghz() -> float | None:
    """The clock a busy core runs at (boost included), from a chain of dependent integer
    adds (one cycle each on x86); None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "clock.c"), Path(tmp, "clock")
        src.write_text(_CLOCK_PROBE)
        subprocess.run([cc, "-O1", str(src), "-o", str(exe)], check=True)
        return max(float(subprocess.run([str(exe)], capture_output=True, text=True).stdout)
                   for _ in range(3))


def cpu_peak():
    """(peak GFLOP/s in fp32, the assumptions in words)."""
    info = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
    ghz, source = measured_clock_ghz(), "measured: dependent adds"
    if ghz is None:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        max_mhz = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
        ghz = float(max_mhz.group(1) if max_mhz else
                    re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M).group(1)) / 1e3
        source = "lscpu max MHz" if max_mhz else "/proc/cpuinfo cpu MHz"
    lanes, simd = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2 FMA")
    cores = os.cpu_count()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    words = (f"peak = {cores} cores x {ghz:.2f} GHz ({source}) "
             f"x 2 FMA units x {lanes} fp32 lanes ({simd}) x 2 flops; integer peak assumes "
             f"VNNI dot products, 32/b multiply-adds per 32-bit lane for b-bit operands"
             f"{'' if vnni else ' (this CPU has no VNNI: an upper bound)'}")
    return 2 * 2 * lanes * cores * ghz, words


def biggest_gemm(proto, shape):
    """The Conv/Gemm/MatMul with a constant weight and the most multiply-adds at input `shape`,
    as a model of that node after a Relu (its input is non-negative, as in these networks, so
    activation_dtype="uint8" gives it uint8 counts): (description, model, its input shape,
    operations = 2 x MACs)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.dim_value = size
    graph = onnx.shape_inference.infer_shapes(fixed).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]}
    weights = {init.name: init for init in graph.initializer}

    def macs(node):
        out, weight = dims[node.output[0]], weights[node.input[1]].dims
        features = out[1] if node.op_type == "Conv" else out[-1]
        return int(np.prod(out)) * int(np.prod(weight)) // features

    node = max((n for n in graph.node
                if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in weights), key=macs)
    io = [helper.make_tensor_value_info(t, TensorProto.FLOAT, dims[t])
          for t in (node.input[0], node.output[0])]
    relu = helper.make_node("Relu", [node.input[0]], ["relu_out"], name="relu")
    gemm = onnx.NodeProto()
    gemm.CopyFrom(node)
    gemm.input[0] = "relu_out"
    model = helper.make_model(
        helper.make_graph([relu, gemm], "kernel", io[:1], io[1:],
                          [weights[t] for t in node.input[1:]]),
        opset_imports=proto.opset_import)
    text = f"{node.op_type} {dims[node.input[0]]} x {list(weights[node.input[1]].dims)}"
    return text, model, tuple(dims[node.input[0]]), 2.0 * macs(node)


def kernel_rows(models, batch, K, trials, repeat, quick, peak, dtypes=("auto",)):
    """The biggest GEMM/conv of each model, alone: float untuned, float tuned, MCQ K dense."""
    tuning, sparse = hasattr(mctvm, "tune") and trials > 0, has_sparse()
    rows = []
    for name in models:
        label, proto, shape = make_model(name, batch, quick)
        text, kernel, kernel_shape, ops = biggest_gemm(proto, shape)
        for program, k, options, tuned, missing in programs([K], tuning, sparse, dtypes):
            if missing or "sparse" in program:
                continue
            options = {**options, "skip": ()} if k is not None else options
            tune_dir = OUT / "tuning" / f"{label}-b{batch}-kernel-{program.replace(' ', '_')}"
            compiled = build(kernel, kernel_shape, k, options, tune_dir if tuned else None, trials)
            times = compiled.profile(random_input(kernel_shape), repeat=repeat)
            symbol, ms = next((s, t) for s, t in times.items()
                              if "sample" not in s and not s.startswith("vm."))
            if k is None:
                unit, bits, rate_peak = "GFLOP/s", 32, peak
            else:
                layer = compiled.metadata["mcq"]["layers"][0]
                bits = max(np.dtype(layer["weight_dtype"]).itemsize,
                           np.dtype(layer["activation_dtype"]).itemsize) * 8
                unit, rate_peak = "GOP/s", peak * 32 / bits
            rate = ops / ms / 1e6
            rows.append({"model": label, "batch": batch, "kernel": text, "program": program,
                         "trials": trials if tuned else 0, "kernel symbol": symbol, "ms": ms,
                         "rate": f"{rate:.1f} {unit}", "peak": f"{rate_peak:.0f} {unit}",
                         "of peak": f"{rate / rate_peak:.1%}"})
            print(rows[-1], flush=True)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.6 * len(groups)), squeeze=False)
    for ax, (model, batch) in zip(axes[:, 0], groups):
        timed = [r for r in rows if (r["model"], r["batch"]) == (model, batch)
                 and isinstance(r["ms"], float)]
        colors = ["tab:gray" if r["program"].startswith("onnxruntime") else
                  "tab:orange" if "float" in r["program"] else "tab:blue" for r in timed]
        ax.barh([r["program"] for r in timed], [r["x ort float"] for r in timed], color=colors)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        ax.invert_yaxis()
        ax.tick_params(labelsize=7)
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
    axes[-1, 0].set_xlabel("latency / onnxruntime float latency (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-vgg7,resnet18,minilm-2l")
    parser.add_argument("--batches", help="comma-separated; default 1,64 (--quick: 1,8)")
    parser.add_argument("--K", type=float, nargs="+", default=[1, 2, 5])
    parser.add_argument("--activation-dtype", nargs="+", default=["auto"],
                        choices=list(ACTIVATION_DTYPES),
                        help="MCQ activation count types, each a row; default auto (mctvm's)")
    parser.add_argument("--trials", type=int, help="tuning trials per program (0: no tuning); default 32 "
                        "(--quick: 4)")
    parser.add_argument("--repeat", type=int, help="timing samples; default 10 (--quick: 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (see above)")
    args = parser.parse_args()
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,64")).split(",")]
    trials = args.trials if args.trials is not None else (4 if args.quick else 32)
    repeat = args.repeat or (3 if args.quick else 10)
    models = args.models.split(",")

    dtypes = args.activation_dtype
    rows = matrix(models, batches, args.K, trials, repeat, args.quick, dtypes)
    peak, assumptions = cpu_peak()
    kernels = kernel_rows(models, max(batches), max(args.K), trials, repeat, args.quick, peak,
                          dtypes)
    header = f"{machine()}, load average {os.getloadavg()[0]:.2f}; median of {repeat}"
    text = print_table(rows, f"latency per batch, ms; {header}; resnet18@N: NxN images")
    text += "\n\n" + print_table(
        kernels, f"each model's biggest GEMM/conv alone, batch {max(batches)}; {assumptions}")
    save("matrix", rows + kernels, text)
    save_csv("matrix", rows)
    plot(rows, OUT / "matrix.png")


if __name__ == "__main__":
    main()
