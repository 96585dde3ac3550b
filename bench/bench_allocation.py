"""Sensitivity allocation of MCQ samples vs uniform K at the same total, on the built-in model.

    python bench/bench_allocation.py [--K 1 2] [--trials 50]

Per-layer MCDA on one batch of 32 test images gives each layer's digits lost; the weights'
samples are spread by 2^digits_lost with the same total as uniform K (all layers quantized,
weights only, so the totals compare). Accuracy over the evaluation set (10k with Debian's
package, else the 1k sample), mean over 3 weight-sampling seeds.
Writes bench/out/allocation.{txt,json}.
"""

from __future__ import annotations

import argparse

import numpy as np

import mctvm
from mctvm import models
from mctvm.allocate import sensitivity_layer_K
from mctvm.evaluate import predict

from common import machine, print_table, save


def mean_accuracy(K, options, x, labels, seeds=3):
    """Mean accuracy over weight-sampling seeds, and the total of weight samples."""
    hits = []
    for seed in range(seeds):
        compiled = mctvm.compile(models.default_model(), K=K, shapes={"input": (100, 1, 28, 28)},
                                 quantize=("weights",), skip=(), seed=seed, **options)
        hits.append(np.mean(predict(compiled, x).argmax(axis=1) == labels))
    samples = sum(r["N_weights"] for r in compiled.report().rows)
    return float(np.mean(hits)), samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=float, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    name, x, labels = models.evaluation_set()
    calib_x, calib_labels = models.test_sample()
    calib = (calib_x[:32], calib_labels[:32])
    rows = []
    for K in args.K:
        layer_K = sensitivity_layer_K(models.default_model(), K, *calib, trials=args.trials,
                                      progress=False)
        for label, options in (("uniform", {}), ("sensitivity", {"layer_K": layer_K})):
            acc, samples = mean_accuracy(K, options, x, labels)
            rows.append({"K": K, "allocation": label, "weight_samples": samples,
                         "accuracy": acc})
    text = print_table(rows, f"MCQ weights at equal total samples, {name}, {machine()}")
    save("allocation", rows, text)


if __name__ == "__main__":
    main()
