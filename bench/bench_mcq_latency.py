"""Latency of MCQ programs on this CPU: the built-in model quantized vs float vs onnxruntime.

    python bench/bench_mcq_latency.py [--repeat 10]

Batch 1 and 64; MCQ at K = 1, 2, 5 with the default activation counts ("auto": uint8 after a
Relu up to K = 5), int16 and int8; the share of the program's time spent in activation
sampling (VM instrumentation). Writes bench/out/mcq_latency.{txt,json}.
"""

from __future__ import annotations

import argparse

import onnx

import mctvm
from mctvm.models import default_model

from common import machine, ort_session, print_table, random_input, save, time_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--K", type=float, nargs="+", default=[1, 2, 5])
    args = parser.parse_args()
    proto = onnx.load(default_model())
    rows = []
    for batch in (1, 64):
        shape = (batch, 1, 28, 28)
        x = random_input(shape)
        session = ort_session(proto)
        ort_ms = time_ms(lambda: session.run(None, {"input": x}), repeat=args.repeat)
        float_ms = mctvm.compile(proto, shapes={"input": shape}).benchmark(
            x, repeat=args.repeat).median_ms
        rows.append({"batch": batch, "program": "float", "ms": float_ms, "x float": 1.0,
                     "x onnxruntime": float_ms / ort_ms, "sampling share": 0.0})
        for dtype in ("auto", "int16", "int8"):
            for K in args.K:
                compiled = mctvm.compile(proto, K=K, activation_dtype=dtype,
                                         shapes={"input": shape})
                ms = compiled.benchmark(x, repeat=args.repeat).median_ms
                kernels = compiled.profile(x, repeat=3)
                share = sum(t for k, t in kernels.items() if "mcq_sample" in k) / sum(kernels.values())
                rows.append({"batch": batch, "program": f"MCQ K={K:g} {dtype}", "ms": ms,
                             "x float": ms / float_ms, "x onnxruntime": ms / ort_ms,
                             "sampling share": share})
        rows.append({"batch": batch, "program": "onnxruntime float", "ms": ort_ms,
                     "x float": ort_ms / float_ms, "x onnxruntime": 1.0, "sampling share": 0.0})
    text = print_table(rows, f"MCQ latency (median of {args.repeat}), built-in VGG-7, {machine()}")
    save("mcq_latency", rows, text)


if __name__ == "__main__":
    main()
