"""VTA lowering: conv2d/dense layers of many shapes, simulated bit for bit against the numpy
integer reference on the pynq (1x16) and 4x8 configurations; sparsity; errors; cycles."""

import numpy as np
import pytest

from mctvm.targets.vta import load_config
from mctvm.targets.vta.lowering import (
    Tiling, VTALoweringError, lower_conv2d, lower_dense, read_output, reference_conv2d,
    reference_dense, run_layer,
)
from mctvm.targets.vta.program import VTAProgram
from mctvm.targets.vta.simulator import simulate


def rand_i8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


CONV_CASES = [
    # N, C, H, W, O, K, stride, padding, groups
    (1, 16, 8, 8, 16, 3, 1, 1, 1),
    (1, 20, 9, 7, 33, 3, 2, 1, 1),        # channels not multiples of 16, stride 2
    (1, 3, 11, 11, 8, 3, 1, 0, 1),        # stem-like: 3 input channels
    (1, 48, 6, 5, 40, 1, 1, 0, 1),        # 1x1
    (1, 40, 9, 9, 24, 1, 2, 0, 1),        # 1x1 stride 2
    (2, 24, 7, 7, 20, 3, 1, (1, 2, 0, 1), 1),   # asymmetric padding, batch 2
    (1, 32, 10, 10, 32, 3, 1, 1, 2),      # groups in whole blocks
    (1, 16, 5, 5, 16, 5, 2, 2, 1),        # 5x5 stride 2
    (1, 16, 4, 4, 16, 1, 1, 3, 1),        # padding larger than the kernel: all-pad tiles
]


