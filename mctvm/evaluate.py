"""Accuracy of a compiled classifier over a labelled data set, in fixed-size batches."""

from __future__ import annotations

import numpy as np


def predict(model, x: np.ndarray) -> np.ndarray:
    """Logits for every row of `x`, run in the model's compiled batch size (last batch padded)."""
    batch = model.input_info[0].shape[0]
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        real = len(chunk)
        if real < batch:
            pad = np.zeros((batch - real,) + chunk.shape[1:], dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = model(chunk)
        outputs.append(np.asarray(out[0] if isinstance(out, list) else out)[:real])
    return np.concatenate(outputs)


def accuracy(model, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (fraction) of `model` on (x, labels)."""
    return float(np.mean(predict(model, x).argmax(axis=1) == labels))
