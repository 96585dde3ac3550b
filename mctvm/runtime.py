"""CompiledModel: call a built program with numpy arrays, time it, export it, load it back."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ExportError, InputError, MctvmError, ModelError
from .frontend import TensorInfo
from .passes.signature import SEED_PARAM, STATS_LAYOUT, T_PARAM
from .report import ActivationStats

METADATA_FUNC = "mctvm_metadata"


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one call in milliseconds, over `repeat` measurements of `number` calls each."""

    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    number: int

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        return (f"{self.median_ms:.3f} ms median ({self.mean_ms:.3f} mean, {self.std_ms:.3f} sd, "
                f"{self.repeat}x{self.number} calls)")


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence TVM's C++ log lines (e.g. 'Scope Saving') written straight to fd 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# calls whose activation statistics are kept as arrays before being summed (summing per call
# cost about as much as a batch-1 run of the built-in model)
_FOLD_EVERY = 64


def _sampled_layers(metadata) -> list:
    """The layers whose activations are sampled at run time, in the order of main's stats."""
    layers = (metadata.get("mcq") or {}).get("layers", [])
    return [layer for layer in layers if layer.get("K_activations")]


class CompiledModel:
    """A built mctvm program: `model(x)` or `model(input=x)` returns numpy arrays."""

    def __init__(self, executable, target, metadata: dict, vm=None, sources=None):
        from .targets import backend

        self.executable = executable
        self.target = target
        self.metadata = metadata
        # Generated device source by language ("cuda"), when the build kept it.
        self.sources = dict(sources or {})
        self.input_info = [TensorInfo.from_dict(d) for d in metadata["inputs"]]
        self.output_info = [TensorInfo.from_dict(d) for d in metadata["outputs"]]
        self.device = backend(target).device(target)
        self._vm_instance = vm
        self._sampled = _sampled_layers(metadata)
        self._stats = {layer["index"]: ActivationStats(int(np.prod(layer["input_shape"][1:])))
                       for layer in self._sampled}
        self._pending = []  # stats (layers, batch, 3) of calls not folded into _stats yet
        self._arg_tensors = {}  # argument name -> its device tensor, reused from call to call
        self._seeds = np.random.default_rng()  # fresh samples for calls without a seed

    @property
    def _vm(self):
        """The VM, made at first use so that a program for an absent device still exports."""
        if self._vm_instance is None:
            self._vm_instance = _make_vm(self.executable, self.device, self.target.kind.name)
        return self._vm_instance

    @property
    def K(self):
        return self.metadata.get("K")

    def __repr__(self):
        ins = ", ".join(f"{i.name}{list(i.shape)}:{i.dtype}" for i in self.input_info)
        return f"CompiledModel({ins} -> {len(self.output_info)} output(s), target={self.target.kind.name}, K={self.K})"

    @property
    def takes_seed(self) -> bool:
        """True when the program draws random numbers at run time (MCQ, MCA, stochastic
        rounding): a call takes `seed=`, fresh by default."""
        return SEED_PARAM in self.metadata.get("extra_inputs", [])

    @property
    def takes_t(self) -> bool:
        """True when the program adds Monte Carlo Arithmetic noise (it needs `t=`)."""
        return T_PARAM in self.metadata.get("extra_inputs", [])

    def _t_tensor(self, t):
        if t is None:
            raise InputError("this program adds MCA noise: pass the virtual precision, e.g. t=24")
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 < t < 64:
            raise InputError(f"t must be an integer virtual precision in 1..63, got {t!r}")
        return self._staged(T_PARAM, np.array([t], dtype=np.int32))

    def _seed_tensor(self, seed):
        if seed is None:
            seed = int(self._seeds.integers(0, 2**63 - 1))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        return self._staged(SEED_PARAM, np.array([seed], dtype=np.int64))

    def _staged(self, name, array):
        """`array` in the device tensor kept for argument `name` (made at its first call):
        copying into it costs less than making a tensor per call. On the CPU the copy goes
        through a numpy view of the tensor (0.4 us for a 28x28 image, against 5 us for
        Tensor.copyfrom's checks)."""
        staged = self._arg_tensors.get(name)
        if staged is None:
            tensor = _tvm().runtime.tensor(array, self.device)
            self._arg_tensors[name] = staged = (tensor, _host_view(tensor))
        elif staged[1] is not None:
            np.copyto(staged[1], array)
        else:
            staged[0].copyfrom(array)
        return staged[0]

    def _arguments(self, args, kwargs, seed=None, t=None) -> list:
        names = [info.name for info in self.input_info]
        if len(args) > len(names):
            raise InputError(f"the model takes {len(names)} input(s) {names}, got {len(args)}")
        given = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names:
                raise InputError(f"'{name}' is not an input of this model; its inputs are {names}")
            if name in given:
                raise InputError(f"input '{name}' was given both by position and by name")
            given[name] = value
        missing = [name for name in names if name not in given]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {names}")
        tensors = []
        for info in self.input_info:
            array = np.asarray(given[info.name])
            if tuple(array.shape) != tuple(info.shape):
                raise InputError(
                    f"input '{info.name}' expects shape {tuple(info.shape)}, got "
                    f"{tuple(array.shape)}; reshape it, or recompile with "
                    f"shapes={{'{info.name}': {tuple(array.shape)}}}"
                )
            if array.dtype != np.dtype(info.dtype):
                raise InputError(
                    f"input '{info.name}' expects dtype {info.dtype}, got {array.dtype}; "
                    f"pass x.astype('{info.dtype}')"
                )
            tensors.append(self._staged(info.name, np.require(array, requirements="C")))
        extra = {SEED_PARAM: lambda: self._seed_tensor(seed), T_PARAM: lambda: self._t_tensor(t)}
        tensors += [extra[name]() for name in self.metadata.get("extra_inputs", [])]
        return tensors

    def __call__(self, *args, seed=None, t=None, **kwargs):
        """Run once. One output comes back as an array, several as a list of arrays.

        A quantized program samples activations with a fresh seed per call; pass `seed=` (an
        integer) to make a call reproducible. A program with MCA noise needs `t=`.
        """
        result = self._vm["main"](*self._arguments(args, kwargs, seed, t))
        outputs = _to_numpy(result)
        count = len(self.output_info)
        if self._sampled:
            self._pending.append(outputs[count])
            if len(self._pending) >= _FOLD_EVERY:
                self._fold_stats()
        outputs = outputs[:count]
        return outputs[0] if count == 1 else outputs

    def _fold_stats(self):
        """Fold the pending calls' activation statistics into the per-layer totals."""
        if self._pending:
            stats = np.concatenate(self._pending, axis=1)
            for layer, layer_stats in zip(self._sampled, stats):
                self._stats[layer["index"]].add(layer_stats)
            self._pending.clear()

    def report(self):
        """Per layer K, N, bits and sparsity of weights and of the activations sampled in the
        calls made so far, and saturations; str() prints it as a table."""
        from .report import build_report
        from .tune import tuning_note

        if "mcq" not in self.metadata:
            raise MctvmError("this is the float program (K=None): there is nothing to report")
        self._fold_stats()
        report = build_report(self.metadata["mcq"]["layers"], self._stats)
        if "tuning" in self.metadata:
            report.notes.append(tuning_note(self.metadata["tuning"]))
        return report

    def reset_stats(self):
        """Forget the activation statistics of earlier calls."""
        self._pending.clear()
        for index, stats in self._stats.items():
            self._stats[index] = ActivationStats(stats.elements_per_sample)

    def random_inputs(self, seed=0) -> list:
        """Random arrays of the right shapes and dtypes (uniform [0,1) for floats)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for info in self.input_info:
            dtype = np.dtype(info.dtype)
            if dtype.kind == "f":
                arrays.append(rng.random(info.shape, dtype=np.float64).astype(dtype))
            else:
                arrays.append(rng.integers(0, 2, size=info.shape).astype(dtype))
        return arrays

    def benchmark(self, *inputs, repeat=10, number=None, min_repeat_ms=100, t=24) -> LatencyStats:
        """Latency from TVM's time evaluator: a warm-up call, then `repeat` means of `number` calls.

        `number` defaults to enough calls for one measurement to last `min_repeat_ms`, at the
        fastest of a few probe calls (the first calls of a program are often slower).
        """
        tensors = self._arguments(inputs or tuple(self.random_inputs()), {}, t=t)
        self._vm.set_input("main", *tensors)
        if number is None:
            probe = self._vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=3)
            seconds = max(min(probe("main").results), 1e-6)
            number = max(1, math.ceil(min_repeat_ms / 1e3 / seconds))
        timer = self._vm.time_evaluator("invoke_stateful", self.device, number=number,
                                        repeat=repeat)
        times = [t * 1e3 for t in timer("main").results]
        return LatencyStats(
            mean_ms=statistics.fmean(times), median_ms=statistics.median(times),
            std_ms=statistics.pstdev(times), min_ms=min(times), max_ms=max(times),
            repeat=repeat, number=number,
        )

    def on_rpc(self, session, library=None) -> "CompiledModel":
        """This program on a TVM RPC server: exported, uploaded, loaded there; calls run remotely.

        `session` is a tvm.rpc session (rpc.connect(host, port), or a tracker's request).
        `library` is this program already exported (export once when using many servers).
        """
        import tempfile

        from tvm import relax

        with tempfile.TemporaryDirectory() as folder:
            library = Path(library) if library else self.export_library(
                Path(folder) / "mctvm_program.so")
            session.upload(str(library))
            module = session.load_module(library.name)
        device = session.cuda(0) if self.target.kind.name == "cuda" else session.cpu(0)
        remote = CompiledModel(module, self.target, self.metadata,
                               vm=relax.VirtualMachine(module, device))
        remote.device = device
        return remote

    def profile(self, *inputs, repeat=5, t=24) -> dict:
        """Mean milliseconds per program call spent in each kernel, largest first.

        Uses the VM's instrumentation (a host timer around every call; on a GPU the kernels
        are asynchronous, so this measures launches). For where-the-time-goes, not latency.
        """
        tensors = self._arguments(inputs or tuple(self.random_inputs()), {}, t=t)
        totals, started = collections.defaultdict(float), {}

        def instrument(func, symbol, before_run, ret_value, *args):
            now = time.perf_counter()
            if before_run:
                started[symbol] = now
            else:
                totals[symbol] += now - started.pop(symbol, now)
            return 0  # VMInstrumentReturnKind.NO_OP

        self._vm["main"](*tensors)
        self._vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                self._vm["main"](*tensors)
        finally:
            self._vm.set_instrument(lambda *args: 0)
        ranked = sorted(totals.items(), key=lambda item: -item[1])
        return {symbol: seconds * 1e3 / repeat for symbol, seconds in ranked}

    def export_library(self, path) -> Path:
        """Write a deployable library. '.so' links a shared library ('.tar' keeps object files).

        For a cross target (another triple) a '.so' needs the cross g++ on PATH, e.g.
        aarch64-linux-gnu-g++; without one, export to '.tar' and link on the board.
        """
        from .targets import cpu

        path = Path(path)
        host = self.target.host if self.target.kind.name != "llvm" else self.target
        options = {}
        if host is not None and cpu.is_cross(host) and path.suffix != ".tar":
            fcompile = cpu.cross_compiler(host)
            if fcompile is None:
                triple = host.attrs["mtriple"]
                raise ExportError(
                    f"no cross compiler for '{triple}' on PATH ({triple}-g++); install it "
                    f"(Debian: g++-{triple}) or export to '{path.with_suffix('.tar')}' and "
                    "link the object files on the board"
                )
            options["fcompile"] = fcompile
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_native_stderr():
            self.executable.export_library(str(path), **options)
        return path


def _to_numpy(result) -> list:
    """The program's result tensors (nested tuples flattened) as numpy arrays of their own."""
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        view = _host_view(result)  # copying out of a view costs a tenth of Tensor.numpy()
        return [result.numpy() if view is None else view.copy()]
    return [item for part in result for item in _to_numpy(part)]


