"""Data layouts VTA computes on, and the moves between them and NCHW/OIHW.

    activations  NCHW -> NCHW{b}n{i}c  = [N/BATCH][C/BLOCK_IN][H][W][BATCH][BLOCK_IN]
    weights      OIHW -> OIHW{o}o{i}i  = [O/BLOCK_OUT][I/BLOCK_IN][KH][KW][BLOCK_OUT][BLOCK_IN]
    acc / out    NCHW -> NCHW{b}n{o}c  = [N/BATCH][C/BLOCK_OUT][H][W][BATCH][BLOCK_OUT]
    bias         (O,)  -> [O/BLOCK_OUT][BATCH][BLOCK_OUT]   (one acc element per block,
                                                             the same row for every batch lane)

N and C (O and I) are zero-padded to whole blocks; unpacking crops the padding away. The two
innermost axes are one element of the VTA memory ([BATCH][BLOCK_IN] for inp, [BLOCK_OUT]
[BLOCK_IN] for wgt, [BATCH][BLOCK_OUT] for acc/out, lane 0 in the least significant bits), so
a packed array's C-order bytes are the DRAM image LOAD/STORE address in elements. Any number
of spatial axes (0 for dense layers, 2 for conv2d) rides along between the block axes.

1x16 configuration: NCHW1n16c and OIHW16o16i; batched 4x8: NCHW4n8c and OIHW8o8i.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...errors import ShapeError
from .config import VTAConfig, load_config

__all__ = [
    "VTALayoutError", "ceil_div", "pad_to",
    "pack_blocked", "unpack_blocked",
    "pack_activation", "unpack_activation", "packed_activation_shape",
    "pack_weight", "unpack_weight", "packed_weight_shape",
    "pack_acc", "unpack_acc", "packed_acc_shape", "pack_out", "unpack_out",
    "pack_bias", "unpack_bias", "packed_bias_shape",
]


class VTALayoutError(ShapeError):
    """A tensor does not have the shape a VTA layout needs (says which and why)."""


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def pad_to(n: int, block: int) -> int:
    """n rounded up to a whole number of blocks."""
    return ceil_div(n, block) * block


# ---------------------------------------------------------------------- generic blocking
def pack_blocked(x: np.ndarray, block0: int, block1: int) -> np.ndarray:
    """(A, B, *S) -> (A/block0, B/block1, *S, block0, block1), zero-padding A and B."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise VTALayoutError(f"cannot block a tensor of shape {x.shape}: it needs at least two "
                             "axes (batch/out-channels and channels)")
    a, b, rest = x.shape[0], x.shape[1], x.shape[2:]
    ao, bo = ceil_div(a, block0), ceil_div(b, block1)
    if (ao * block0, bo * block1) != (a, b):
        padded = np.zeros((ao * block0, bo * block1) + rest, dtype=x.dtype)
        padded[:a, :b] = x
        x = padded
    k = len(rest)
    x = x.reshape((ao, block0, bo, block1) + rest)
    # (ao, block0, bo, block1, *S) -> (ao, bo, *S, block0, block1)
    axes = (0, 2) + tuple(range(4, 4 + k)) + (1, 3)
    return np.ascontiguousarray(x.transpose(axes))


def unpack_blocked(packed: np.ndarray, a: int, b: int) -> np.ndarray:
    """(A/block0, B/block1, *S, block0, block1) -> (A, B, *S), cropping the padding."""
    p = np.asarray(packed)
    if p.ndim < 4:
        raise VTALayoutError(f"a blocked tensor has at least 4 axes, got shape {p.shape}")
    ao, bo, rest, block0, block1 = p.shape[0], p.shape[1], p.shape[2:-2], p.shape[-2], p.shape[-1]
    if not (0 <= a <= ao * block0 and ao == ceil_div(a, block0)):
        raise VTALayoutError(f"packed shape {p.shape} holds {ao} blocks of {block0} on axis 0, "
                             f"not the {ceil_div(a, block0)} that {a} needs")
    if not (0 <= b <= bo * block1 and bo == ceil_div(b, block1)):
        raise VTALayoutError(f"packed shape {p.shape} holds {bo} blocks of {block1} on axis 1, "
                             f"not the {ceil_div(b, block1)} that {b} needs")
    k = len(rest)
    # (ao, bo, *S, block0, block1) -> (ao, block0, bo, block1, *S)
    axes = (0, 2 + k, 1, 3 + k) + tuple(range(2, 2 + k))
    x = p.transpose(axes).reshape((ao * block0, bo * block1) + rest)
    return np.ascontiguousarray(x[:a, :b])


def _check_block(packed: np.ndarray, shape0: int, shape1: int, what: str) -> None:
    p = np.asarray(packed)
    if p.ndim < 4 or p.shape[-2:] != (shape0, shape1):
        raise VTALayoutError(f"packed {what} must end in blocks of ({shape0}, {shape1}) for this "
                             f"VTA configuration, got shape {p.shape}")


def _check_original(packed: np.ndarray, shape: Sequence[int], what: str) -> tuple:
    shape = tuple(int(s) for s in shape)
    p = np.asarray(packed)
    if len(shape) != p.ndim - 2:
        raise VTALayoutError(f"the original {what} shape {shape} must have {p.ndim - 2} axes "
                             f"to match packed shape {p.shape}")
    if shape[2:] != p.shape[2:-2]:
        raise VTALayoutError(f"the original {what} shape {shape} has spatial axes {shape[2:]}, "
                             f"the packed shape {p.shape} has {p.shape[2:-2]}")
    return shape


