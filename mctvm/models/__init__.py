"""The built-in default model (a VGG-7-style CNN for Fashion-MNIST) and its data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "fmnist_vgg7.onnx"
DEFAULT_MODEL_CARD = HERE / "fmnist_vgg7.json"
TEST_SAMPLE = HERE / "fmnist_test_sample.npz"
# Debian's package dataset-fashion-mnist installs the full data set here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def default_model() -> Path:
    """Path of the built-in ONNX model (input 'input' [batch,1,28,28] in [0,1], output 'logits')."""
    return DEFAULT_MODEL


def model_card() -> dict:
    """What was recorded when the built-in model was trained (accuracy, architecture, ...)."""
    return json.loads(DEFAULT_MODEL_CARD.read_text())


def _to_model_input(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def test_sample():
    """The committed 1,000-image class-stratified sample of the test set: (x, labels)."""
    with np.load(TEST_SAMPLE) as data:
        return _to_model_input(data["images"]), data["labels"].astype(np.int64)


def fashion_mnist(split="test", directory=FASHION_MNIST_DIR):
    """The full Fashion-MNIST split from the idx files: (x [n,1,28,28] float32, labels)."""
    prefix = {"test": "t10k", "train": "train"}[split]
    directory = Path(directory)
    images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
    return _to_model_input(images), labels.astype(np.int64)


def have_fashion_mnist(directory=FASHION_MNIST_DIR) -> bool:
    return (Path(directory) / "t10k-images-idx3-ubyte.gz").is_file()


def evaluation_set():
    """The full 10k test set where the Debian package is installed, else the 1k sample."""
    if have_fashion_mnist():
        return "Fashion-MNIST test set (10,000)", *fashion_mnist("test")
    return "committed test sample (1,000)", *test_sample()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
