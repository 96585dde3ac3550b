"""Shared benchmark helpers: onnxruntime timing, tables, plots, result files."""

from __future__ import annotations

import csv
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def ort_session(model, threads=None):
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def time_ms(fn, repeat=10, min_seconds=0.1, statistic=statistics.median) -> float:
    """Milliseconds of one call (median of `repeat` samples by default; `statistic=min` for
    the best): each sample averages enough calls to last `min_seconds`."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    number = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e3)
    return statistic(samples)


def machine() -> str:
    from tvm.target import codegen

    import os

    return (f"{platform.processor() or platform.machine()} ({codegen.llvm_get_system_cpu()}), "
            f"{os.cpu_count()} cores")


def print_table(rows: list[dict], title: str) -> str:
    """Print rows (dicts with the same keys) as an aligned text table; return the text."""
    keys = list(rows[0])
    cells = [[_fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [title, "  ".join(k.rjust(w) for k, w in zip(keys, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def save(name: str, rows: list[dict], text: str) -> Path:
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(rows, indent=2, default=float))
    (OUT / f"{name}.txt").write_text(text + "\n")
    return OUT / f"{name}.txt"


def save_csv(name: str, rows: list[dict]) -> Path:
    """rows as bench/out/<name>.csv, one column per key of the first row."""
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{name}.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return OUT / f"{name}.csv"


def random_input(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)
