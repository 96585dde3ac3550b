"""Latency of the float path on this CPU: mctvm (default schedules, no tuning) vs onnxruntime.

    python bench/bench_latency.py [--repeat 10] [--models fmnist,minilm]

Models: the built-in Fashion-MNIST VGG-7 and a MiniLM-shaped transformer encoder (hidden 384,
12 heads, FFN 1536, 32 tokens; 2 of MiniLM's 6 layers, random weights). Batch 1 and 64.
Both runtimes use all cores. Writes bench/out/latency.{txt,json} and latency.png.
"""

from __future__ import annotations

import argparse

import onnx

import mctvm
from mctvm.models import default_model, synthetic

from common import machine, ort_session, print_table, random_input, save, time_ms, OUT

MODELS = {
    "fmnist-vgg7": (lambda: onnx.load(default_model()), lambda b: (b, 1, 28, 28)),
    "minilm-2l": (lambda: synthetic.transformer(seq=32, dim=384, heads=12, ffn=1536, layers=2),
                  lambda b: (b, 32, 384)),
}


def run(models, batches, repeat):
    rows = []
    for name in models:
        make, shape_of = MODELS[name]
        proto = make()
        input_name = proto.graph.input[0].name
        for batch in batches:
            shape = shape_of(batch)
            x = random_input(shape)
            session = ort_session(proto)
            ort_ms = time_ms(lambda: session.run(None, {input_name: x}), repeat=repeat)
            compiled = mctvm.compile(proto, shapes={input_name: shape})
            tvm_ms = compiled.benchmark(x, repeat=repeat).median_ms
            rows.append({"model": name, "batch": batch, "onnxruntime_ms": ort_ms,
                         "mctvm_default_ms": tvm_ms, "mctvm/ort": tvm_ms / ort_ms})
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, [r["mctvm/ort"] for r in rows], color="tab:orange")
    ax.axhline(1.0, color="k", lw=1, ls="--", label="onnxruntime")
    ax.set_ylabel("latency / onnxruntime latency")
    ax.set_title("mctvm float path, default schedules (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args()
    rows = run(args.models.split(","), [int(b) for b in args.batches.split(",")], args.repeat)
    text = print_table(rows, f"float latency, median of {args.repeat}, {machine()}")
    save("latency", rows, text)
    try:
        plot(rows, OUT / "latency.png")
    except ImportError:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