def _host_view(tensor):
    """A numpy view of a tensor in CPU memory (DLPack's kDLCPU); None for device memory or
    a dtype numpy can't view (bfloat16, float8)."""
    if tensor.device.dlpack_device_type() != 1:
        return None
    try:
        return np.from_dlpack(tensor)
    except (BufferError, TypeError, ValueError, RuntimeError):
        return None


def _tvm():
    import tvm

    return tvm


def _make_vm(runnable, device, kind):
    from tvm import relax

    if not device.exist:
        raise ModelError(
            f"the program was built for {kind} but no {kind} device is present here; run it "
            "on a machine with one, or compile with target='cpu'"
        )
    return relax.VirtualMachine(runnable, device)


def _load_module(path):
    """tvm.runtime.load_module; a CUDA library needs TVM's CUDA runtime, loaded on demand."""
    import tvm

    from .targets import cuda

    try:
        with quiet_native_stderr():
            return tvm.runtime.load_module(str(path))
    except Exception:  # noqa: BLE001  retried once with the CUDA runtime, else re-raised
        if not cuda.load_cuda_runtime():
            raise
    with quiet_native_stderr():
        return tvm.runtime.load_module(str(path))


def load(path) -> CompiledModel:
    """Load a library written by `CompiledModel.export_library`, without the ONNX file."""
    import tvm
    from tvm import relax

    from .targets import cuda, resolve

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"library '{path}' does not exist")
    try:
        module = _load_module(path)
    except Exception as err:  # TVM raises RuntimeError with a C++ trace
        raise ModelError(
            f"cannot load '{path}': {str(err).strip().splitlines()[-1]}; it must be a library "
            "exported by mctvm for this machine (a cross-compiled one runs on its board, a "
            "CUDA one where the CUDA driver is installed)"
        ) from None
    kind = "cuda" if cuda.device_modules(module) else "llvm"
    if kind == "cuda":
        import tvm.support.nvcc  # noqa: F401  compiles CUDA source at load time on a GPU host
    device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    try:
        # without its device, the metadata still reads on the CPU; calls then say what's missing
        vm = _make_vm(module, device, kind) if device.exist else None
        reader = vm or relax.VirtualMachine(module, tvm.cpu(0))
        metadata = json.loads(reader[METADATA_FUNC]())
    except (AttributeError, KeyError, RuntimeError, ValueError):
        raise ModelError(f"'{path}' is not an mctvm program (it has no {METADATA_FUNC})") from None
    if _sampled_layers(metadata) and metadata["mcq"].get("stats_layout") != STATS_LAYOUT:
        raise ModelError(
            f"'{path}' was exported by an older mctvm ({metadata.get('mctvm_version')}) whose "
            "programs return their activation statistics in another layout; compile and "
            "export the model again with this version")
    return CompiledModel(module, resolve(json.loads(metadata["target"])), metadata, vm=vm)