@pytest.mark.parametrize("cfg", ["pynq", "sim_4x8"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_bit_exact(cfg, case, rng):
    N, C, H, W, O, K, s, p, g = case
    cfg = load_config(cfg)
    if g > 1 and ((C // g) % cfg.BLOCK_IN or (O // g) % cfg.BLOCK_OUT):
        pytest.skip("group not in whole blocks for this config")
    x = rand_i8(rng, (N, C, H, W))
    w = rand_i8(rng, (O, C // g, K, K))
    b = rng.integers(-20000, 20000, O).astype(np.int32)
    relu = bool(rng.integers(2))
    prog = lower_conv2d(x, w, b, stride=s, padding=p, groups=g, shift=7, relu=relu, cfg=cfg)
    y, res = run_layer(prog)
    ref = reference_conv2d(x, w, b, stride=s, padding=p, groups=g, shift=7, relu=relu)
    np.testing.assert_array_equal(y, ref)
    assert all(v == 0 for v in res.tokens_left.values())
    assert res.stats.gemm_uops * cfg.BATCH * cfg.BLOCK_IN * cfg.BLOCK_OUT >= prog.meta["macs"]


@pytest.mark.parametrize("cfg", ["pynq", "sim_4x8"])
@pytest.mark.parametrize("N, C, O", [(1, 100, 40), (3, 64, 16), (1, 16, 16), (5, 33, 70)])
def test_dense_bit_exact(cfg, N, C, O, rng):
    x, w = rand_i8(rng, (N, C)), rand_i8(rng, (O, C))
    b = rng.integers(-1000, 1000, O).astype(np.int32)
    prog = lower_dense(x, w, b, shift=5, cfg=cfg)
    y, _ = run_layer(prog)
    np.testing.assert_array_equal(y, reference_dense(x, w, b, shift=5))


@pytest.mark.parametrize("vt", [1, 2])
def test_forced_small_tiles_and_thread_counts(vt, rng):
    """Many tiles, partial reduction steps, edge tiles in every dimension, 1-2 output blocks
    per tile (replica accumulators for the uop hazard rule)."""
    x = rand_i8(rng, (1, 50, 9, 11))
    w = rand_i8(rng, (37, 50, 3, 3))
    for tiling in (Tiling(1, 1, 2, 3), Tiling(2, 2, 4, 5), Tiling(3, 4, 9, 11)):
        prog = lower_conv2d(x, w, None, padding=1, shift=9, virtual_threads=vt,
                            tiling=tiling, cfg="pynq")
        y, res = run_layer(prog)
        np.testing.assert_array_equal(y, reference_conv2d(x, w, padding=1, shift=9))


def test_random_layers(rng):
    """Random shapes, strides, paddings, shifts, block sparsity and forced tilings."""
    for it in range(24):
        cfg = ("pynq", "sim_4x8")[it % 2]
        N, C, O = (int(v) for v in rng.integers(1, (3, 70, 70)))
        K = int(rng.choice([1, 2, 3, 5]))
        s = int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(K, 12, 2))
        p = tuple(int(v) for v in rng.integers(0, 3, 4))
        x, w = rand_i8(rng, (N, C, H, W)), rand_i8(rng, (O, C, K, K))
        w[rng.random(w.shape[:2]) < 0.3] = 0
        b = rng.integers(-30000, 30000, O).astype(np.int32) if it % 3 else None
        sh, vt, relu = int(rng.integers(0, 16)), int(rng.integers(1, 3)), bool(it % 2)
        tiling = Tiling(*(int(v) for v in rng.integers(1, 5, 4))) if it % 4 == 0 else None
        prog = lower_conv2d(x, w, b, stride=s, padding=p, shift=sh, relu=relu, cfg=cfg,
                            virtual_threads=vt, tiling=tiling)
        y, _ = run_layer(prog)
        ref = reference_conv2d(x, w, b, stride=s, padding=p, shift=sh, relu=relu)
        np.testing.assert_array_equal(y, ref, err_msg=str((it, x.shape, w.shape, s, p)))


def test_oversized_tiling_is_refused(rng):
    with pytest.raises(VTALoweringError, match="inp elements per buffer"):
        lower_conv2d(rand_i8(rng, (1, 64, 40, 40)), rand_i8(rng, (16, 64, 3, 3)),
                     tiling=Tiling(1, 4, 40, 40), cfg="pynq")


def test_no_shift_no_bias_and_custom_clip(rng):
    x, w = rand_i8(rng, (1, 16, 4, 4)), rand_i8(rng, (16, 16, 1, 1))
    prog = lower_conv2d(x, w, clip=(-10, 20), cfg="pynq")
    y, _ = run_layer(prog)
    np.testing.assert_array_equal(y, reference_conv2d(x, w, clip=(-10, 20)))
    assert "bias" not in prog.dram.regions


def test_zero_blocks_are_skipped(rng):
    x = rand_i8(rng, (1, 64, 8, 8))
    w = rand_i8(rng, (64, 64, 3, 3))
    w[0:16, 16:48] = 0                     # 2 x 9 blocks of output block 0
    w[48:64, :, 1, 1] = 0                  # the centre tap of output block 3
    w[16:32] = 0                           # an entire output block
    dense = lower_conv2d(x, w, None, padding=1, shift=8, skip_zero_blocks=False, cfg="pynq")
    sparse = lower_conv2d(x, w, None, padding=1, shift=8, cfg="pynq")
    ref = reference_conv2d(x, w, padding=1, shift=8)
    yd, rd = run_layer(dense)
    ys, rs = run_layer(sparse)
    np.testing.assert_array_equal(yd, ref)
    np.testing.assert_array_equal(ys, ref)
    skipped = 2 * 9 + 4 + 4 * 9
    assert sparse.meta["blocks_skipped"] == skipped and dense.meta["blocks_skipped"] == 0
    assert sparse.meta["wgt_bytes_skipped"] == skipped * 256
    assert rd.stats.gemm_uops - rs.stats.gemm_uops == skipped * 64
    assert sparse.meta["gemm_uops_skipped"] == skipped * 64
    assert rs.stats.bytes_loaded["wgt"] < rd.stats.bytes_loaded["wgt"]
    assert rs.stats.total_cycles < rd.stats.total_cycles


def test_all_zero_weights(rng):
    x = rand_i8(rng, (1, 16, 3, 3))
    w = np.zeros((16, 16, 1, 1), np.int8)
    b = np.arange(16, dtype=np.int32) * 100
    prog = lower_conv2d(x, w, b, shift=2, cfg="pynq")
    y, res = run_layer(prog)
    np.testing.assert_array_equal(y, reference_conv2d(x, w, b, shift=2))
    assert res.stats.gemm_uops == 0 and res.stats.bytes_loaded["wgt"] == 0


def test_program_file_round_trip(tmp_path, rng):
    x, w = rand_i8(rng, (1, 16, 5, 5)), rand_i8(rng, (16, 16, 3, 3))
    prog = lower_conv2d(x, w, None, padding=1, shift=8, cfg="pynq")
    path = tmp_path / "layer.npz"
    prog.save(path)
    again = VTAProgram.load(path)
    assert again.insns == prog.insns and again.cfg == prog.cfg
    y = read_output(again, simulate(again).dram)
    np.testing.assert_array_equal(y, reference_conv2d(x, w, padding=1, shift=8))


# ---------------------------------------------------------------------- errors
def test_int16_operands_are_rejected(rng):
    x = rng.integers(-300, 300, (1, 16, 4, 4)).astype(np.int16)
    w = rand_i8(rng, (16, 16, 1, 1))
    with pytest.raises(VTALoweringError, match=r"x has dtype int16 with values in .*int8"):
        lower_conv2d(x, w, cfg="pynq")
    with pytest.raises(VTALoweringError, match="w has dtype float32"):
        lower_conv2d(rand_i8(rng, (1, 16, 4, 4)), w.astype(np.float32), cfg="pynq")


def test_uop_buffer_overflow_is_a_clear_error(rng):
    cfg = load_config("pynq").replace(LOG_UOP_BUFF_SIZE=10)     # 256 uops
    x, w = rand_i8(rng, (1, 16, 16, 16)), rand_i8(rng, (16, 16, 13, 13))
    with pytest.raises(VTALoweringError, match="overflow the uop buffer"):
        lower_conv2d(x, w, cfg=cfg)


def test_bad_groups_and_padding(rng):
    with pytest.raises(VTALoweringError, match="whole channel blocks per group"):
        lower_conv2d(rand_i8(rng, (1, 16, 4, 4)), rand_i8(rng, (16, 1, 3, 3)), groups=16,
                     cfg="pynq")
    with pytest.raises(VTALoweringError, match="pads 0..15"):
        lower_conv2d(rand_i8(rng, (1, 16, 4, 4)), rand_i8(rng, (16, 16, 3, 3)), padding=16,
                     cfg="pynq")


def test_large_layer_is_tiled_not_rejected(rng):
    # 512x512 3x3 weights are 2304 KiB: 9x the weight buffer
    x, w = rand_i8(rng, (1, 512, 4, 4)), rand_i8(rng, (512, 512, 3, 3))
    prog = lower_conv2d(x, w, None, padding=1, shift=10, cfg="pynq")
    y, _ = run_layer(prog)
    np.testing.assert_array_equal(y, reference_conv2d(x, w, padding=1, shift=10))
    assert prog.meta["steps"] > 1


# ---------------------------------------------------------------------- cycle model
def test_double_buffering_raises_utilisation(rng):
    x, w = rand_i8(rng, (1, 512, 7, 7)), rand_i8(rng, (512, 512, 3, 3))
    with_lh = run_layer(lower_conv2d(x, w, None, padding=1, shift=10, cfg="pynq"))[1].stats
    without = run_layer(lower_conv2d(x, w, None, padding=1, shift=10, cfg="pynq",
                                     virtual_threads=1))[1].stats
    assert with_lh.gemm_uops == without.gemm_uops
    assert with_lh.utilization > 0.85
    assert without.utilization < 0.7
    assert with_lh.gops > 0.85 * with_lh.peak_gops


def test_halving_the_bus_slows_a_bandwidth_bound_layer(rng):
    x, w = rand_i8(rng, (1, 512)), rand_i8(rng, (512, 512))
    cfg = load_config("pynq")
    fast = run_layer(lower_dense(x, w, cfg=cfg))[1].stats
    slow = run_layer(lower_dense(x, w, cfg=cfg.replace(LOG_BUS_WIDTH=5)))[1].stats
    assert fast.bytes_loaded == slow.bytes_loaded
    assert slow.dram_busy == pytest.approx(2 * fast.dram_busy, rel=0.05)
    assert slow.total_cycles > 1.6 * fast.total_cycles
    assert fast.utilization < 0.2                     # weight-bound, not compute-bound


@pytest.mark.parametrize("name", ["pynq", "ultra96", "zcu104", "de10nano", "sim", "tsim", "sim_4x8"])
def test_every_shipped_config_runs_a_conv_bit_exact(name, rng):
    """Every published configuration: a strided, padded conv with odd channel counts."""
    cfg = load_config(name)
    x = rand_i8(rng, (1, 20, 9, 9))
    w = rand_i8(rng, (24, 20, 3, 3))
    b = rng.integers(-5000, 5000, 24).astype(np.int32)
    prog = lower_conv2d(x, w, b, stride=2, padding=1, shift=6, relu=True, cfg=cfg)
    y, res = run_layer(prog)
    np.testing.assert_array_equal(y, reference_conv2d(x, w, b, stride=2, padding=1, shift=6,
                                                      relu=True))
    assert res.stats.total_cycles > 0
