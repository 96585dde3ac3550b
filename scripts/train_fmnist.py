#!/usr/bin/env python3
"""Train and export mctvm's built-in default model: a narrow VGG-7 on Fashion-MNIST.

This is a *development* script.  It needs PyTorch (``pip install torch``), which
is only a tool for producing the model artefacts; the ``mctvm`` runtime package
itself never imports torch.  The script

1. loads Fashion-MNIST from the original idx (gzip) files,
2. defines a narrow VGG-7 for 28x28 grayscale images (the paper's CIFAR VGG-7
   ``2x conv128, pool, 2x conv256, pool, 2x conv512, pool, dense1024, dense10``
   scaled down to ``2x conv32, pool, 2x conv64, pool, 2x conv128, pool,
   dense256, dense10``; every conv is 3x3/pad 1 followed by BatchNorm + ReLU),
3. trains it on the 60k training images with a fixed seed,
4. folds every BatchNorm into the preceding convolution and exports the eval
   model to ONNX (opset 17, dynamic batch dimension ``batch``, input
   ``input`` float32 ``(batch, 1, 28, 28)`` with pixel values in [0, 1],
   output ``logits`` float32 ``(batch, 10)``),
5. evaluates the exported ONNX file with onnxruntime on the full 10k test set,
   and writes a JSON metadata file next to it,
6. writes a fixed, seeded, class-stratified 1,000-image sample of the test set
   as ``.npz`` (``images`` uint8 (1000, 28, 28), ``labels`` uint8 (1000,),
   ``indices`` int64 positions in the 10k test set).

Usage (from the repository root)::

    python scripts/train_fmnist.py                 # full run, writes mctvm/models/
    python scripts/train_fmnist.py --epochs 1 --train-limit 2048 --out-dir /tmp/x  # smoke test

The default data location is the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); override it with ``--data``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO_ROOT / "mctvm" / "models"

ONNX_NAME = "fmnist_vgg7.onnx"
JSON_NAME = "fmnist_vgg7.json"
SAMPLE_NAME = "fmnist_test_sample.npz"

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# Channel widths of the three conv stages and the hidden dense layer.
CONV_WIDTHS = (32, 64, 128)
HIDDEN = 256
ALLOWED_OPS = {"Conv", "Relu", "MaxPool", "Flatten", "Reshape", "Gemm"}


# --------------------------------------------------------------------------- data
def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzip-compressed idx file (big-endian header, uint8 payload)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: payload size {data.size} does not match dims {dims}")
    return data.reshape(dims)


def load_fashion_mnist(root: Path):
    """Return ``(train_x, train_y, test_x, test_y)`` as uint8 arrays (N,28,28)/(N,)."""
    out = []
    for split in ("train", "t10k"):
        x = _read_idx(root / f"{split}-images-idx3-ubyte.gz")
        y = _read_idx(root / f"{split}-labels-idx1-ubyte.gz")
        if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise ValueError(f"unexpected shapes for {split}: {x.shape}, {y.shape}")
        out += [x, y]
    return tuple(out)


def to_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N,28,28) -> float32 (N,1,28,28) in [0,1]; the model's input contract."""
    return (images_u8.astype(np.float32) / 255.0)[:, None, :, :]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per sample."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = oy[:, None] + torch.arange(h)[None, :]  # (n, h)
    cols = ox[:, None] + torch.arange(w)[None, :]  # (n, w)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n)[:, None, None]
    return xp[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


# --------------------------------------------------------------------------- model
class VGG7(nn.Module):
    """Narrow VGG-7 for 1x28x28 inputs (training form, with BatchNorm)."""

    def __init__(self, widths=CONV_WIDTHS, hidden=HIDDEN, num_classes=10, dropout=0.3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in widths:
            for _ in range(2):
                layers += [
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ]
                cin = cout
            layers.append(nn.MaxPool2d(2))  # 28->14->7->3 (floor)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@torch.no_grad()
def fold_batchnorm(model: VGG7) -> nn.Sequential:
    """Return an eval-only copy of ``model`` with each BatchNorm folded into its conv.

    For ``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta`` with
    ``s = gamma / sqrt(var + eps)`` the folded conv has weights ``W * s`` (per
    output channel) and bias ``beta + (b - mean) * s``.  Dropout is dropped
    (it is the identity in eval mode).
    """
    model = model.eval()
    folded: list[nn.Module] = []
    mods = list(model.features)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn = mods[i + 1]
            assert isinstance(bn, nn.BatchNorm2d), "every conv must be followed by BN"
            conv = nn.Conv2d(
                m.in_channels, m.out_channels, m.kernel_size,
                stride=m.stride, padding=m.padding, bias=True,
            )
            w = m.weight.double()
            b = m.bias.double() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            conv.weight.copy_((w * scale[:, None, None, None]).float())
            conv.bias.copy_((bn.bias.double() + (b - bn.running_mean.double()) * scale).float())
            folded.append(conv)
            i += 2
        elif isinstance(m, nn.ReLU):
            folded.append(nn.ReLU())
            i += 1
        elif isinstance(m, nn.MaxPool2d):
            folded.append(nn.MaxPool2d(m.kernel_size, m.stride))
            i += 1
        else:
            raise TypeError(f"unexpected layer {m}")
    for m in model.classifier:
        if isinstance(m, nn.Dropout):
            continue
        if isinstance(m, nn.ReLU):
            folded.append(nn.ReLU())
        elif isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            lin.weight.copy_(m.weight)
            lin.bias.copy_(m.bias)
            folded.append(lin)
        else:
            folded.append(m)
    return nn.Sequential(*folded).eval()


# --------------------------------------------------------------------------- train/eval
@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    preds = []
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(x[s : s + batch]).contiguous(memory_format=torch.channels_last)
        preds.append(model(xb).argmax(1).numpy())
    return np.concatenate(preds)


def train(model, train_x, train_y, test_x, test_y, args) -> list[dict]:
    gen = torch.Generator().manual_seed(args.seed)
    xs = torch.from_numpy(train_x)
    ys = torch.from_numpy(train_y.astype(np.int64))
    n = len(xs)
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.2, div_factor=10.0, final_div_factor=100.0,
    )
    history = []
    t_start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct = 0.0, 0
        for s in range(0, n, args.batch_size):
            idx = perm[s : s + args.batch_size]
            xb = augment(xs[idx], gen).contiguous(memory_format=torch.channels_last)
            yb = ys[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += int((logits.argmax(1) == yb).sum())
        test_acc = float((torch_predict(model, test_x) == test_y).mean())
        rec = {
            "epoch": epoch,
            "train_loss": round(tot_loss / n, 5),
            "train_acc": round(tot_correct / n, 5),
            "test_acc": round(test_acc, 5),
            "lr_end": round(sched.get_last_lr()[0], 7),
            "epoch_s": round(time.time() - t0, 1),
        }
        history.append(rec)
        print(
            f"epoch {epoch:2d}/{args.epochs}  loss {rec['train_loss']:.4f}  "
            f"train_acc {rec['train_acc']:.4f}  test_acc {test_acc:.4f}  "
            f"({rec['epoch_s']:.0f}s, total {time.time() - t_start:.0f}s)",
            flush=True,
        )
    return history


# --------------------------------------------------------------------------- export
def export_onnx(folded: nn.Module, path: Path) -> None:
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        folded, (dummy,), str(path),
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, do_constant_folding=True, dynamo=False,
    )
    # Re-save so all weights are embedded initializers (no external data) and
    # check the graph against the contract.
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = sorted({n.op_type for n in m.graph.node})
    if "BatchNormalization" in ops or not set(ops) <= ALLOWED_OPS:
        raise RuntimeError(f"unexpected ONNX ops after BN folding: {ops}")
    if [i.name for i in m.graph.input] != ["input"] or [o.name for o in m.graph.output] != ["logits"]:
        raise RuntimeError("unexpected ONNX input/output names")
    onnx.save_model(m, str(path), save_as_external_data=False)


def onnx_predict(path: Path, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    preds = []
    for s in range(0, len(x), batch):
        preds.append(sess.run(["logits"], {"input": x[s : s + batch]})[0].argmax(1))
    return np.concatenate(preds)


def stratified_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices: ``per_class`` images of each class, drawn with a seeded RNG."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(len(CLASS_NAMES))
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with the idx .gz files")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where to write the artefacts")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-seed", type=int, default=2024, help="seed of the 1k test sample")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (smoke tests)")
    args = p.parse_args(argv)

    t_script = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    train_u8, train_y, test_u8, test_y = load_fashion_mnist(args.data)
    if args.train_limit:
        train_u8, train_y = train_u8[: args.train_limit], train_y[: args.train_limit]
    print(f"Fashion-MNIST: train {train_u8.shape}, test {test_u8.shape} from {args.data}", flush=True)
    train_x, test_x = to_input(train_u8), to_input(test_u8)

    model = VGG7(dropout=args.dropout).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} trainable parameters; torch {torch.__version__}, {args.threads} threads", flush=True)

    t_train = time.time()
    history = train(model, train_x, train_y, test_x, test_y, args)
    train_s = time.time() - t_train
    model.eval()
    torch_acc = float((torch_predict(model, test_x) == test_y).mean())

    # Fold BN and check the folded network is numerically the same function.
    folded = fold_batchnorm(model).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        xb = torch.from_numpy(test_x[:500])
        ref = model(xb.contiguous(memory_format=torch.channels_last))
        got = folded(xb)
    fold_err = float((ref - got).abs().max())
    print(f"torch test accuracy {torch_acc:.4f}; BN-fold max |logit diff| {fold_err:.2e}", flush=True)
    if fold_err > 1e-3:
        raise RuntimeError(f"BN folding changed the logits by {fold_err}")

    onnx_path = args.out_dir / ONNX_NAME
    export_onnx(folded, onnx_path)
    m = onnx.load(str(onnx_path))
    ops = sorted({n.op_type for n in m.graph.node})
    op_counts = {op: sum(n.op_type == op for n in m.graph.node) for op in ops}

    def _shape(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    io = {
        "input": {"name": m.graph.input[0].name, "shape": _shape(m.graph.input[0]), "dtype": "float32"},
        "output": {"name": m.graph.output[0].name, "shape": _shape(m.graph.output[0]), "dtype": "float32"},
    }
    size = onnx_path.stat().st_size
    print(f"ONNX written: {onnx_path} ({size} bytes); ops {op_counts}; io {io}", flush=True)
    if size >= 5 * 1024 * 1024:
        raise RuntimeError("ONNX file is not < 5 MB")

    # onnxruntime evaluation: full test set and the stratified 1k sample.
    ort_pred = onnx_predict(onnx_path, test_x)
    ort_acc = float((ort_pred == test_y).mean())
    agree = float((ort_pred == torch_predict(model, test_x)).mean())
    idx = stratified_sample(test_y, per_class=100, seed=args.sample_seed)
    sample_acc = float((ort_pred[idx] == test_y[idx]).mean())
    sample_path = args.out_dir / SAMPLE_NAME
    np.savez_compressed(
        sample_path,
        images=test_u8[idx].astype(np.uint8),
        labels=test_y[idx].astype(np.uint8),
        indices=idx,
    )
    # Recompute the sample accuracy from the saved file as a round-trip check.
    with np.load(sample_path) as z:
        sample_acc_rt = float((onnx_predict(onnx_path, to_input(z["images"])) == z["labels"]).mean())
    assert abs(sample_acc_rt - sample_acc) < 1e-12, (sample_acc, sample_acc_rt)
    print(
        f"onnxruntime accuracy: 10k {ort_acc:.4f} (agrees with torch on {agree:.4f}); "
        f"1k sample {sample_acc:.4f}",
        flush=True,
    )

    meta = {
        "model": "fmnist_vgg7",
        "file": ONNX_NAME,
        "sha256": sha256(onnx_path),
        "file_size_bytes": size,
        "float_accuracy_10k": ort_acc,
        "torch_accuracy_10k": torch_acc,
        "sample_accuracy_1k": sample_acc,
        "onnxruntime_torch_prediction_agreement_10k": agree,
        "bn_fold_max_abs_logit_diff": fold_err,
        "architecture": {
            "description": (
                "Narrow VGG-7 for 28x28 grayscale: conv3x3(32)-BN-ReLU, conv3x3(32)-BN-ReLU, maxpool2, "
                "conv3x3(64)-BN-ReLU, conv3x3(64)-BN-ReLU, maxpool2, conv3x3(128)-BN-ReLU, "
                "conv3x3(128)-BN-ReLU, maxpool2 (7->3), flatten, dense256-ReLU, dense10 (logits). "
                "Convs use padding 1. BatchNorm is folded into the conv weights/biases in the ONNX file; "
                "dropout (training only) is removed."
            ),
            "reference": "CIFAR VGG-7 (2xconv128, pool, 2xconv256, pool, 2xconv512, pool, dense1024, dense10) scaled to 1/4 width",
            "conv_widths": list(CONV_WIDTHS),
            "hidden_units": HIDDEN,
            "num_parameters_training": n_params,
            "num_parameters_onnx": int(sum(np.prod(t.dims) for t in m.graph.initializer)),
            "onnx_op_types": ops,
            "onnx_op_counts": op_counts,
            "opset": 17,
        },
        "io": io,
        "preprocessing": "pixel uint8 / 255.0 -> float32 in [0, 1], shape (batch, 1, 28, 28); no mean/std normalisation",
        "training": {
            "epochs": args.epochs,
            "seed": args.seed,
            "optimizer": "AdamW",
            "lr_schedule": "OneCycleLR (pct_start 0.2, div_factor 10, final_div_factor 100), stepped per batch",
            "peak_lr": args.lr,
            "weight_decay": args.weight_decay,
            "batch_size": args.batch_size,
            "label_smoothing": args.label_smoothing,
            "dropout": args.dropout,
            "augmentation": "random crop 28x28 from zero-padded (pad 2) image + random horizontal flip (p=0.5)",
            "train_images": int(len(train_u8)),
            "threads": args.threads,
            "history": history,
        },
        "epochs": args.epochs,
        "seed": args.seed,
        "train_wall_time_s": round(train_s, 1),
        "wall_time_s": round(time.time() - t_script, 1),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "python_version": platform.python_version(),
        "data_source": {
            "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), original idx files",
            "debian_package": "dataset-fashion-mnist",
            "path": str(args.data),
            "train": "train-images-idx3-ubyte.gz / train-labels-idx1-ubyte.gz (60000)",
            "test": "t10k-images-idx3-ubyte.gz / t10k-labels-idx1-ubyte.gz (10000)",
        },
        "test_sample": {
            "file": SAMPLE_NAME,
            "size": int(len(idx)),
            "per_class": 100,
            "seed": args.sample_seed,
            "method": "numpy default_rng(seed); 100 test indices per class drawn without replacement, sorted",
            "sha256": sha256(sample_path),
        },
        "class_names": CLASS_NAMES,
        "generated_by": "scripts/train_fmnist.py",
    }
    meta["wall_time_s"] = round(time.time() - t_script, 1)
    (args.out_dir / JSON_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out_dir / JSON_NAME}; total wall time {meta['wall_time_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
