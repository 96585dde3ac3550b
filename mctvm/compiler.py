"""mctvm.compile: ONNX model -> Relax -> mctvm passes -> TVM build -> CompiledModel."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from . import __version__, frontend
from .errors import MctvmError, TargetError, UnsupportedOpError
from .frontend import ModelLike, TensorInfo
from .mcq_options import MCQOptions
from .passes import pipeline
from .kernels.float_format import format_limits
from .kernels.inexact import CONVENTIONS
from .passes.insert_mca_noise import MODES as MCA_MODES, SITES_ATTR
from .passes.plan_mcq_layers import read_layers
from .passes.signature import EXTRA_INPUTS, STATS_LAYOUT
from .runtime import METADATA_FUNC, CompiledModel
from .targets import TargetLike, backend, resolve


def compile(  # pylint: disable=redefined-builtin
    model: ModelLike,
    K: float | None = None,
    target: TargetLike = "llvm",
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dump_dir=None,
    mca=None,
    float_format=None,
    allocate=None,
    calibration=None,
    tuning=None,
    **mcq_options,
) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) for `target`.

    K=None builds the float program unchanged (the baseline). With K set, GEMMs and convs run
    on Monte Carlo quantized integers; options (see mcq_options.MCQOptions.from_args):
    K_weights, K_activations, layer_K={onnx node name: K}, quantize=("weights",
    "activations"), skip=("first",) ("last" and node names allowed; () quantizes all),
    sort=False, normalize="layer"|"channel", order="sign"|"natural" (the weights' CDF order,
    mcq.sample_counts), activation_dtype="auto"|"int16"|"int8"|"uint8" (auto: uint8
    where a layer's input is provably non-negative and K_activations <= 5, unless sparse
    kernels are forced, else int16; uint8: uint8 where non-negative, int8 elsewhere),
    seed=0 (the weights' jitter),
    sparse="auto"|"dense"|"csr"|"bsr" (integer GEMM kernels: chosen per layer from the
    weights' sparsity, or forced).
    `mca` adds Monte Carlo Arithmetic noise for MCDA: True, or a dict with mode ("mca",
    "pb", "rr"), layers (GEMM/conv positions, None = all) and convention ("paper",
    "verificarlo", "mcalib"); the program then takes `t=` (virtual precision) and `seed=`.
    `allocate="sensitivity"` (with `calibration=(inputs, labels)`, one batch) spreads the
    weight samples of uniform K over the layers by their MCDA sensitivity (allocate.py).
    `float_format` rounds GEMM/conv operands to a small float format (MCDA appendix A.2):
    {"weights": (E, M), "activations": (E, M), "rounding": "stochastic" | "nearest"}.
    `shapes` gives concrete sizes for dynamic input dimensions, e.g. {"input": (64, 1, 28,
    28)}. `dump_dir` writes the IR after each pipeline phase.
    `tuning` is a work_dir written by mctvm.tune for the same model, target and options: the
    kernels it has records for get their tuned schedules, the others the default ones
    (metadata["tuning"] lists which).
    """
    program = import_program(model, K, target, shapes=shapes, mca=mca,
                             float_format=float_format, allocate=allocate,
                             calibration=calibration, **mcq_options)
    records = None
    if tuning is not None:
        from .tune import TuningRecords

        records = TuningRecords.open(tuning, program.tuning_key())
    tgt, mod, mcq, mca = program.target, program.mod, program.mcq, program.mca
    outputs = _output_info(mod, frontend.output_names(program.proto),
                           frontend.declared_output_shapes(program.proto))
    metadata = {
        "mctvm_version": __version__,
        "model": program.proto.graph.name,
        "inputs": [info.as_dict() for info in program.inputs],
        "outputs": [info.as_dict() for info in outputs],
        "target": str(tgt),
        "K": K,
    }
    with _build_errors(tgt):
        mod = pipeline.run(mod, tgt, mcq, program.onnx_gemms, dump_dir, mca,
                           program.float_format, tuned=records.passes() if records else ())
        if program.float_format is not None:
            metadata["float_format"] = program.float_format
        if mcq is not None:
            metadata["mcq"] = {**asdict(mcq), "layers": read_layers(mod),
                               "stats_layout": STATS_LAYOUT}
        if mca is not None:
            metadata["mca"] = {**mca, "sites": json.loads(str(mod.attrs[SITES_ATTR]))}
        if records is not None:
            metadata["tuning"] = records.summary(mod)
        metadata["extra_inputs"] = [p.name for p in mod["main"].params if p.name in EXTRA_INPUTS]
        with tgt:
            executable, sources = backend(tgt).build(_with_metadata(mod, metadata), tgt)
    return CompiledModel(executable, tgt, metadata, sources=sources)


@dataclass
class Program:
    """An imported model with its checked options: what the pipeline starts from."""

    proto: object
    target: object
    inputs: list
    mod: object
    K: float | None
    mcq: MCQOptions | None
    mca: dict | None
    float_format: dict | None
    onnx_gemms: list

    def tuning_key(self) -> dict:
        """What tuning records depend on: the model, target, input shapes and options."""
        return json.loads(json.dumps({
            "model_sha256": hashlib.sha256(self.proto.SerializeToString()).hexdigest(),
            "target": str(self.target),
            "inputs": [info.as_dict() for info in self.inputs],
            "K": self.K,
            "mcq": asdict(self.mcq) if self.mcq is not None else None,
            "mca": self.mca,
            "float_format": self.float_format,
        }))


