"""Ahead-of-time deployment: export, load in a fresh process, cross-compile for boards."""

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import mctvm
from mctvm.models import synthetic

# ELF e_machine values (the ELF specification).
EM_X86_64, EM_ARM, EM_AARCH64 = 62, 40, 183


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    order = "little" if data[5] == 1 else "big"
    return int.from_bytes(data[18:20], order)


def test_export_and_load_in_a_fresh_process(tmp_path, rng):
    model = synthetic.cnn(seed=1)
    compiled = mctvm.compile(model, shapes={"input": (2, 1, 16, 16)})
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    library = compiled.export_library(tmp_path / "model.so")
    assert _elf_machine(library.read_bytes()[:64]) == EM_X86_64
    script = (
        "import sys, json, numpy as np, mctvm\n"
        f"m = mctvm.load({str(library)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "print(json.dumps([i.as_dict() for i in m.input_info + m.output_info]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info[0] == {"name": "input", "shape": [2, 1, 16, 16], "dtype": "float32"}
    assert info[1]["shape"] == [2, 10]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), compiled(x))


def test_loaded_program_keeps_its_metadata(tmp_path):
    compiled = mctvm.compile(synthetic.cnn(), shapes={"input": (1, 1, 16, 16)})
    loaded = mctvm.load(compiled.export_library(tmp_path / "m.so"))
    assert loaded.metadata == compiled.metadata
    assert loaded.target.kind.name == "llvm"
    assert loaded.benchmark(repeat=2, number=1).median_ms > 0


@pytest.mark.parametrize("triple,machine", [("aarch64-linux-gnu", EM_AARCH64),
                                            ("armv7l-linux-gnueabihf", EM_ARM)])
def test_cross_compiled_export_holds_code_for_the_board(tmp_path, triple, machine):
    target = {"kind": "llvm", "mtriple": triple}
    if triple.startswith("armv7"):
        target["mattr"] = ["+neon"]
    compiled = mctvm.compile(synthetic.cnn(), target=target, shapes={"input": (1, 1, 16, 16)})
    archive = compiled.export_library(tmp_path / "board.tar")
    with tarfile.open(archive) as tar:
        objects = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objects, "the archive holds no object files"
        for member in objects:
            assert _elf_machine(tar.extractfile(member).read(64)) == machine
    so = tmp_path / "board.so"
    if shutil.which(f"{triple}-g++"):
        compiled.export_library(so)
        assert _elf_machine(so.read_bytes()[:64]) == machine
    else:
        with pytest.raises(mctvm.ExportError, match=f"g\\+\\+-{triple}"):
            compiled.export_library(so)
