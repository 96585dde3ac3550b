"""MCDA on the built-in model: the cost of a noisy trial, and a full run (16 t x trials).

    python bench/bench_mcda.py [--trials 1000] [--batch 32]

Prints one plain inference vs one noisy trial of the same batch (the paper: 1.05x on a
GPU), the wall time of the whole run, digits lost K and t_min; writes
bench/out/mcda.{txt,json} and the Figure-4 plot mcda_fig4.png.
"""

from __future__ import annotations

import argparse
import time

import mctvm
from mctvm import models
from mctvm.mcda import compile_for_mcda, mcda

from common import OUT, machine, print_table, save


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    x, labels = models.test_sample()
    x, labels = x[:args.batch], labels[:args.batch]
    plain = mctvm.compile(models.default_model(), shapes={"input": x.shape})
    noisy = compile_for_mcda(models.default_model(), x.shape)
    plain_ms = plain.benchmark(x, repeat=10).median_ms
    noisy_ms = noisy.benchmark(x, repeat=10, t=8).median_ms
    started = time.perf_counter()
    result = mcda(noisy, x, labels, t=range(1, 17), trials=args.trials, progress=False)
    seconds = time.perf_counter() - started
    OUT.mkdir(exist_ok=True)
    result.plot(OUT / "mcda_fig4.png", title="MCDA of the built-in VGG-7")
    rows = [{"batch": args.batch, "plain_ms": plain_ms, "noisy_trial_ms": noisy_ms,
             "noisy/plain": noisy_ms / plain_ms, "trials": 16 * args.trials,
             "run_s": seconds, "digits_lost": result.digits_lost,
             "ci": result.fit.ci_halfwidth, "t_min": result.t_min}]
    text = print_table(rows, f"MCDA cost on the built-in VGG-7, {machine()}") + "\n\n" + str(result)
    print(str(result))
    save("mcda", rows, text)


if __name__ == "__main__":
    main()
