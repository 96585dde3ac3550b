"""VTAConfig: the shipped JSON files, the derived sizes (against the VTA spec), bad configs."""

import json

import pytest

from mctvm.errors import TargetError
from mctvm.targets.vta.config import (
    BOARDS, VTAConfig, VTAConfigError, available_configs, default_config, load_config,
)

SHIPPED = ["de10nano", "pynq", "sim", "sim_4x8", "tsim", "ultra96", "zcu104"]

# The spec's configuration table (shared by every published board).
SPEC_1X16 = {
    "LOG_INP_WIDTH": 3, "LOG_WGT_WIDTH": 3, "LOG_ACC_WIDTH": 5, "LOG_BATCH": 0, "LOG_BLOCK": 4,
    "LOG_UOP_BUFF_SIZE": 15, "LOG_INP_BUFF_SIZE": 15, "LOG_WGT_BUFF_SIZE": 18,
    "LOG_ACC_BUFF_SIZE": 17,
}


def base_dict(**changes):
    d = {"TARGET": "sim", "HW_VER": "0.0.2", **SPEC_1X16}
    d.update(changes)
    return d


def test_shipped_names():
    assert set(SHIPPED) <= set(available_configs())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_json_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, VTAConfig)
    assert cfg.TARGET in BOARDS
    expected = dict(SPEC_1X16)
    if name == "sim_4x8":
        expected.update(LOG_BATCH=2, LOG_BLOCK=3)
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    # the file is VTA's own format: loading it from its path gives the same config
    assert VTAConfig.from_json(cfg.source) == cfg
    assert load_config(cfg.source) == cfg


def test_default_is_sim_1x16():
    cfg = default_config()
    assert cfg.TARGET == "sim" and cfg.MODEL == "1x16_i8w8a32_15_15_18_17"
    assert load_config() is cfg and load_config(cfg) is cfg


def test_derived_sizes_1x16():
    cfg = load_config("pynq")
    assert (cfg.BATCH, cfg.BLOCK_IN, cfg.BLOCK_OUT) == (1, 16, 16)
    assert (cfg.INP_WIDTH, cfg.WGT_WIDTH, cfg.ACC_WIDTH, cfg.OUT_WIDTH) == (8, 8, 32, 8)
    assert str(cfg.INP_DTYPE) == "int8" and str(cfg.ACC_DTYPE) == "int32"
    assert str(cfg.OUT_DTYPE) == "int8" and str(cfg.WGT_DTYPE) == "int8"
    # element sizes in bytes
    assert cfg.INP_ELEM_BYTES == 16
    assert cfg.WGT_ELEM_BYTES == 256
    assert cfg.ACC_ELEM_BYTES == 64
    assert cfg.OUT_ELEM_BYTES == 16
    assert cfg.UOP_ELEM_BYTES == 4
    assert cfg.INS_ELEM_BYTES == 16
    # buffers: bytes and depths in elements
    assert (cfg.UOP_BUFF_SIZE, cfg.UOP_BUFF_DEPTH, cfg.LOG_UOP_BUFF_DEPTH) == (32768, 8192, 13)
    assert (cfg.INP_BUFF_SIZE, cfg.INP_BUFF_DEPTH, cfg.LOG_INP_BUFF_DEPTH) == (32768, 2048, 11)
    assert (cfg.WGT_BUFF_SIZE, cfg.WGT_BUFF_DEPTH, cfg.LOG_WGT_BUFF_DEPTH) == (262144, 1024, 10)
    assert (cfg.ACC_BUFF_SIZE, cfg.ACC_BUFF_DEPTH, cfg.LOG_ACC_BUFF_DEPTH) == (131072, 2048, 11)
    # out buffer: 32 KiB, indexed like acc
    assert (cfg.OUT_BUFF_SIZE, cfg.OUT_BUFF_DEPTH) == (32768, 2048)
    assert cfg.OUT_BUFF_DEPTH == cfg.ACC_BUFF_DEPTH
    # GEMM core: 256 MAC = 512 ops per cycle
    assert cfg.MACS_PER_CYCLE == 256 and cfg.OPS_PER_CYCLE == 512
    # per-memory lookups by name and by ISA memory id
    assert [cfg.elem_bytes(m) for m in ("uop", "wgt", "inp", "acc", "out")] == [4, 256, 16, 64, 16]
    assert [cfg.buff_depth(m) for m in range(5)] == [8192, 1024, 2048, 2048, 2048]
    assert cfg.elem_shape("wgt") == (16, 16) and cfg.elem_shape("inp") == (1, 16)
    assert cfg.elem_shape("acc") == (1, 16)
    assert cfg.axi_beats("wgt") == 32 and cfg.axi_beats("uop") == 1
    with pytest.raises(ValueError, match="unknown VTA memory"):
        cfg.elem_bytes("bias")


