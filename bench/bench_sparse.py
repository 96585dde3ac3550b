"""Sparse integer kernels (kernels/sparse_gemm.py) against the dense integer kernel.

    python bench/bench_sparse.py [--repeat 5] [--quick]

For the built-in VGG-7's largest layers (the 1152->256 dense layer, the 128->128 7x7 conv
with the most weights, the 32->32 28x28 conv with the most work) at batch 1 and 64: int16
activations times a constant int16 count weight (as InsertActivationSampling emits them),
int32 out. 'dense' is that op built with the default CPU schedules (targets/cpu.py), 'csr'
and 'bsr' the sparse kernels as LowerSparseGEMM emits them, for weights with a random
(unstructured) fraction of zeros. The three programs are timed in alternation, `repeat`
rounds (each round the best of 10 samples, a sample the mean of enough calls to last 5 ms),
and each keeps its best sample: other processes (or, on a VM, the host) only ever add time,
and short samples let the minimum dodge their bursts. Prints the table and the
crossover (the lowest measured sparsity from which on a format beats dense), the numbers
behind passes/lower_sparse_gemm.CROSSOVER; writes bench/out/sparse.{csv,txt,json,png}.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from mctvm.kernels import sparse_gemm
from mctvm.passes.lower_sparse_gemm import kernel_options
from mctvm.targets import cpu

from common import OUT, machine, print_table, save, save_csv

# (label, op, activation shape without batch, weight shape, conv padding)
LAYERS = [
    ("/16/Gemm 1152->256", "matmul", (1152,), (1152, 256), None),
    ("/12/Conv 128->128 7x7", "conv2d", (128, 7, 7), (128, 128, 3, 3), 1),
    ("/2/Conv 32->32 28x28", "conv2d", (32, 28, 28), (32, 32, 3, 3), 1),
]
SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DTYPE = "int16"


def weight_with_sparsity(shape, sparsity, rng) -> np.ndarray:
    """int16 counts in [-20, 20] \\ {0}, a random `sparsity` fraction of them zero."""
    w = rng.integers(1, 21, size=shape) * rng.choice([-1, 1], size=shape)
    w[rng.random(shape) < sparsity] = 0
    return w.astype(DTYPE)


def dense_module(op, x_shape, w, padding):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, DTYPE))
    with bb.function("main", [x]):
        with bb.dataflow():
            if op == "matmul":
                y = relax.op.matmul(x, relax.const(w), out_dtype="int32")
            else:
                y = relax.op.nn.conv2d(x, relax.const(w), padding=padding, out_dtype="int32")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def sparse_module(op, x_shape, w, padding, fmt, options):
    from tvm import relax

    if op == "matmul":
        func, arrays = sparse_gemm.sparse_matmul(x_shape, DTYPE, w, fmt, **options)
        out_shape = (x_shape[0], w.shape[1])
    else:
        func, arrays = sparse_gemm.sparse_conv2d(x_shape, DTYPE, w, fmt, padding=[padding] * 4,
                                                 **options)
        out_shape = (x_shape[0], w.shape[0], x_shape[2], x_shape[3])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, DTYPE))
    with bb.function("main", [x]):
        gvar = bb.add_func(func, "sparse")
        with bb.dataflow():
            out = bb.emit_output(relax.call_tir(gvar, [x] + [relax.const(a) for a in arrays],
                                                out_ty=relax.TensorType(out_shape, "int32")))
        bb.emit_func_output(out)
    return bb.get()


def sampler(mod, inputs):
    """Build `mod` as targets/cpu.py does; a function giving one timing sample in ms."""
    import tvm
    from tvm import relax

    target = cpu.default_target()
    with target:
        lowered = tvm.transform.Sequential(cpu.lowering_passes(target))(mod)
        executable, _ = cpu.build(lowered, target)
    device = tvm.cpu(0)
    vm = relax.VirtualMachine(executable, device)
    vm.set_input("main", *[tvm.runtime.tensor(x, device) for x in inputs])
    probe = vm.time_evaluator("invoke_stateful", device, number=1, repeat=1)
    probe("main")
    number = max(1, int(0.005 / max(probe("main").mean, 1e-6)))
    timer = vm.time_evaluator("invoke_stateful", device, number=number, repeat=10)
    return lambda: min(timer("main").results) * 1e3


def rows(repeat, quick):
    options = kernel_options(cpu.default_target())
    rng = np.random.default_rng(0)
    result = []
    sparsities = SPARSITIES[::2] if quick else SPARSITIES
    for label, op, feature_shape, w_shape, padding in LAYERS:
        for batch in (1, 64):
            x_shape = (batch,) + feature_shape
            x = rng.integers(-300, 301, size=x_shape).astype(DTYPE)
            for sparsity in sparsities:
                w = weight_with_sparsity(w_shape, sparsity, rng)
                samplers = {"dense": sampler(dense_module(op, x_shape, w, padding), [x])}
                for fmt in sparse_gemm.FORMATS:
                    samplers[fmt] = sampler(sparse_module(op, x_shape, w, padding, fmt, options),
                                            [x])
                best = {name: fn() for name, fn in samplers.items()}
                for _ in range(repeat - 1):
                    for name, fn in samplers.items():
                        best[name] = min(best[name], fn())
                row = {"layer": label, "batch": batch, "sparsity": sparsity,
                       "dense_ms": best["dense"]}
                for fmt in sparse_gemm.FORMATS:
                    row[f"{fmt}_ms"] = best[fmt]
                    row[f"{fmt}_speedup"] = best["dense"] / best[fmt]
                print(row, flush=True)
                result.append(row)
    return result


def crossovers(result) -> list:
    """Per (layer, batch, format): the lowest measured sparsity from which on the format is
    faster than dense at every measured sparsity above it (None if never)."""
    found = []
    keys = sorted({(r["layer"], r["batch"]) for r in result}, key=str)
    for layer, batch in keys:
        series = [r for r in result if r["layer"] == layer and r["batch"] == batch]
        entry = {"layer": layer, "batch": batch}
        for fmt in sparse_gemm.FORMATS:
            wins = [r[f"{fmt}_speedup"] > 1 for r in series]
            at = None
            for i in range(len(series) - 1, -1, -1):
                if not wins[i]:
                    break
                at = series[i]["sparsity"]
            entry[f"{fmt}_crossover"] = "never" if at is None else at
            at70 = [r[f"{fmt}_speedup"] for r in series if r["sparsity"] >= 0.7]
            entry[f"{fmt}_min_speedup_from_70%"] = min(at70) if at70 else "-"
        found.append(entry)
    return found


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["layer"], r["batch"]) for r in result}, key=str)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    for ax, (layer, batch) in zip(axes[0], keys):
        series = [r for r in result if r["layer"] == layer and r["batch"] == batch]
        xs = [100 * r["sparsity"] for r in series]
        for fmt in sparse_gemm.FORMATS:
            ax.plot(xs, [r[f"{fmt}_speedup"] for r in series], marker="o", label=fmt)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="dense")
        ax.axhline(1.5, color="grey", lw=0.6, ls=":", label="1.5x target")
        ax.set_yscale("log")
        ax.set_title(f"{layer}\nbatch {batch}", fontsize=8)
        ax.set_xlabel("weight sparsity (%)")
    axes[0][0].set_ylabel("speedup over dense int kernel")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="every other sparsity")
    args = parser.parse_args()
    cpu.configure_threads()
    result = rows(args.repeat, args.quick)
    header = (f"{machine()}, TVM threads {cpu.thread_count()}, load average "
              f"{os.getloadavg()[0]:.2f}; best of {args.repeat}; int16 activations")
    text = print_table(result, f"sparse vs dense integer kernels, ms; {header}")
    text += "\n\n" + print_table(crossovers(result), "crossover sparsity (sparse faster from)")
    save("sparse", result, text)
    save_csv("sparse", result)
    plot(result, OUT / "sparse.png")


if __name__ == "__main__":
    main()
