"""Time mctvm.mcq.sample_counts on Gaussian float32 weights (one CPU core).

    python bench/bench_mcq.py [--repeat 5]

Prints a table: elements, mode, order (natural, sign: what mctvm.compile uses, or sort),
best-of-N wall seconds, CPU seconds of that run, and millions of elements per second.
25M is about ResNet-50's weight count.
"""

import os

# numpy's cumsum/sort/ufuncs are single-threaded anyway; these only keep a threaded
# BLAS from spinning up, so the one-core condition below is the one that matters.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mctvm.mcq import sample_counts  # noqa: E402

CASES = [  # (elements, shape, normalize, order); order "sort" is sort=True
    (25_000_000, (25_000_000,), "layer", "natural"),
    (25_000_000, (2000, 12500), "layer", "sign"),
    (25_000_000, (25_000_000,), "layer", "sort"),
    (25_000_000, (2000, 12500), "channel", "natural"),
    (25_000_000, (2000, 12500), "channel", "sign"),
    (1_000_000, (1_000_000,), "layer", "natural"),
    (1_000_000, (1000, 1000), "layer", "sign"),
    (1_000_000, (1_000_000,), "layer", "sort"),
    (100_000, (100_000,), "layer", "natural"),
    (100_000, (100, 1000), "layer", "sign"),
    (100_000, (100_000,), "layer", "sort"),
]


def _time(fn, repeat):
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="best of N runs (default 5)")
    args = ap.parse_args()
    pinned = ""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f", pinned to CPU {cpu}"
    print(f"one core{pinned}; numpy {np.__version__}; K=5, xi=0.3; best of {args.repeat}")
    print(f"{'elements':>12} {'mode':>8} {'order':>8} {'seconds':>9} {'cpu s':>7} {'M elem/s':>9}")
    rng = np.random.default_rng(0)
    data = {}
    for n, shape, normalize, order in CASES:
        if n not in data:
            data[n] = rng.standard_normal(n, dtype=np.float32)
        v = data[n].reshape(shape)
        sort = order == "sort"
        wall, cpu = _time(lambda: sample_counts(v, 5.0, 0.3, sort=sort, normalize=normalize,
                                                order="natural" if sort else order),
                          args.repeat)
        rate = n / wall / 1e6
        print(f"{n:>12,} {normalize:>8} {order:>8} {wall:>9.4f} {cpu:>7.3f} {rate:>9.1f}")


if __name__ == "__main__":
    main()