def test_derived_sizes_batched_4x8():
    cfg = load_config("sim_4x8")
    assert (cfg.BATCH, cfg.BLOCK_IN, cfg.BLOCK_OUT) == (4, 8, 8)
    assert cfg.MODEL == "4x8_i8w8a32_15_15_18_17"
    assert (cfg.INP_ELEM_BYTES, cfg.WGT_ELEM_BYTES, cfg.ACC_ELEM_BYTES, cfg.OUT_ELEM_BYTES) == (
        32, 64, 128, 32)
    assert (cfg.INP_BUFF_DEPTH, cfg.WGT_BUFF_DEPTH, cfg.ACC_BUFF_DEPTH, cfg.UOP_BUFF_DEPTH) == (
        1024, 4096, 1024, 8192)
    assert cfg.MACS_PER_CYCLE == 256
    assert cfg.elem_shape("inp") == (4, 8) and cfg.elem_shape("acc") == (4, 8)


@pytest.mark.parametrize("name, freq, gops, bus_bytes, triple", [
    ("pynq", 100, 51.2, 8, "armv7-none-linux-gnueabihf"),
    ("de10nano", 100, 51.2, 8, "armv7-none-linux-gnueabihf"),
    ("ultra96", 333, 170.5, 16, "aarch64-linux-gnu"),
    ("zcu104", 333, 170.5, 16, "aarch64-linux-gnu"),
    ("sim", 100, 51.2, 8, "x86_64-linux-gnu"),
    ("tsim", 100, 51.2, 8, "x86_64-linux-gnu"),
])
def test_board_values(name, freq, gops, bus_bytes, triple):
    cfg = load_config(name)
    assert cfg.FREQ_MHZ == freq
    assert cfg.PEAK_GOPS == pytest.approx(gops, abs=0.05)
    assert cfg.BUS_WIDTH_BYTES == bus_bytes and cfg.BUS_WIDTH == 8 * bus_bytes
    assert cfg.HOST_TRIPLE == triple
    assert cfg.MODEL == "1x16_i8w8a32_15_15_18_17" == cfg.BITSTREAM
    assert cfg.TARGET_MODEL == f"{name}_1x16_i8w8a32_15_15_18_17"
    assert cfg.summary().startswith(f"VTA {name}_1x16")


def test_pynq_and_ultra96_peak_exact():
    assert load_config("pynq").PEAK_GOPS == pytest.approx(51.2)
    assert load_config("ultra96").PEAK_GOPS == pytest.approx(512 * 333 / 1000)
    assert load_config("pynq").TARGET_HOST == "llvm -mtriple=armv7-none-linux-gnueabihf"
    assert load_config("sim").TARGET_HOST == "llvm"


def test_dict_file_round_trip_and_overrides(tmp_path):
    cfg = load_config("ultra96")
    assert VTAConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "mine.json"
    path.write_text(cfg.to_json())
    assert load_config(str(path)) == cfg
    # board overrides: clock and bus width, kept through to_dict
    fast = VTAConfig.from_dict(base_dict(TARGET="pynq", FPGA_FREQ=200, LOG_BUS_WIDTH=7))
    assert fast.PEAK_GOPS == pytest.approx(102.4) and fast.BUS_WIDTH_BYTES == 16
    assert VTAConfig.from_dict(fast.to_dict()) == fast
    # replace: a new board brings its own clock unless one was overridden
    assert load_config("pynq").replace(TARGET="ultra96").FREQ_MHZ == 333
    assert fast.replace(TARGET="ultra96").FREQ_MHZ == 200
    # configs are hashable values
    assert len({load_config("pynq"), VTAConfig.from_dict(load_config("pynq").to_dict())}) == 1


