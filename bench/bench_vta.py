"""VTA target on ResNet-18's conv layers (pynq, 1x16 core, 100 MHz, 64-bit AXI).

For every distinct conv shape of ResNet-18 (224x224 input; the stem included though TVM kept
it on the CPU): lower with random int8 data, simulate bit-exactly (checked against the numpy
reference), and report cycles, GEMM utilisation, GOPS and bytes moved with latency hiding
(two virtual threads) and without (one); then MCQ-like weights (Gaussian weights quantised
by mctvm.mcq.sample_counts at K = 1, 2, 5, clipped to int8) with zero-block skipping: the
blocks, bytes and cycles saved. Also the simulator's own speed.

    python bench/bench_vta.py [--quick] [--no-check]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mctvm.mcq import sample_counts                                 # noqa: E402
from mctvm.targets.vta import load_config                           # noqa: E402
from mctvm.targets.vta.lowering import (                            # noqa: E402
    lower_conv2d, reference_conv2d, run_layer,
)

# name, count in the network, C, H (=W), O, K, stride, pad
RESNET18 = [
    ("conv1 (stem)", 1, 3, 224, 64, 7, 2, 3),
    ("layer1 3x3", 4, 64, 56, 64, 3, 1, 1),
    ("layer2.0 3x3 s2", 1, 64, 56, 128, 3, 2, 1),
    ("layer2 3x3", 3, 128, 28, 128, 3, 1, 1),
    ("layer2 ds 1x1 s2", 1, 64, 56, 128, 1, 2, 0),
    ("layer3.0 3x3 s2", 1, 128, 28, 256, 3, 2, 1),
    ("layer3 3x3", 3, 256, 14, 256, 3, 1, 1),
    ("layer3 ds 1x1 s2", 1, 128, 28, 256, 1, 2, 0),
    ("layer4.0 3x3 s2", 1, 256, 14, 512, 3, 2, 1),
    ("layer4 3x3", 3, 512, 7, 512, 3, 1, 1),
    ("layer4 ds 1x1 s2", 1, 256, 14, 512, 1, 2, 0),
]


def mcq_int8(shape, K, rng):
    w = rng.standard_normal(shape).astype(np.float32)
    counts = sample_counts(w, K, float(rng.random())).counts
    return np.clip(counts, -128, 127).astype(np.int8)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the stem (largest to simulate)")
    ap.add_argument("--no-check", action="store_true", help="skip the numpy reference check")
    ap.add_argument("--cfg", default="pynq")
    args = ap.parse_args(argv)
    cfg = load_config(args.cfg)
    rng = np.random.default_rng(0)
    layers = RESNET18[1:] if args.quick else RESNET18
    print(f"VTA {cfg.TARGET_MODEL}: {cfg.FPGA_FREQ} MHz, {cfg.BUS_WIDTH}-bit AXI, "
          f"peak {cfg.PEAK_GOPS:.1f} GOPS\n")

    hdr = (f"{'layer':<18}{'n':>2} {'tiling co/ci/h/w':>17} {'Mcycles':>8} {'util':>6} "
           f"{'GOPS':>6} {'MB':>6} | {'no-LH Mcyc':>10} {'util':>6} {'GOPS':>6} | "
           f"{'sim s':>6} {'Muops/s':>7}")
    print(hdr)
    print("-" * len(hdr))
    tot = dict(c2=0, c1=0, uops=0, bytes=0, sim=0.0)
    weights = {}
    for name, n, C, H, O, K, s, p in layers:
        x = rng.integers(-128, 128, (1, C, H, H), dtype=np.int8)
        w = rng.integers(-128, 128, (O, C, K, K), dtype=np.int8)
        weights[name] = (x, (O, C, K, K))
        row = {}
        for vt in (2, 1):
            prog = lower_conv2d(x, w, None, stride=s, padding=p, shift=12, relu=True, cfg=cfg,
                                virtual_threads=vt)
            y, res = run_layer(prog)
            if vt == 2 and not args.no_check:
                ref = reference_conv2d(x, w, None, stride=s, padding=p, shift=12, relu=True)
                assert np.array_equal(y, ref), f"{name}: simulator != numpy reference"
            row[vt] = (prog, res.stats)
        (p2, s2), (_, s1) = row[2], row[1]
        t = p2.meta["tiling"]
        tiling = f"{t['tco']}/{t['tci']}/{t['th']}/{t['tw']}"
        print(f"{name:<18}{n:>2} {tiling:>17} {s2.total_cycles / 1e6:8.3f} "
              f"{s2.utilization:6.1%} {s2.gops:6.1f} {s2.bytes_total / 2**20:6.2f} | "
              f"{s1.total_cycles / 1e6:10.3f} {s1.utilization:6.1%} {s1.gops:6.1f} | "
              f"{s2.wall_seconds:6.2f} {s2.sim_uops_per_second / 1e6:7.2f}")
        tot["c2"] += n * s2.total_cycles
        tot["c1"] += n * s1.total_cycles
        tot["uops"] += n * s2.gemm_uops
        tot["bytes"] += n * s2.bytes_total
        tot["sim"] += s2.wall_seconds + s1.wall_seconds
    peak = cfg.OPS_PER_CYCLE * cfg.FPGA_FREQ / 1e3
    print("-" * len(hdr))
    print(f"{'network (x n)':<38}{tot['c2'] / 1e6:8.2f} {tot['uops'] / tot['c2']:6.1%} "
          f"{tot['uops'] / tot['c2'] * peak:6.1f} {tot['bytes'] / 2**20:6.1f} | "
          f"{tot['c1'] / 1e6:10.2f} {tot['uops'] / tot['c1']:6.1%} "
          f"{tot['uops'] / tot['c1'] * peak:6.1f} |")
    print(f"\nconv layers at {cfg.FPGA_FREQ} MHz: {tot['c2'] / cfg.FPGA_FREQ / 1e3:.1f} ms with "
          f"latency hiding, {tot['c1'] / cfg.FPGA_FREQ / 1e3:.1f} ms without; simulator wall "
          f"time for all runs above {tot['sim']:.1f} s\n")

    # ---- MCQ sparsity: zero 16x16 blocks skipped
    print("MCQ weights (sample_counts, layer-normalised, clipped to int8), zero blocks skipped")
    hdr = (f"{'layer':<18}{'K':>5} {'zero w':>7} {'zero blk':>9} {'KB saved':>12} "
           f"{'Mcyc dense':>10} {'Mcyc skip':>10} {'saved':>6}")
    print(hdr)
    print("-" * len(hdr))
    for name, n, C, H, O, K, s, p in layers:
        if name.startswith("conv1"):
            continue
        x, wshape = weights[name]
        for Kmcq in (1, 2, 5, 0.02):
            w = mcq_int8(wshape, Kmcq, rng)
            dense = run_layer(lower_conv2d(x, w, None, stride=s, padding=p, shift=6, cfg=cfg,
                                           skip_zero_blocks=False))[1].stats
            prog = lower_conv2d(x, w, None, stride=s, padding=p, shift=6, cfg=cfg)
            y, res = run_layer(prog)
            if not args.no_check:
                assert np.array_equal(y, reference_conv2d(x, w, None, stride=s, padding=p,
                                                          shift=6))
            m = prog.meta
            sv = 1 - res.stats.total_cycles / dense.total_cycles
            print(f"{name:<18}{Kmcq:>5} {np.mean(w == 0):7.1%} "
                  f"{m['blocks_skipped'] / max(m['blocks_total'], 1):9.1%} "
                  f"{(dense.bytes_total - res.stats.bytes_total) / 1024:12.1f} "
                  f"{dense.total_cycles / 1e6:10.3f} {res.stats.total_cycles / 1e6:10.3f} "
                  f"{sv:6.1%}")


if __name__ == "__main__":
    main()
