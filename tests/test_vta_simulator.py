"""VTA behavioural simulator: hand-built programs against numpy, ALU semantics, addressing,
deadlock and bound-check reports, and the cycle model."""

import numpy as np
import pytest

from mctvm.targets.vta import load_config
from mctvm.targets.vta.cycles import TimingParams
from mctvm.targets.vta.isa import Alu, AluOp, Finish, Gemm, Load, MemId, Store, Uop
from mctvm.targets.vta.program import DRAMImage, VTAProgram
from mctvm.targets.vta.simulator import (
    VTADeadlockError, VTAHazardError, VTASimError, VTASramError, simulate,
)

CFG = load_config("pynq")


def wrap32(v):
    return ((np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def one_block_program(x, w, cfg=CFG):
    """LOAD inp/wgt, GEMM reset + GEMM, ALU SHR 0 (copy), STORE: out = int8(x . w^T)."""
    img = DRAMImage(cfg)
    inp = img.add("inp", x.reshape(1, cfg.BATCH, cfg.BLOCK_IN), "inp")
    wgt = img.add("wgt", w.reshape(1, cfg.BLOCK_OUT, cfg.BLOCK_IN), "wgt")
    uop = img.add_uops("uop", [Uop(0, 0, 0)])
    out = img.alloc("out", 1, "out")
    insns = [
        Load(memory_type=MemId.UOP, dram_base=uop.addr, y_size=1, x_size=1, x_stride=1),
        Gemm(reset_reg=True, uop_bgn=0, uop_end=1, iter_out=1, iter_in=1),
        Load(memory_type=MemId.INP, dram_base=inp.addr, y_size=1, x_size=1, x_stride=1),
        Load(memory_type=MemId.WGT, dram_base=wgt.addr, y_size=1, x_size=1, x_stride=1,
             push_next=True),
        Gemm(uop_bgn=0, uop_end=1, iter_out=1, iter_in=1, pop_prev=True),
        Alu(alu_opcode=AluOp.SHR, use_imm=True, imm=0, uop_bgn=0, uop_end=1, iter_out=1,
            iter_in=1, push_next=True),
        Store(memory_type=MemId.OUT, dram_base=out.addr, y_size=1, x_size=1, x_stride=1,
              pop_prev=True, push_prev=True),
        Finish(pop_next=True),
    ]
    return VTAProgram(cfg, insns, img)


@pytest.mark.parametrize("cfg", ["pynq", "sim_4x8"])
def test_load_gemm_store_one_block(cfg, rng):
    cfg = load_config(cfg)
    x = rng.integers(-128, 128, (cfg.BATCH, cfg.BLOCK_IN), dtype=np.int8)
    w = rng.integers(-128, 128, (cfg.BLOCK_OUT, cfg.BLOCK_IN), dtype=np.int8)
    res = simulate(one_block_program(x, w, cfg))
    ref = x.astype(np.int64) @ w.astype(np.int64).T
    got = res.dram.read("out").reshape(cfg.BATCH, cfg.BLOCK_OUT)
    np.testing.assert_array_equal(got, ref.astype(np.int32).astype(np.int8))  # truncation
    assert res.stats.gemm_uops == 1 and res.stats.gemm_reset_uops == 1
    assert res.stats.bytes_loaded["inp"] == cfg.INP_ELEM_BYTES
    assert res.stats.bytes_loaded["wgt"] == cfg.WGT_ELEM_BYTES
    assert res.stats.bytes_stored == cfg.OUT_ELEM_BYTES
    assert all(v == 0 for v in res.tokens_left.values())


def test_store_truncates_not_saturates():
    x = np.full(16, 127, np.int8)
    w = np.full((16, 16), 127, np.int8)
    res = simulate(one_block_program(x, w))
    v = 16 * 127 * 127                              # 258064 = 0x3F010 -> low byte 0x10
    assert np.all(res.dram.read("out") == np.int8(v & 0xFF))


# ---------------------------------------------------------------------- ALU
def alu_program(acc, ops, cfg=CFG, n=None):
    """Load `acc` (n, 1, 16) int32 into ACC, run `ops` (Alu instructions, uops given),
    store all rows."""
    n = acc.shape[0]
    img = DRAMImage(cfg)
    a = img.add("acc", acc, "acc")
    uops = [u for _, us in ops for u in us]
    u = img.add_uops("uop", uops)
    out = img.alloc("out", n, "out")
    insns = [Load(memory_type=MemId.UOP, dram_base=u.addr, y_size=1, x_size=len(uops),
                  x_stride=len(uops)),
             Load(memory_type=MemId.ACC, dram_base=a.addr, y_size=1, x_size=n, x_stride=n)]
    pos = 0
    for insn, us in ops:
        insn.uop_bgn, insn.uop_end = pos, pos + len(us)
        pos += len(us)
        insns.append(insn)
    insns[-1].push_next = True
    insns += [Store(memory_type=MemId.OUT, dram_base=out.addr, y_size=1, x_size=n,
                    x_stride=n, pop_prev=True, push_prev=True), Finish(pop_next=True)]
    return VTAProgram(cfg, insns, img)


def run_acc(acc, ops):
    """Run and return the int8 output rows (the truncated int32 accumulators)."""
    return simulate(alu_program(acc, ops)).dram.read("out").reshape(acc.shape[0], -1)


@pytest.mark.parametrize("op, imm", [(AluOp.MIN, 5), (AluOp.MAX, -3), (AluOp.ADD, 1000),
                                     (AluOp.SHR, 3), (AluOp.SHR, -2), (AluOp.ADD, -32768)])
def test_alu_imm(op, imm, rng):
    acc = rng.integers(-2**31, 2**31, (4, 1, 16), dtype=np.int64).astype(np.int32)
    acc[0, 0, :3] = [2**31 - 1, -2**31, 0]
    insn = Alu(alu_opcode=op, use_imm=True, imm=imm, iter_out=4, iter_in=1, dst_factor_out=1)
    got = run_acc(acc, [(insn, [Uop(0, 0, 0)])])
    a = acc.astype(np.int64).reshape(4, 16)
    ref = {AluOp.MIN: lambda: np.minimum(a, imm), AluOp.MAX: lambda: np.maximum(a, imm),
           AluOp.ADD: lambda: a + imm,
           AluOp.SHR: lambda: a >> imm if imm >= 0 else a << -imm}[op]()
    np.testing.assert_array_equal(got, wrap32(ref).astype(np.int8))


@pytest.mark.parametrize("op", [AluOp.MIN, AluOp.MAX, AluOp.ADD, AluOp.SHR])
def test_alu_vector(op, rng):
    acc = rng.integers(-2**31, 2**31, (8, 1, 16), dtype=np.int64).astype(np.int32)
    if op == AluOp.SHR:
        acc[4:] = rng.integers(-8, 16, (4, 1, 16))
    # rows 0..3 op= rows 4..7, via one uop and iter_out 4 (dst/src factors 1)
    insn = Alu(alu_opcode=op, iter_out=4, iter_in=1, dst_factor_out=1, src_factor_out=1)
    got = run_acc(acc, [(insn, [Uop(0, 4, 0)])])
    a = acc.astype(np.int64).reshape(8, 16)
    lhs, rhs = a[:4], a[4:]
    ref = {AluOp.MIN: lambda: np.minimum(lhs, rhs), AluOp.MAX: lambda: np.maximum(lhs, rhs),
           AluOp.ADD: lambda: lhs + rhs,
           AluOp.SHR: lambda: np.where(rhs >= 0, lhs >> np.clip(rhs, 0, 63),
                                       wrap32(lhs << np.clip(-rhs, 0, 63)))}[op]()
    np.testing.assert_array_equal(got[:4], wrap32(ref).astype(np.int8))
    # rows 4..7 were loaded into ACC but never written by GEMM/ALU: the out buffer that
    # STORE reads still holds zeros there (a plain copy needs an ALU op, per the spec)
    assert np.all(got[4:] == 0)


def test_alu_sequential_semantics_when_reading_rows_written_before():
    # acc[r] += acc[r-1] for r = 1..3 in one instruction: a running prefix sum
    acc = np.arange(4 * 16, dtype=np.int32).reshape(4, 1, 16)
    insn = Alu(alu_opcode=AluOp.ADD, iter_out=3, iter_in=1, dst_factor_out=1,
               src_factor_out=1)
    got = run_acc(acc, [(insn, [Uop(1, 0, 0)])])
    ref = np.cumsum(acc.reshape(4, 16).astype(np.int64), axis=0)
    np.testing.assert_array_equal(got[1:], ref[1:].astype(np.int8))
    assert np.all(got[0] == 0)            # row 0 was only loaded, never written by the ALU


def test_alu_reset_and_clip_chain(rng):
    acc = rng.integers(-5000, 5000, (3, 1, 16)).astype(np.int32)
    ops = [(Alu(alu_opcode=AluOp.SHR, use_imm=True, imm=4, iter_out=3, iter_in=1,
                dst_factor_out=1), [Uop(0, 0, 0)]),
           (Alu(alu_opcode=AluOp.MIN, use_imm=True, imm=127, iter_out=3, iter_in=1,
                dst_factor_out=1), [Uop(0, 0, 0)]),
           (Alu(alu_opcode=AluOp.MAX, use_imm=True, imm=-128, iter_out=3, iter_in=1,
                dst_factor_out=1), [Uop(0, 0, 0)]),
           (Alu(reset_reg=True, iter_out=1, iter_in=1), [Uop(2, 0, 0)])]
    got = run_acc(acc, ops)
    ref = np.clip(acc.reshape(3, 16).astype(np.int64) >> 4, -128, 127)
    np.testing.assert_array_equal(got[:2], ref[:2])
    assert np.all(got[2] == 0)


# ---------------------------------------------------------------------- addressing
def test_gemm_iter_out_iter_in_factors(rng):
    """A 2x3 grid of output blocks from 2 input rows x 3 weight blocks, summing 2 input
    channel blocks per output: exercised through iter_out (rows), iter_in (weights) and
    two uops (the channel blocks)."""
    cfg = CFG
    X = rng.integers(-128, 128, (2, 2, 16), dtype=np.int8)       # [row][cb][16]
    W = rng.integers(-128, 128, (3, 2, 16, 16), dtype=np.int8)   # [ob][cb][16o][16i]
    img = DRAMImage(cfg)
    inp = img.add("inp", X.reshape(4, 1, 16), "inp")             # element = row*2 + cb
    wgt = img.add("wgt", W.reshape(6, 16, 16), "wgt")            # element = ob*2 + cb
    # uop k (cb): dst 0, src cb, wgt cb; i = row: dst += 3, src += 2; j = ob: dst += 1,
    # wgt += 2. The 2 uops of one (i, j) write the same dst: 1 apart -> hazard, so order
    # the nest with ob innermost in the uops instead: uops (ob, cb) interleaved.
    uops = [Uop(ob, cb, ob * 2 + cb) for cb in range(2) for ob in range(3)]
    u = img.add_uops("uop", uops)
    out = img.alloc("out", 6, "out")
    insns = [Load(memory_type=MemId.UOP, dram_base=u.addr, y_size=1, x_size=6, x_stride=6),
             Load(memory_type=MemId.INP, dram_base=inp.addr, y_size=1, x_size=4, x_stride=4),
             Load(memory_type=MemId.WGT, dram_base=wgt.addr, y_size=1, x_size=6, x_stride=6,
                  push_next=True),
             Gemm(reset_reg=True, uop_bgn=0, uop_end=1, iter_out=6, iter_in=1,
                  dst_factor_out=1),
             Gemm(uop_bgn=0, uop_end=6, iter_out=2, iter_in=1, dst_factor_out=3,
                  src_factor_out=2, pop_prev=True),
             Alu(alu_opcode=AluOp.SHR, use_imm=True, imm=6, uop_bgn=0, uop_end=1, iter_out=2,
                 iter_in=3, dst_factor_out=3, dst_factor_in=1, push_next=True),
             Store(memory_type=MemId.OUT, dram_base=out.addr, y_size=2, x_size=3, x_stride=3,
                   pop_prev=True, push_prev=True),
             Finish(pop_next=True)]
    res = simulate(VTAProgram(cfg, insns, img))
    ref = np.zeros((2, 3, 16), np.int64)
    for r in range(2):
        for ob in range(3):
            for cb in range(2):
                ref[r, ob] += W[ob, cb].astype(np.int64) @ X[r, cb].astype(np.int64)
    got = res.dram.read("out").reshape(2, 3, 16)
    np.testing.assert_array_equal(got, (ref >> 6).astype(np.int8))
    assert res.stats.gemm_uops == 12


def test_load_2d_stride_and_padding(rng):
    cfg = CFG
    img_data = rng.integers(-128, 128, (5, 7, 1, 16), dtype=np.int8)   # H x W elements
    img = DRAMImage(cfg)
    inp = img.add("inp", img_data, "inp")
    # rows 1..3, cols 2..5 with 1 row pad on top, 2 below, 1 col left, 0 right -> 6 x 5
    ld = Load(memory_type=MemId.INP, sram_base=10, dram_base=inp.addr + 1 * 7 + 2, y_size=3,
              x_size=4, x_stride=7, y_pad_0=1, y_pad_1=2, x_pad_0=1, x_pad_1=0)
    from mctvm.targets.vta.simulator import Simulator
    sim = Simulator(cfg)
    sim.run(VTAProgram(cfg, [ld, Finish()], img))
    got = sim.sram["inp"][10:10 + 30].reshape(6, 5, 16)
    ref = np.zeros((6, 5, 16), np.int8)
    ref[1:4, 1:5] = img_data[1:4, 2:6, 0]
    np.testing.assert_array_equal(got, ref)
    assert sim.stats.bytes_loaded["inp"] == 12 * 16


# ---------------------------------------------------------------------- errors
def test_missing_token_is_a_deadlock():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[3].push_next = False                   # the load never signals compute
    with pytest.raises(VTADeadlockError) as e:
        simulate(prog)
    msg = str(e.value)
    assert "compute: waits at instruction #4 (GEMM)" in msg
    assert "load->compute (pop_prev)" in msg
    assert "load: finished" in msg
    assert "store: waits at instruction #6 (STORE OUT)" in msg and "compute->store" in msg
    assert e.value.waits["compute"] == (4, ["l2c"])


def test_deadlock_on_a_war_token_never_pushed():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[2].pop_next = True                      # waits for compute->load: never comes
    with pytest.raises(VTADeadlockError, match=r"load: waits at instruction #2 \(LOAD INP\) "
                                               r"for a token on compute->load \(pop_next\)"):
        simulate(prog)


def test_full_command_queue_is_a_deadlock_not_a_hang():
    cfg = CFG
    img = DRAMImage(cfg)
    img.alloc("inp", 1, "inp")
    # 600 loads that each wait for compute, and compute's token pushes come after them
    insns = [Load(memory_type=MemId.INP, y_size=1, x_size=1, x_stride=1, pop_next=True)
             for _ in range(600)]
    insns += [Gemm(push_prev=True) for _ in range(600)] + [Finish()]
    with pytest.raises(VTADeadlockError, match="command queue is full"):
        simulate(VTAProgram(cfg, insns, img))


def test_sram_overflow_names_instruction_and_memory():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[2].sram_base = CFG.INP_BUFF_DEPTH            # one past the end
    with pytest.raises(VTASramError, match=r"instruction #2 \(LOAD INP\).*inp buffer holds "
                                           r"2048") as e:
        simulate(prog)
    assert e.value.index == 2 and e.value.memory == "inp"


def test_gemm_index_overflow_names_instruction_and_memory():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[4].iter_out, prog.insns[4].wgt_factor_out = 3, CFG.WGT_BUFF_DEPTH - 1
    prog.insns[4].dst_factor_out = 3
    with pytest.raises(VTASramError, match=r"instruction #4 \(GEMM\): wgt index 2046 outside "
                                           r"the wgt buffer of 1024 elements \(uop 0, "
                                           r"iteration i=2, j=0\)") as e:
        simulate(prog)
    assert e.value.memory == "wgt"


def test_dram_overflow_and_bad_flags():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[3].dram_base = 10**6
    with pytest.raises(VTASramError, match="DRAM"):
        simulate(prog)
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[2].pop_prev = True
    with pytest.raises(VTASimError, match="load module has no previous module"):
        simulate(prog)
    prog.insns = prog.insns[:-1]
    with pytest.raises(VTASimError, match="FINISH"):
        simulate(prog)


def test_uop_hazard_is_rejected():
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    prog.insns[4].iter_in = 2                      # same dst twice in a row
    with pytest.raises(VTAHazardError, match="instruction #4"):
        simulate(prog)
    simulate(prog, check_hazards=False)


# ---------------------------------------------------------------------- cycles
def test_cycle_counts_of_a_tiny_program():
    tm = TimingParams()
    prog = one_block_program(np.zeros(16, np.int8), np.zeros((16, 16), np.int8))
    res = simulate(prog, trace=True)
    by_index = {k: (m, s, e) for k, m, s, e in res.trace}
    # GEMM: overhead + 1 uop; it starts after the WGT load ended (token)
    m, s, e = by_index[4]
    assert m == "compute" and e - s == tm.gemm_overhead + 1
    assert s >= by_index[3][2]
    # the WGT load: 256 B over a 64-bit bus = 32 beats + latency
    m, s, e = by_index[3]
    assert e - s == 32 + tm.dma_latency
    assert res.stats.total_cycles == max(e for _, _, e in by_index.values())
    assert res.stats.dram_busy == 1 + 2 + 32 + 2         # uop, inp, wgt, out beats