def _error(data) -> VTAConfigError:
    with pytest.raises(VTAConfigError) as info:
        VTAConfig.from_dict(data)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, TargetError)
    return err


def test_unknown_key():
    err = _error(base_dict(LOG_FOO=1))
    assert err.key == "LOG_FOO"
    assert "unknown key 'LOG_FOO'" in str(err) and "LOG_BLOCK" in str(err)


def test_missing_key():
    d = base_dict()
    del d["LOG_BLOCK"]
    err = _error(d)
    assert err.key == "LOG_BLOCK" and "missing key 'LOG_BLOCK'" in str(err)


@pytest.mark.parametrize("key, value", [
    ("LOG_BATCH", "0"), ("LOG_BLOCK", 4.0), ("LOG_ACC_WIDTH", True), ("LOG_UOP_BUFF_SIZE", None),
])
def test_wrong_type(key, value):
    err = _error(base_dict(**{key: value}))
    assert err.key == key
    assert f"key '{key}' must be an integer" in str(err)
    assert "allowed values" in str(err)


@pytest.mark.parametrize("key, value, allowed", [
    ("LOG_ACC_WIDTH", 6, "5 (int32"),
    ("LOG_INP_WIDTH", 4, "3 (int8"),
    ("LOG_WGT_WIDTH", 2, "3 (int8"),
    ("LOG_BATCH", 5, "0..4"),
    ("LOG_BLOCK", 7, "2..6"),
    ("LOG_UOP_BUFF_SIZE", 16, "10..15"),
])
def test_out_of_range(key, value, allowed):
    err = _error(base_dict(**{key: value}))
    assert err.key == key
    assert f"key '{key}' = {value} is out of range" in str(err)
    assert f"allowed values: {allowed}" in str(err)


def test_bad_target_and_version():
    err = _error(base_dict(TARGET="vc707"))
    assert err.key == "TARGET" and "pynq" in str(err) and "ultra96" in str(err)
    err = _error(base_dict(TARGET=3))
    assert err.key == "TARGET" and "must be a string" in str(err)
    err = _error(base_dict(HW_VER=2))
    assert err.key == "HW_VER"


def test_buffers_that_overflow_the_isa_fields():
    # a 4096-deep accumulator would need 12-bit dst indices: no room in the uop or ALU insn
    err = _error(base_dict(LOG_ACC_BUFF_SIZE=18))
    assert err.key == "LOG_ACC_BUFF_SIZE" and "bits" in str(err)
    # a bigger weight buffer overflows the 32-bit micro-op
    err = _error(base_dict(LOG_WGT_BUFF_SIZE=19))
    assert "micro-op" in str(err)
    # a buffer too small to hold one element
    err = _error(base_dict(LOG_INP_BUFF_SIZE=8, LOG_BATCH=4, LOG_BLOCK=6))
    assert err.key == "LOG_INP_BUFF_SIZE" and "at least one element" in str(err)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(VTAConfigError, match="not valid JSON"):
        load_config(str(bad))
    with pytest.raises(VTAConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(VTAConfigError, match="no shipped configuration named 'pynq2'"):
        load_config("pynq2")
    arr = tmp_path / "list.json"
    arr.write_text(json.dumps([1, 2]))
    with pytest.raises(VTAConfigError, match="JSON object"):
        load_config(str(arr))
    # the file's path is in the message
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(base_dict(EXTRA=1)))
    with pytest.raises(VTAConfigError, match="unknown.json.*unknown key 'EXTRA'"):
        load_config(str(unknown))
