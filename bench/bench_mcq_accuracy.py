"""MCQ accuracy on the built-in Fashion-MNIST model: the paper's table and Figure 2.

    python bench/bench_mcq_accuracy.py [--K 0.5 1 2 3 5 10] [--limit N]

Float, then weights only (w), activations only (a) and both (w+a) for each K, with bits and
used shares; once with the first layer kept float (the default, as in the paper's best
results) and once with all layers quantized. Evaluates on the full 10k test set when
Debian's dataset-fashion-mnist is installed, else on the committed 1,000-image sample.
Writes bench/out/mcq_accuracy.{txt,json} and mcq_accuracy_fig2.png.
"""

from __future__ import annotations

import argparse
import time

from mctvm import models, sweep

from common import OUT, machine, save


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=float, nargs="+", default=[0.5, 1, 2, 3, 5, 10])
    parser.add_argument("--modes", nargs="+", default=["w", "a", "w+a"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch", type=int, default=100)
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
    save("mcq_accuracy", all_rows, "\n\n".join(texts))


if __name__ == "__main__":
    main()
