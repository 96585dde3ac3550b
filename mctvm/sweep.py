"""Accuracy, bits and sparsity against K over a labelled data set (the MCQ paper's Figure 2)."""

from __future__ import annotations

import numpy as np

from .evaluate import accuracy

MODES = {"w": ("weights",), "a": ("activations",), "w+a": ("weights", "activations")}


def _input_shape(model_path_or_proto, batch):
    from . import frontend

    proto = frontend.load_model(model_path_or_proto)
    value = frontend.graph_inputs(proto)[0]
    dims = [d.dim_value if d.HasField("dim_value") else batch
            for d in value.type.tensor_type.shape.dim]
    return proto, value.name, (batch, *dims[1:])


def used_share(rows, part) -> float:
    """Share of nonzero counts over all quantized values of `part` ('weight' or 'activation'),
    weighted by each layer's size: the paper's '% of used weights/activations'."""
    used = total = 0.0
    for row in rows:
        sparsity = row.get(f"{part}_sparsity")
        shape = row.get("weight_shape" if part == "weight" else "input_shape")
        if sparsity is None or shape is None or np.isnan(sparsity):
            continue
        size = float(np.prod(shape if part == "weight" else shape[1:]))
        used += (1.0 - sparsity) * size
        total += size
    return used / total if total else float("nan")


def sweep(model, x, labels, Ks, *, modes=("w+a",), batch=64, target="llvm", **options) -> list:
    """Rows of accuracy, bits and used shares for the float model and each (mode, K)."""
    import mctvm

    proto, name, shape = _input_shape(model, batch)
    float_model = mctvm.compile(proto, target=target, shapes={name: shape})
    rows = [{"mode": "float", "K": None, "accuracy": accuracy(float_model, x, labels),
             "weight_bits": 32.0, "activation_bits": 32.0, "used_weights": 1.0,
             "used_activations": 1.0, "saturated": 0}]
    for mode in modes:
        for K in Ks:
            compiled = mctvm.compile(proto, K=K, target=target, shapes={name: shape},
                                     quantize=MODES[mode], **options)
            acc = accuracy(compiled, x, labels)
            report = compiled.report()
            totals = report.totals
            rows.append({
                "mode": mode, "K": K, "accuracy": acc,
                "weight_bits": totals["weight_bits"], "activation_bits": totals["activation_bits"],
                "used_weights": used_share(report.rows, "weight") if "w" in mode.split("+") else 1.0,
                "used_activations": (used_share(report.rows, "activation")
                                     if "a" in mode.split("+") else 1.0),
                "saturated": totals["saturated"],
            })
    return rows


def format_rows(rows) -> str:
    """The sweep as a text table; accuracy deltas against the float row."""
    base = rows[0]["accuracy"]
    lines = [f"{'mode':>5} {'K':>5} {'accuracy':>9} {'delta':>7} {'bits':>11} "
             f"{'used w':>7} {'used a':>7} {'saturated':>9}"]
    for r in rows:
        k = "-" if r["K"] is None else f"{r['K']:g}"
        bits = f"{r['weight_bits']:.1f}w-{r['activation_bits']:.1f}a"
        lines.append(f"{r['mode']:>5} {k:>5} {100 * r['accuracy']:8.2f}% "
                     f"{100 * (r['accuracy'] - base):+6.2f} {bits:>11} "
                     f"{100 * r['used_weights']:6.1f}% {100 * r['used_activations']:6.1f}% "
                     f"{r['saturated']:>9}")
    return "\n".join(lines)


def plot(rows, path, title="MCQ: accuracy, used values and bits against K"):
    """Three panels against K (log scale), one line per mode; float accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    base = rows[0]
    for mode in dict.fromkeys(r["mode"] for r in rows[1:]):
        sub = [r for r in rows if r["mode"] == mode]
        ks = [r["K"] for r in sub]
        axes[0].plot(ks, [100 * r["accuracy"] for r in sub], "o-", label=mode)
        if "w" in mode.split("+"):
            axes[1].plot(ks, [100 * r["used_weights"] for r in sub], "o-", label=f"weights ({mode})")
            axes[2].plot(ks, [r["weight_bits"] for r in sub], "o-", label=f"weights ({mode})")
        if "a" in mode.split("+"):
            axes[1].plot(ks, [100 * r["used_activations"] for r in sub], "s--",
                         label=f"activations ({mode})")
            axes[2].plot(ks, [r["activation_bits"] for r in sub], "s--",
                         label=f"activations ({mode})")
    axes[0].axhline(100 * base["accuracy"], color="k", ls=":", label="float")
    ks = sorted({r["K"] for r in rows[1:]})
    for ax, label in zip(axes, ("accuracy (%)", "used values (%)", "bits")):
        ax.set_xscale("log")
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K (samples per value)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def float_format_sweep(model, x, labels, bits=(8, 6, 5), *, rounding="stochastic", batch=64,
                       target="llvm", exponents=None) -> list:
    """Accuracy with weights and activations in a (1 + E + M)-bit float format, for every
    split of each total (or only E in `exponents`), as the MCDA paper's appendix A.2 does;
    rows marked best per total."""
    import mctvm

    proto, name, shape = _input_shape(model, batch)
    rows = []
    for total in bits:
        splits = [(e, total - 1 - e) for e in range(2, min(8, total - 1) + 1)
                  if exponents is None or e in exponents]
        best = None
        for e, m in splits:
            fmt = {"weights": (e, m), "activations": (e, m), "rounding": rounding}
            compiled = mctvm.compile(proto, target=target, shapes={name: shape}, float_format=fmt)
            row = {"bits": total, "E": e, "M": m, "rounding": rounding,
                   "accuracy": accuracy(compiled, x, labels), "best": False}
            rows.append(row)
            best = row if best is None or row["accuracy"] > best["accuracy"] else best
        best["best"] = True
    return rows
