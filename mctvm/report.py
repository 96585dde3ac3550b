"""The MCQ report: per layer K, N, bits and sparsity of weights and activations, saturations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ActivationStats:
    """Run-time statistics of one sampled layer, summed over the calls made so far."""

    elements_per_sample: int
    samples: int = 0
    nonzero: int = 0
    saturated: int = 0
    max_count: int = 0
    bits_sum: float = 0.0

    def add(self, stats: np.ndarray):
        """Fold in one call's kernel output, int32 (batch, 3): nonzero, max |count|, saturated."""
        stats = np.asarray(stats, dtype=np.int64)
        self.samples += stats.shape[0]
        self.nonzero += int(stats[:, 0].sum())
        self.max_count = max(self.max_count, int(stats[:, 1].max(initial=0)))
        self.saturated += int(stats[:, 2].sum())
        self.bits_sum += float(np.ceil(np.log2(stats[:, 1] + 1.0)).sum())

    @property
    def sparsity(self) -> float:
        total = self.samples * self.elements_per_sample
        return 1.0 - self.nonzero / total if total else math.nan

    @property
    def bits(self) -> float:
        """Mean over samples of the magnitude bits of the largest count (no sign bit)."""
        return self.bits_sum / self.samples if self.samples else math.nan


@dataclass
class Report:
    """What MCQ did to each layer; `rows` as data, str() as a table."""

    rows: list = field(default_factory=list)
    convention: str = ("weight bits = ceil(log2(max|count|+1)) + 1 sign bit; activation bits = "
                       "mean over samples of ceil(log2(max count+1)), as in the MCQ paper")
    notes: list = field(default_factory=list)  # lines printed under the table

    @property
    def totals(self) -> dict:
        """Mean weight and activation bits over quantized layers, in the paper's notation."""
        wb = [r["weight_bits"] for r in self.rows if r.get("weight_bits") is not None]
        ab = [r["activation_bits"] for r in self.rows
              if r.get("activation_bits") is not None and not math.isnan(r["activation_bits"])]
        w = float(np.mean(wb)) if wb else 32.0
        a = float(np.mean(ab)) if ab else 32.0
        return {"weight_bits": w, "activation_bits": a, "notation": f"{w:.1f}w-{a:.1f}a",
                "saturated": sum(r.get("saturated") or 0 for r in self.rows)}

    def __str__(self):
        head = ("layer", "op", "K_w", "N_w", "w bits", "w sparsity", "K_a", "N_a", "a bits",
                "a sparsity", "a type", "saturated", "kernel")
        lines = []
        for r in self.rows:
            lines.append((
                r["name"], r["op"], _f(r.get("K_weights")), _f(r.get("N_weights")),
                _f(r.get("weight_bits")), _pct(r.get("weight_sparsity")),
                _f(r.get("K_activations")), _f(r.get("N_activations")),
                _f(r.get("activation_bits")), _pct(r.get("activation_sparsity")),
                _f(r.get("activation_dtype")), _f(r.get("saturated")), _f(r.get("gemm_kernel")),
            ))
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
        text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
        t = self.totals
        text.append(f"total: {t['notation']}  saturated activation counts: {t['saturated']}")
        text.append(f"({self.convention}; '-' = kept float)")
        return "\n".join(text + self.notes)


def _f(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def build_report(layers: list, activation_stats: dict) -> Report:
    """Merge the compile-time layer records with the run-time activation statistics."""
    rows = []
    for layer in layers:
        row = {k: layer.get(k) for k in ("index", "name", "op", "K_weights", "N_weights",
                                         "weight_bits", "weight_sparsity", "weight_dtype",
                                         "K_activations", "N_activations", "activation_dtype",
                                         "gemm_kernel")}
        row["weight_shape"] = layer.get("weight_shape")
        row["input_shape"] = layer.get("input_shape")
        stats = activation_stats.get(layer["index"])
        row["calls_samples"] = stats.samples if stats else 0
        row["activation_bits"] = stats.bits if stats else None
        row["activation_sparsity"] = stats.sparsity if stats else None
        row["saturated"] = stats.saturated if stats else None
        row["max_activation_count"] = stats.max_count if stats else None
        rows.append(row)
    return Report(rows)
