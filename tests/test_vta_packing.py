"""VTA data layouts: pack/unpack against explicit loop references, zero padding, round trips,
for the 1x16 and the batched 4x8 configurations."""

import numpy as np
import pytest

from mctvm.errors import ShapeError
from mctvm.targets.vta.config import load_config
from mctvm.targets.vta.packing import (
    VTALayoutError, pack_acc, pack_activation, pack_bias, pack_blocked, pack_out, pack_weight,
    packed_acc_shape, packed_activation_shape, packed_bias_shape, packed_weight_shape,
    unpack_acc, unpack_activation, unpack_bias, unpack_out, unpack_weight,
)

CONFIGS = ["sim", "sim_4x8"]
ACT_SHAPES = [(1, 3, 5, 7), (2, 20, 3, 3), (5, 33, 4, 2), (4, 16, 2, 2), (1, 1, 1, 1)]
WGT_SHAPES = [(3, 5, 3, 3), (20, 33, 1, 1), (16, 16, 2, 3), (17, 8, 3, 1), (1, 1, 1, 1)]


def ceil_div(a, b):
    return -(-a // b)


def ref_pack_activation(x, batch, block):
    """[N/b][C/c][H][W][b][c] by explicit loops; out-of-range lanes stay zero."""
    n, c, h, w = x.shape
    out = np.zeros((ceil_div(n, batch), ceil_div(c, block), h, w, batch, block), x.dtype)
    for ni in range(n):
        for ci in range(c):
            for hi in range(h):
                for wi in range(w):
                    out[ni // batch, ci // block, hi, wi, ni % batch, ci % block] = \
                        x[ni, ci, hi, wi]
    return out


def ref_pack_weight(wt, block_out, block_in):
    """[O/bo][I/bi][KH][KW][bo][bi] by explicit loops."""
    o, i, kh, kw = wt.shape
    out = np.zeros((ceil_div(o, block_out), ceil_div(i, block_in), kh, kw, block_out, block_in),
                   wt.dtype)
    for oi in range(o):
        for ii in range(i):
            for y in range(kh):
                for x in range(kw):
                    out[oi // block_out, ii // block_in, y, x, oi % block_out, ii % block_in] = \
                        wt[oi, ii, y, x]
    return out


def rand_int8(rng, shape):
    # never zero, so the padding is the only zeros in a packed tensor
    x = rng.integers(1, 128, size=shape, dtype=np.int16) * rng.choice([-1, 1], size=shape)
    return x.astype(np.int8)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("shape", ACT_SHAPES)
def test_activation_layout_and_round_trip(name, shape, rng):
    cfg = load_config(name)
    x = rand_int8(rng, shape)
    packed = pack_activation(x, cfg)
    ref = ref_pack_activation(x, cfg.BATCH, cfg.BLOCK_IN)
    assert packed.shape == ref.shape == packed_activation_shape(shape, cfg)
    assert packed.dtype == np.int8 and packed.flags.c_contiguous
    np.testing.assert_array_equal(packed, ref)
    # padding is zero, and only the padding
    n, c = shape[:2]
    assert np.count_nonzero(packed) == x.size
    assert packed.size == ceil_div(n, cfg.BATCH) * cfg.BATCH * ceil_div(c, cfg.BLOCK_IN) \
        * cfg.BLOCK_IN * shape[2] * shape[3]
    back = unpack_activation(packed, shape, cfg)
    assert back.shape == shape
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("shape", WGT_SHAPES)
def test_weight_layout_and_round_trip(name, shape, rng):
    cfg = load_config(name)
    w = rand_int8(rng, shape)
    packed = pack_weight(w, cfg)
    ref = ref_pack_weight(w, cfg.BLOCK_OUT, cfg.BLOCK_IN)
    assert packed.shape == ref.shape == packed_weight_shape(shape, cfg)
    np.testing.assert_array_equal(packed, ref)
    assert np.count_nonzero(packed) == w.size
    np.testing.assert_array_equal(unpack_weight(packed, shape, cfg), w)


def test_named_layouts():
    # 1x16: NCHW1n16c and OIHW16o16i; 4x8: NCHW4n8c and OIHW8o8i
    assert packed_activation_shape((1, 64, 56, 56), "sim") == (1, 4, 56, 56, 1, 16)
    assert packed_weight_shape((128, 64, 3, 3), "sim") == (8, 4, 3, 3, 16, 16)
    assert packed_activation_shape((8, 64, 56, 56), "sim_4x8") == (2, 8, 56, 56, 4, 8)
    assert packed_weight_shape((128, 64, 3, 3), "sim_4x8") == (16, 8, 3, 3, 8, 8)
    # output channels padded to a whole block
    assert packed_weight_shape((10, 3, 3, 3), "sim") == (1, 1, 3, 3, 16, 16)


@pytest.mark.parametrize("name", CONFIGS)
def test_dram_image_elements(name, rng):
    """The packed array's bytes are VTA elements: inp [BATCH][BLOCK_IN], wgt
    [BLOCK_OUT][BLOCK_IN], each INP_ELEM_BYTES / WGT_ELEM_BYTES long, lane 0 first."""
    cfg = load_config(name)
    x = rand_int8(rng, (5, 20, 2, 3))
    p = pack_activation(x, cfg)
    elems = np.frombuffer(p.tobytes(), np.int8).reshape(-1, cfg.INP_ELEM_BYTES)
    assert elems.shape[0] == np.prod(p.shape[:-2])
    # element (n_o, c_o, h, w) at index ((n_o*Co + c_o)*H + h)*W + w
    n_o, c_o, h, w = 1, 1, 1, 2
    co, hh, ww = p.shape[1], p.shape[2], p.shape[3]
    e = elems[((n_o * co + c_o) * hh + h) * ww + w].reshape(cfg.BATCH, cfg.BLOCK_IN)
    for b in range(cfg.BATCH):
        for c in range(cfg.BLOCK_IN):
            n_, c_ = n_o * cfg.BATCH + b, c_o * cfg.BLOCK_IN + c
            assert e[b, c] == (x[n_, c_, h, w] if n_ < 5 and c_ < 20 else 0)
    wt = rand_int8(rng, (20, 20, 3, 3))
    q = pack_weight(wt, cfg)
    welems = np.frombuffer(q.tobytes(), np.int8).reshape(-1, cfg.WGT_ELEM_BYTES)
    e = welems[((1 * q.shape[1] + 0) * 3 + 2) * 3 + 1].reshape(cfg.BLOCK_OUT, cfg.BLOCK_IN)
    for oc in range(cfg.BLOCK_OUT):
        for ic in range(cfg.BLOCK_IN):
            o_, i_ = cfg.BLOCK_OUT + oc, ic
            assert e[oc, ic] == (wt[o_, i_, 2, 1] if o_ < 20 else 0)


@pytest.mark.parametrize("name", CONFIGS)
def test_dense_and_other_ranks(name, rng):
    cfg = load_config(name)
    x = rand_int8(rng, (3, 40))                        # NC (dense input)
    p = pack_activation(x, cfg)
    assert p.shape == (ceil_div(3, cfg.BATCH), ceil_div(40, cfg.BLOCK_IN), cfg.BATCH,
                       cfg.BLOCK_IN)
    for n in range(3):
        for c in range(40):
            assert p[n // cfg.BATCH, c // cfg.BLOCK_IN, n % cfg.BATCH, c % cfg.BLOCK_IN] == x[n, c]
    np.testing.assert_array_equal(unpack_activation(p, x.shape, cfg), x)
    w = rand_int8(rng, (10, 40))                       # OI (dense weight)
    np.testing.assert_array_equal(unpack_weight(pack_weight(w, cfg), w.shape, cfg), w)
    v = rand_int8(rng, (2, 9, 4))                      # NCW (conv1d)
    np.testing.assert_array_equal(unpack_activation(pack_activation(v, cfg), v.shape, cfg), v)


@pytest.mark.parametrize("name", CONFIGS)
def test_acc_and_bias_layouts(name, rng):
    cfg = load_config(name)
    y = rng.integers(-2**31, 2**31, size=(3, 21, 2, 2), dtype=np.int64).astype(np.int32)
    p = pack_acc(y, cfg)
    assert p.shape == packed_acc_shape(y.shape, cfg)
    assert p.shape[-2:] == (cfg.BATCH, cfg.BLOCK_OUT) and p.dtype == np.int32
    np.testing.assert_array_equal(p, ref_pack_activation(y, cfg.BATCH, cfg.BLOCK_OUT))
    assert p[0, 0, 0, 0].nbytes == cfg.ACC_ELEM_BYTES
    np.testing.assert_array_equal(unpack_acc(p, y.shape, cfg), y)
    assert pack_out is pack_acc and unpack_out is unpack_acc
    o8 = pack_out(y.astype(np.int8), cfg)
    assert o8[0, 0, 0, 0].nbytes == cfg.OUT_ELEM_BYTES

    bias = rng.integers(-1000, 1000, size=21).astype(np.int32)
    pb = pack_bias(bias, cfg)
    assert pb.shape == packed_bias_shape(21, cfg) == (ceil_div(21, cfg.BLOCK_OUT), cfg.BATCH,
                                                      cfg.BLOCK_OUT)
    for o in range(pb.shape[0] * cfg.BLOCK_OUT):
        for b in range(cfg.BATCH):
            assert pb[o // cfg.BLOCK_OUT, b, o % cfg.BLOCK_OUT] == (bias[o] if o < 21 else 0)
    assert pb[0].nbytes == cfg.ACC_ELEM_BYTES
    np.testing.assert_array_equal(unpack_bias(pb, 21, cfg), bias)
    np.testing.assert_array_equal(pack_bias(bias.reshape(21, 1, 1), cfg), pb)


def test_layout_errors():
    cfg = load_config("sim")
    with pytest.raises(VTALayoutError, match="at least two axes"):
        pack_activation(np.zeros(5, np.int8), cfg)
    p = pack_activation(np.zeros((1, 20, 3, 3), np.int8), cfg)
    with pytest.raises(VTALayoutError, match=r"blocks of \(4, 8\)"):
        unpack_activation(p, (1, 20, 3, 3), "sim_4x8")
    with pytest.raises(VTALayoutError, match="not the 3 that 40 needs"):
        unpack_activation(p, (1, 40, 3, 3), cfg)
    with pytest.raises(VTALayoutError, match="spatial axes"):
        unpack_activation(p, (1, 20, 3, 4), cfg)
    with pytest.raises(ShapeError, match="must have 4 axes"):
        unpack_weight(pack_weight(np.zeros((16, 16, 1, 1), np.int8), cfg), (16, 16), cfg)
    with pytest.raises(VTALayoutError, match="one value per output channel"):
        pack_bias(np.zeros((4, 4)), cfg)
    with pytest.raises(VTALayoutError, match="packed bias"):
        unpack_bias(pack_bias(np.zeros(20), cfg), 40, cfg)
    # the generic blocking underneath: (A, B, *S) -> (A/a, B/b, *S, a, b)
    x = np.arange(2 * 6 * 5).reshape(2, 6, 5)
    assert pack_blocked(x, 2, 3).shape == (1, 2, 5, 2, 3)
    assert pack_blocked(x, 2, 3)[0, 1, 4, 1, 2] == x[1, 5, 4]