def import_program(model: ModelLike, K=None, target: TargetLike = "llvm", *, shapes=None,
                   mca=None, float_format=None, allocate=None, calibration=None,
                   **mcq_options) -> Program:
    """Check the options, load and import the model (compile's arguments, less the build's)."""
    if allocate is not None:
        mcq_options["layer_K"] = _allocated_K(model, K, allocate, calibration, mcq_options)
    try:
        mcq = MCQOptions.from_args(K, **mcq_options)
    except TypeError as err:
        raise MctvmError(f"{err}; see help(mctvm.compile) for the options") from None
    mca = _mca_options(mca)
    float_format = _float_format_options(float_format)
    tgt = resolve(target)
    proto = frontend.load_model(model)
    proto = frontend.upgrade_opset(proto)
    frontend.check_supported(proto)
    inputs = frontend.resolve_inputs(proto, shapes)
    mod = frontend.import_model(proto, inputs)
    return Program(proto, tgt, inputs, mod, K, mcq, mca, float_format,
                   frontend.gemm_nodes(proto))


def _output_info(mod, names, declared) -> list:
    """Static name, shape and dtype of each output; refuse outputs the importer left unknown.

    An output without a static shape comes from an op whose shape is a run-time input, or an
    optional output the importer does not compute: running it could give a wrong answer.
    """
    import tvm
    from tvm import relax

    ret = mod["main"].ret_ty
    leaves = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    infos = []
    for index, leaf in enumerate(leaves):
        name = names[index] if index < len(names) else f"output_{index}"
        dims = getattr(getattr(leaf, "shape", None), "values", None)
        if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            raise UnsupportedOpError(
                f"output '{name}' has no static shape after import ({leaf}): its shape depends "
                "on a run-time input (make shape, axes, pads and split inputs constants) or "
                "it is an optional output the importer does not compute (drop it from the graph)"
            )
        shape = tuple(int(d) for d in dims)
        if index < len(declared) and declared[index] is not None and not _fits(shape, declared[index]):
            raise UnsupportedOpError(
                f"output '{name}' imports with shape {list(shape)} but the model declares "
                f"{declared[index]}: TVM's importer does not compute this output correctly; "
                "drop it from the graph outputs if it is not needed"
            )
        infos.append(TensorInfo(name, shape, str(leaf.dtype)))
    return infos


def _fits(shape, declared) -> bool:
    return len(shape) == len(declared) and all(
        not isinstance(d, int) or d == s for d, s in zip(declared, shape))


def _with_metadata(mod, metadata):
    """Add a Relax function that returns the program's description as JSON text."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    with bb.function(METADATA_FUNC, params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod[METADATA_FUNC] = bb.get()[METADATA_FUNC].with_attr("global_symbol", METADATA_FUNC)
    return mod


def _allocated_K(model, K, allocate, calibration, mcq_options) -> dict:
    from .allocate import sensitivity_layer_K

    if allocate != "sensitivity":
        raise MctvmError(f"allocate={allocate!r}; the one allocation is 'sensitivity'")
    if K is None or calibration is None or "layer_K" in mcq_options:
        raise MctvmError("allocate='sensitivity' needs K, calibration=(inputs, labels) (one "
                         "labelled batch for MCDA) and no layer_K of your own")
    inputs, labels = calibration
    return sensitivity_layer_K(model, K, inputs, labels, progress=False)


def _mca_options(mca) -> dict | None:
    """The InsertMCANoise keywords for `mca=` (None, True or a dict), checked."""
    if mca is None or mca is False:
        return None
    options = {"mode": "mca", "layers": None, "convention": "paper"}
    if mca is not True:
        unknown = sorted(set(mca) - set(options))
        if unknown:
            raise MctvmError(f"mca= has unknown keys {unknown}; it takes {sorted(options)}")
        options.update(mca)
    if options["mode"] not in MCA_MODES:
        raise MctvmError(f"mca mode {options['mode']!r}; use one of {MCA_MODES}")
    if options["convention"] not in CONVENTIONS:
        raise MctvmError(f"mca convention {options['convention']!r}; use one of {sorted(CONVENTIONS)}")
    if options["layers"] is not None:
        options["layers"] = sorted(int(i) for i in options["layers"])
    return options


def _float_format_options(float_format) -> dict | None:
    """The RoundToFloatFormat keywords for `float_format=`, checked."""
    if float_format is None:
        return None
    options = {"weights": None, "activations": None, "rounding": "stochastic"}
    unknown = sorted(set(float_format) - set(options))
    if unknown:
        raise MctvmError(f"float_format= has unknown keys {unknown}; it takes {sorted(options)}")
    options.update(float_format)
    if options["rounding"] not in ("stochastic", "nearest"):
        raise MctvmError(f"rounding={options['rounding']!r}; use 'stochastic' or 'nearest'")
    for part in ("weights", "activations"):
        if options[part] is not None:
            try:
                format_limits(*options[part])
            except (TypeError, ValueError) as err:
                raise MctvmError(f"float_format[{part!r}]: {err}") from None
            options[part] = list(options[part])
    return options


@contextlib.contextmanager
def _build_errors(target):
    """TVM's failures while lowering or building become one TargetError line."""
    try:
        yield
    except MctvmError:
        raise
    except Exception as err:
        raise TargetError(
            f"building for {target.kind.name} failed: {str(err).strip().splitlines()[-1]}"
        ) from err