# ---------------------------------------------------------------------- activations (inp)
def packed_activation_shape(shape: Sequence[int], cfg: Optional[VTAConfig] = None) -> tuple:
    """(N, C, *S) -> (ceil(N/BATCH), ceil(C/BLOCK_IN), *S, BATCH, BLOCK_IN)."""
    cfg = load_config(cfg)
    n, c, *rest = shape
    return (ceil_div(n, cfg.BATCH), ceil_div(c, cfg.BLOCK_IN), *rest, cfg.BATCH, cfg.BLOCK_IN)


def pack_activation(x: np.ndarray, cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """NCHW (or NC, or N C *spatial) -> NCHW{BATCH}n{BLOCK_IN}c, zero-padded."""
    cfg = load_config(cfg)
    return pack_blocked(x, cfg.BATCH, cfg.BLOCK_IN)


def unpack_activation(packed: np.ndarray, shape: Sequence[int],
                      cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """NCHW{BATCH}n{BLOCK_IN}c -> NCHW of the original `shape`, padding cropped."""
    cfg = load_config(cfg)
    _check_block(packed, cfg.BATCH, cfg.BLOCK_IN, "activation")
    shape = _check_original(packed, shape, "activation")
    return unpack_blocked(packed, shape[0], shape[1])


# ---------------------------------------------------------------------- weights (wgt)
def packed_weight_shape(shape: Sequence[int], cfg: Optional[VTAConfig] = None) -> tuple:
    """(O, I, *K) -> (ceil(O/BLOCK_OUT), ceil(I/BLOCK_IN), *K, BLOCK_OUT, BLOCK_IN)."""
    cfg = load_config(cfg)
    o, i, *rest = shape
    return (ceil_div(o, cfg.BLOCK_OUT), ceil_div(i, cfg.BLOCK_IN), *rest,
            cfg.BLOCK_OUT, cfg.BLOCK_IN)


def pack_weight(w: np.ndarray, cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """OIHW (or OI) -> OIHW{BLOCK_OUT}o{BLOCK_IN}i, zero-padded."""
    cfg = load_config(cfg)
    return pack_blocked(w, cfg.BLOCK_OUT, cfg.BLOCK_IN)


def unpack_weight(packed: np.ndarray, shape: Sequence[int],
                  cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """OIHW{BLOCK_OUT}o{BLOCK_IN}i -> OIHW of the original `shape`, padding cropped."""
    cfg = load_config(cfg)
    _check_block(packed, cfg.BLOCK_OUT, cfg.BLOCK_IN, "weight")
    shape = _check_original(packed, shape, "weight")
    return unpack_blocked(packed, shape[0], shape[1])


# ---------------------------------------------------------------------- accumulator / output
def packed_acc_shape(shape: Sequence[int], cfg: Optional[VTAConfig] = None) -> tuple:
    """(N, C, *S) -> (ceil(N/BATCH), ceil(C/BLOCK_OUT), *S, BATCH, BLOCK_OUT)."""
    cfg = load_config(cfg)
    n, c, *rest = shape
    return (ceil_div(n, cfg.BATCH), ceil_div(c, cfg.BLOCK_OUT), *rest, cfg.BATCH, cfg.BLOCK_OUT)


def pack_acc(x: np.ndarray, cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """NCHW -> NCHW{BATCH}n{BLOCK_OUT}c: the acc (int32) and out (int8) element layout."""
    cfg = load_config(cfg)
    return pack_blocked(x, cfg.BATCH, cfg.BLOCK_OUT)


def unpack_acc(packed: np.ndarray, shape: Sequence[int],
               cfg: Optional[VTAConfig] = None) -> np.ndarray:
    cfg = load_config(cfg)
    _check_block(packed, cfg.BATCH, cfg.BLOCK_OUT, "accumulator/output")
    shape = _check_original(packed, shape, "accumulator/output")
    return unpack_blocked(packed, shape[0], shape[1])


pack_out = pack_acc
unpack_out = unpack_acc


# ---------------------------------------------------------------------- bias (acc elements)
def packed_bias_shape(channels: int, cfg: Optional[VTAConfig] = None) -> tuple:
    cfg = load_config(cfg)
    return (ceil_div(channels, cfg.BLOCK_OUT), cfg.BATCH, cfg.BLOCK_OUT)


def pack_bias(bias: np.ndarray, cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """(O,) -> (O/BLOCK_OUT, BATCH, BLOCK_OUT): one accumulator element per output block with
    the bias repeated on every batch row (as TVM's graph_pack broadcast it), zero-padded."""
    cfg = load_config(cfg)
    b = np.asarray(bias)
    if b.ndim > 1 and all(d == 1 for d in b.shape[1:]):
        b = b.reshape(b.shape[0])           # (O, 1, 1) as ONNX/Relay biases come
    if b.ndim != 1:
        raise VTALayoutError(f"a bias is one value per output channel, got shape {np.shape(bias)}")
    o = b.shape[0]
    out = np.zeros(packed_bias_shape(o, cfg), dtype=b.dtype)
    padded = np.zeros(pad_to(o, cfg.BLOCK_OUT), dtype=b.dtype)
    padded[:o] = b
    out[:] = padded.reshape(-1, 1, cfg.BLOCK_OUT)
    return out


def unpack_bias(packed: np.ndarray, channels: int, cfg: Optional[VTAConfig] = None) -> np.ndarray:
    """(O/BLOCK_OUT, BATCH, BLOCK_OUT) -> (O,), from batch row 0, padding cropped."""
    cfg = load_config(cfg)
    p = np.asarray(packed)
    if p.shape != packed_bias_shape(channels, cfg):
        raise VTALayoutError(f"a packed bias of {channels} channels has shape "
                             f"{packed_bias_shape(channels, cfg)}, got {p.shape}")
    return np.ascontiguousarray(p[:, 0, :].reshape(-1)[:channels])
