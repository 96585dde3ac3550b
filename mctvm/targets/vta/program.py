"""A VTA program: instructions + a DRAM image with named regions (micro-ops live in DRAM too,
loaded into the uop SRAM by LOAD UOP instructions, as VTA's runtime does).

    img = DRAMImage(cfg)
    inp = img.add("inp", packed_inp, "inp")          # Region; inp.addr is in inp ELEMENTS
    uop = img.add_uops("uop", [Uop(0, 0, 0)])
    out = img.alloc("out", 4, "out")
    prog = VTAProgram(cfg, [Load(...), Gemm(...), Store(...), Finish()], img)
    prog.save("layer.vtaprog.npz"); VTAProgram.load("layer.vtaprog.npz")

Every region starts on a multiple of the largest element size of the configuration, so its
base is a whole element address for any memory (LOAD/STORE dram_base counts elements).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from ...errors import MctvmError
from .config import MEMORIES, VTAConfig, load_config
from .isa import Insn, Uop, isa_for

__all__ = ["Region", "DRAMImage", "VTAProgram", "VTAProgramError"]


class VTAProgramError(MctvmError, ValueError):
    """A DRAM image or program is malformed (names the region or field)."""


def _mem_name(mem) -> str:
    if isinstance(mem, str) and mem.lower() in MEMORIES:
        return mem.lower()
    try:
        return MEMORIES[int(mem)]
    except (TypeError, ValueError, IndexError):
        raise VTAProgramError(f"unknown VTA memory {mem!r}; use one of {', '.join(MEMORIES)}")


@dataclass(frozen=True)
class Region:
    """Bytes [offset, offset + nbytes) of the DRAM image, holding elements of memory `mem`."""

    name: str
    offset: int
    nbytes: int
    mem: str
    elem_bytes: int

    @property
    def addr(self) -> int:
        """Base address in elements of `mem` (what LOAD/STORE dram_base takes)."""
        return self.offset // self.elem_bytes

    @property
    def n_elems(self) -> int:
        return self.nbytes // self.elem_bytes

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


class DRAMImage:
    """A flat little-endian byte buffer with named regions."""

    def __init__(self, cfg=None, data=None, regions: Optional[Iterable[Region]] = None):
        self.cfg: VTAConfig = load_config(cfg)
        self.align = max(self.cfg.elem_bytes(m) for m in MEMORIES)
        self.buf = np.zeros(0, np.uint8) if data is None else np.frombuffer(
            bytes(data), np.uint8).copy()
        self.regions: Dict[str, Region] = {}
        for r in regions or ():
            self.regions[r.name] = r

    # ------------------------------------------------------------------ allocation
    def alloc(self, name: str, n_elems: int, mem) -> Region:
        """A zero-filled region of n_elems elements of memory `mem`."""
        if name in self.regions:
            raise VTAProgramError(f"DRAM region {name!r} exists already")
        mem = _mem_name(mem)
        eb = self.cfg.elem_bytes(mem)
        offset = -(-len(self.buf) // self.align) * self.align
        nbytes = int(n_elems) * eb
        new = np.zeros(offset + nbytes, np.uint8)
        new[:len(self.buf)] = self.buf
        self.buf = new
        region = Region(name, offset, nbytes, mem, eb)
        self.regions[name] = region
        return region

    def add(self, name: str, array, mem) -> Region:
        """A region holding `array`: its C-order bytes, converted to the memory's dtype
        (a packed tensor whose trailing axes are one element each)."""
        mem = _mem_name(mem)
        dt = self.cfg.elem_dtype(mem)
        a = np.ascontiguousarray(np.asarray(array).astype(dt, copy=False))
        eb = self.cfg.elem_bytes(mem)
        if a.nbytes % eb:
            raise VTAProgramError(f"DRAM region {name!r}: {a.nbytes} bytes is not a whole "
                                  f"number of {mem} elements of {eb} bytes")
        region = self.alloc(name, a.nbytes // eb, mem)
        self.buf[region.offset:region.end] = a.view(np.uint8).reshape(-1)
        return region

    def add_uops(self, name: str, uops) -> Region:
        return self.add(name, isa_for(self.cfg).uops_to_array(uops), "uop")

    # ------------------------------------------------------------------ access
    def region(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise VTAProgramError(f"no DRAM region {name!r}; regions: "
                                  f"{', '.join(self.regions) or '(none)'}") from None

    def read(self, name: str) -> np.ndarray:
        """The region's elements, shape (n, *elem_shape), in the memory's dtype (a copy)."""
        r = self.region(name)
        dt = self.cfg.elem_dtype(r.mem)
        a = self.buf[r.offset:r.end].view(dt).copy()
        return a.reshape((r.n_elems,) + self.cfg.elem_shape(r.mem))

    def write(self, name: str, array) -> None:
        r = self.region(name)
        a = np.ascontiguousarray(np.asarray(array).astype(self.cfg.elem_dtype(r.mem)))
        if a.nbytes != r.nbytes:
            raise VTAProgramError(f"DRAM region {name!r} holds {r.nbytes} bytes, "
                                  f"got {a.nbytes}")
        self.buf[r.offset:r.end] = a.view(np.uint8).reshape(-1)

    def region_at(self, byte_addr: int) -> Optional[str]:
        for r in self.regions.values():
            if r.offset <= byte_addr < r.end:
                return r.name
        return None

    @property
    def nbytes(self) -> int:
        return len(self.buf)

    def copy(self) -> "DRAMImage":
        img = DRAMImage(self.cfg)
        img.buf = self.buf.copy()
        img.regions = dict(self.regions)
        return img

    def to_bytes(self) -> bytes:
        return self.buf.tobytes()

    def __repr__(self):
        return (f"DRAMImage({self.nbytes} bytes, regions: "
                + ", ".join(f"{r.name}[{r.mem} x{r.n_elems} @0x{r.offset:x}]"
                            for r in self.regions.values()) + ")")


@dataclass
class VTAProgram:
    """Instructions (in fetch order) and the DRAM image they run on. `meta` carries what the
    lowering knows (layer shape, tiling, skipped blocks) and where the result lives."""

    cfg: VTAConfig
    insns: List[Insn]
    dram: DRAMImage
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.cfg = load_config(self.cfg)

    def disassemble(self) -> str:
        return isa_for(self.cfg).disassemble(self.insns)

    def insn_bytes(self) -> bytes:
        return isa_for(self.cfg).insns_to_bytes(self.insns)

    def counts(self) -> dict:
        out: Dict[str, int] = {}
        for x in self.insns:
            out[x.name] = out.get(x.name, 0) + 1
        return out

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """An .npz file: config JSON, instruction stream, DRAM bytes, regions, meta."""
        regions = [[r.name, r.offset, r.nbytes, r.mem, r.elem_bytes]
                   for r in self.dram.regions.values()]
        np.savez(path, config=np.array(self.cfg.to_json()),
                 insns=isa_for(self.cfg).insns_to_array(self.insns),
                 dram=self.dram.buf, regions=np.array(json.dumps(regions)),
                 meta=np.array(json.dumps(self.meta, default=_jsonable)))

    @classmethod
    def load(cls, path) -> "VTAProgram":
        with np.load(path, allow_pickle=False) as z:
            cfg = load_config(json.loads(str(z["config"])))
            insns = isa_for(cfg).insns_from_array(z["insns"])
            regions = [Region(*r) for r in json.loads(str(z["regions"]))]
            dram = DRAMImage(cfg, z["dram"].tobytes(), regions)
            meta = json.loads(str(z["meta"]))
        return cls(cfg, insns, dram, meta)


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
