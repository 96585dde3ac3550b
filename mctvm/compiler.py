"""mctvm.compile: ONNX model -> Relax -> mctvm passes -> TVM build -> CompiledModel."""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from . import __version__, frontend
from .errors import MctvmError, TargetError, UnsupportedOpError
from .frontend import ModelLike, TensorInfo
from .passes import pipeline
from .runtime import METADATA_FUNC, CompiledModel
from .targets import TargetLike, resolve


def compile(  # pylint: disable=redefined-builtin
    model: ModelLike,
    K: float | None = None,
    target: TargetLike = "llvm",
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dump_dir=None,
) -> CompiledModel:
    """Compile an ONNX model (path, bytes or ModelProto) for `target`.

    K=None builds the float program unchanged (the baseline). `shapes` gives concrete sizes
    for dynamic input dimensions, e.g. {"input": (64, 1, 28, 28)}. `dump_dir` writes the IR
    after each pipeline phase.
    """
    _check_K(K)
    tgt = resolve(target)
    proto = frontend.load_model(model)
    proto = frontend.upgrade_opset(proto)
    frontend.check_supported(proto)
    inputs = frontend.resolve_inputs(proto, shapes)
    mod = frontend.import_model(proto, inputs)
    outputs = _output_info(mod, frontend.output_names(proto), frontend.declared_output_shapes(proto))
    metadata = {
        "mctvm_version": __version__,
        "model": proto.graph.name,
        "inputs": [info.as_dict() for info in inputs],
        "outputs": [info.as_dict() for info in outputs],
        "target": str(tgt),
        "K": K,
    }
    executable, sources = _build(mod, tgt, metadata, dump_dir)
    return CompiledModel(executable, tgt, metadata, sources=sources)


def _check_K(K):
    if K is None:
        return
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not math.isfinite(K) or K <= 0:
        raise MctvmError(
            f"K must be a positive number of samples per value, got {K!r}; "
            "use K=None for the float program, or e.g. K=5 (the paper's ImageNet setting)"
        )
    raise MctvmError("Monte Carlo quantization (K set) is not built yet; compile with K=None")


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


def _build(mod, target, metadata, dump_dir):
    from .targets import backend

    try:
        mod = pipeline.run(mod, target, dump_dir=dump_dir)
        with target:
            return backend(target).build(_with_metadata(mod, metadata), target)
    except MctvmError:
        raise
    except Exception as err:
        raise TargetError(
            f"building for {target.kind.name} failed: {str(err).strip().splitlines()[-1]}"
        ) from err
