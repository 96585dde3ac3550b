"""What to quantize and how: the options of `mctvm.compile(..., K=...)`, resolved per layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import MctvmError
from .mcq import ORDERS

QUANTIZE_PARTS = ("weights", "activations")
ACTIVATION_DTYPES = ("auto", "int16", "int8", "uint8")
# activation_dtype="auto" takes uint8 counts (the u8 x s8 GEMMs) up to this K_activations:
# counts grow as K * x / mean(x), and on the built-in model 255 held all but 3 of them over
# the 10k test set at K = 5, but 15,604 were clipped at K = 10
AUTO_UINT8_MAX_K = 5.0
SPARSE_KERNELS = ("auto", "dense", "csr", "bsr")


@dataclass(frozen=True)
class LayerPlan:
    """One GEMM/conv with a constant weight: its name and the K of each part (None = float)."""

    index: int  # position among the module's GEMM/convs with a constant weight
    name: str  # the ONNX node name
    op: str  # "conv2d" or "matmul"
    K_weights: float | None
    K_activations: float | None

    @property
    def quantized(self) -> bool:
        return self.K_weights is not None or self.K_activations is not None


@dataclass(frozen=True)
class MCQOptions:
    """Validated MCQ options. K_weights/K_activations default to K; layer_K overrides both."""

    K_weights: float | None
    K_activations: float | None
    parts: tuple = QUANTIZE_PARTS
    layer_K: Mapping[str, float] = field(default_factory=dict)
    skip: tuple = ("first",)
    sort: bool = False
    normalize: str = "layer"
    order: str = "sign"  # the weights' CDF order: mcq.sample_counts
    activation_dtype: str = "auto"
    seed: int = 0  # seeds the weights' jitter at compile time
    sparse: str = "auto"  # integer GEMM/conv kernels: passes/lower_sparse_gemm.py

    @classmethod
    def from_args(cls, K, *, K_weights=None, K_activations=None, layer_K=None,
                  quantize=QUANTIZE_PARTS, skip=("first",), sort=False, normalize="layer",
                  order="sign", activation_dtype="auto", seed=0, sparse="auto") -> "MCQOptions | None":
        """Check the user's arguments; None when nothing is quantized (the float program)."""
        quantize = (quantize,) if isinstance(quantize, str) else tuple(quantize)
        unknown = sorted(set(quantize) - set(QUANTIZE_PARTS))
        if unknown:
            raise MctvmError(f"quantize= names {unknown}; use a subset of {QUANTIZE_PARTS}")
        for name, value in (("K", K), ("K_weights", K_weights), ("K_activations", K_activations)):
            check_K(value, name)
        for layer, value in (layer_K or {}).items():
            check_K(value, f"layer_K[{layer!r}]")
        kw = K_weights if K_weights is not None else K
        ka = K_activations if K_activations is not None else K
        if (kw is None and ka is None and not layer_K) or not quantize:
            return None
        if normalize not in ("layer", "channel"):
            raise MctvmError(f"normalize={normalize!r}; use 'layer' (the paper's) or 'channel'")
        if order not in ORDERS:
            raise MctvmError(
                f"order={order!r}; use 'sign' (each output channel's positive weights, then "
                "its negative ones: the default) or 'natural' (the weight tensor's order)")
        if activation_dtype not in ACTIVATION_DTYPES:
            raise MctvmError(
                f"activation_dtype={activation_dtype!r}; use one of {ACTIVATION_DTYPES} ('auto', "
                "the default: uint8 where a layer's input is non-negative and K <= "
                f"{AUTO_UINT8_MAX_K:g}, else int16; 'uint8': unsigned counts for layers whose "
                "input is non-negative, e.g. after a Relu, int8 for the others)")
        if sparse not in SPARSE_KERNELS:
            raise MctvmError(
                f"sparse={sparse!r}; use one of {SPARSE_KERNELS} ('auto' picks per layer from "
                "the weight's sparsity, 'dense' never uses the sparse kernels)")
        skip = (skip,) if isinstance(skip, str) else tuple(skip or ())
        return cls(kw, ka, quantize, dict(layer_K or {}), skip, bool(sort), normalize, order,
                   activation_dtype, int(seed), sparse)

    def plan(self, sites: Sequence[tuple[str, str]]) -> list[LayerPlan]:
        """Resolve the options over the model's layers, given as (name, op) in graph order."""
        names = [name for name, _ in sites]
        unknown = sorted(set(self.layer_K) | {s for s in self.skip if s not in ("first", "last")})
        unknown = [n for n in unknown if n not in names]
        if unknown:
            raise MctvmError(
                f"layer_K/skip name layers {unknown} that are not GEMM/conv nodes with constant "
                f"weights; those are: {names}"
            )
        skipped = {names[0] if s == "first" else names[-1] if s == "last" else s
                   for s in self.skip if names}
        plans = []
        for index, (name, op) in enumerate(sites):
            if name in skipped:
                plans.append(LayerPlan(index, name, op, None, None))
                continue
            kw = self.layer_K.get(name, self.K_weights) if "weights" in self.parts else None
            ka = self.layer_K.get(name, self.K_activations) if "activations" in self.parts else None
            plans.append(LayerPlan(index, name, op, kw, ka))
        return plans


def check_K(K, name="K"):
    """K is None or a positive finite number of samples per value."""
    if K is None:
        return
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not math.isfinite(K) or K <= 0:
        raise MctvmError(
            f"{name} must be a positive number of samples per value, got {K!r}; "
            "use K=None for the float program, or e.g. K=5 (the paper's ImageNet setting)"
        )
