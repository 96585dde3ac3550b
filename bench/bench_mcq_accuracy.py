"""MCQ accuracy on the built-in Fashion-MNIST model: the paper's table and Figure 2.

    python bench/bench_mcq_accuracy.py [--K 0.5 1 2 3 5 10] [--limit N]

Float, then weights only (w), activations only (a) and both (w+a) for each K, with bits and
used shares; once with the first layer kept float (the default, as in the paper's best
results) and once with all layers quantized. Evaluates on the full 10k test set when
Debian's dataset-fashion-mnist is installed, else on the committed 1,000-image sample.
Then, at --options-K (1), w+a with the default skip, the options that change how weights are
sampled (order, sort, normalize), each over --seeds compile seeds (the weights' jitter; fresh
activation draws per call): mean and spread, since one draw moves accuracy by ~0.5 points.
Writes bench/out/mcq_accuracy.{txt,json} and mcq_accuracy_fig2.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mctvm
from mctvm import models, sweep
from mctvm.evaluate import accuracy

from common import OUT, machine, save


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=float, nargs="+", default=[0.5, 1, 2, 3, 5, 10])
    parser.add_argument("--modes", nargs="+", default=["w", "a", "w+a"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--options-K", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    name, x, labels = models.evaluation_set()
    if args.limit:
        x, labels, name = x[:args.limit], labels[:args.limit], f"{name}, first {args.limit}"
    texts, all_rows = [], []
    for skip, title in ((("first",), "first layer float (default)"), ((), "all layers quantized")):
        started = time.perf_counter()
        rows = sweep.sweep(models.default_model(), x, labels, args.K, modes=args.modes,
                           batch=args.batch, skip=skip)
        text = (f"MCQ on the built-in VGG-7, {title}; {name}; {machine()}; "
                f"{time.perf_counter() - started:.0f} s\n{sweep.format_rows(rows)}")
        print(text + "\n", flush=True)
        texts.append(text)
        all_rows += [dict(r, skip=list(skip)) for r in rows]
        if skip:
            OUT.mkdir(exist_ok=True)
            sweep.plot(rows, OUT / "mcq_accuracy_fig2.png",
                       title=f"MCQ on the built-in VGG-7 ({name}, first layer float)")
    text, rows = options_table(x, labels, args, all_rows[0]["accuracy"])
    print(text, flush=True)
    texts.append(f"{text}\n{name}; {machine()}")
    save("mcq_accuracy", all_rows + rows, "\n\n".join(texts))


OPTIONS = {"default (order=sign)": {}, "order=natural": {"order": "natural"},
           "channel": {"normalize": "channel"},
           "natural + channel": {"order": "natural", "normalize": "channel"},
           "sort": {"sort": True}, "sort + channel": {"sort": True, "normalize": "channel"}}


def options_table(x, labels, args, float_accuracy):
    """w+a at one K: accuracy per weight-sampling option over several compile seeds."""
    shape = {"input": (args.batch, 1, 28, 28)}
    lines = [f"w+a, K={args.options_K:g}, first layer float, {args.seeds} compile seeds each",
             f"{'options':>20} {'mean':>8} {'delta':>7} {'min':>8} {'max':>8}"]
    rows = []
    for label, options in OPTIONS.items():
        accs = [accuracy(mctvm.compile(models.default_model(), K=args.options_K, seed=seed,
                                       shapes=shape, **options), x, labels)
                for seed in range(args.seeds)]
        mean = float(np.mean(accs))
        lines.append(f"{label:>20} {100 * mean:7.2f}% {100 * (mean - float_accuracy):+6.2f} "
                     f"{100 * min(accs):7.2f}% {100 * max(accs):7.2f}%")
        rows.append({"mode": "w+a", "K": args.options_K, "options": label, "accuracy": mean,
                     "accuracies": accs})
    return "\n".join(lines), rows


if __name__ == "__main__":
    main()
