"""ONNX in, Relax out: load, check, upgrade the opset, list unsupported ops, fix shapes, import."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper, version_converter

from .errors import ModelError, ShapeError, UnsupportedOpError

ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto]

# Models older than this are upgraded with onnx's version converter before import: TVM's
# converters are written against the newer op semantics (axes as inputs, Pad/Clip inputs...).
MIN_OPSET = 13


@dataclass(frozen=True)
class TensorInfo:
    """Name, concrete shape and dtype of a program input or output."""

    name: str
    shape: tuple
    dtype: str

    def as_dict(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Read a path, bytes or ModelProto into a checked ModelProto."""
    if isinstance(model, onnx.ModelProto):
        proto, origin = model, "the given ModelProto"
    elif isinstance(model, (bytes, bytearray)):
        proto, origin = _parse(bytes(model), "the given bytes"), "the given bytes"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model file '{path}' does not exist; pass the path of an .onnx file")
        proto, origin = _parse(path.read_bytes(), f"'{path}'"), f"'{path}'"
    else:
        raise ModelError(
            f"cannot read a model from a {type(model).__name__}; "
            "pass a path, the file's bytes or an onnx.ModelProto"
        )
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{origin} holds no ONNX graph; is it an ONNX model file?")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelError(
            f"the ONNX checker rejected {origin}: {first}; re-export the model "
            "(for example with a newer exporter) or repair it with onnx tools"
        ) from None
    return proto


def _parse(data: bytes, origin: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelError(
            f"{origin} is not a valid ONNX file ({err}); the file may be truncated or not "
            "an ONNX model: re-download or re-export it"
        ) from None
    return proto


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ('' / 'ai.onnx') operator set the model uses."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert models below MIN_OPSET to MIN_OPSET; keep the original if conversion fails."""
    version = default_opset(model)
    if version >= MIN_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(converted)
        return converted
    except Exception as err:  # the converter raises bare RuntimeErrors on ops it can't map
        warnings.warn(
            f"could not convert opset {version} to {MIN_OPSET} ({str(err).splitlines()[0]}); "
            "importing the model at its own opset"
        )
        return model


def supported_ops() -> set:
    """ONNX op types (default domain) that TVM's Relax importer converts."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map()) | {"Constant", "If"}


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _training_only(node, constants) -> bool:
    """True for nodes in training mode, which an inference compiler must not run as if not."""
    if node.op_type == "BatchNormalization":
        return any(a.name == "training_mode" and a.i for a in node.attribute)
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        flag = constants.get(node.input[2])
        return flag is None or bool(np.asarray(flag).any())
    return False


def _constants(model) -> dict:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one UnsupportedOpError listing every unsupported node, by op and node name."""
    known = supported_ops()
    constants = _constants(model)
    bad = []
    for index, node in enumerate(_all_nodes(model.graph)):
        domain = node.domain or "ai.onnx"
        name = node.name or f"#{index}"
        if domain != "ai.onnx" or node.op_type not in known:
            op = node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"
            bad.append(f"'{op}' at node '{name}'")
        elif _training_only(node, constants):
            bad.append(f"'{node.op_type}' in training mode at node '{name}' (export the model "
                       "in eval mode)")
    if bad:
        raise UnsupportedOpError(
            f"{len(bad)} node(s) use ops that mctvm cannot import: {', '.join(bad)}. "
            f"Supported ops: {', '.join(sorted(known))}. Replace them in the exporter "
            "(or with onnx-simplifier) before compiling."
        )


def graph_inputs(model: onnx.ModelProto) -> list:
    """Graph inputs that are real inputs, not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _dtype(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
        kind = value.type.WhichOneof("value") or "untyped"
        raise UnsupportedOpError(
            f"input '{value.name}' is a {kind.replace('_type', '')}, not a tensor; mctvm "
            "compiles programs over tensors only"
        )
    return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name


def resolve_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> list:
    """Concrete TensorInfo for every input; dynamic dimensions come from `shapes`."""
    shapes = dict(shapes or {})
    inputs = graph_inputs(model)
    names = [value.name for value in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ShapeError(f"shapes= names {unknown}, which are not model inputs; inputs are {names}")
    infos = []
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if not value.type.tensor_type.HasField("shape"):
            declared = None  # rank unknown: take the given shape as it is
        given = shapes.get(value.name)
        if declared is None and given is None:
            raise ShapeError(f"input '{value.name}' has no declared shape; give it with "
                             f"shapes={{'{value.name}': (...)}}")
        if given is None:
            dynamic = [d for d in declared if not isinstance(d, int)]
            if dynamic:
                example = tuple(d if isinstance(d, int) else 1 for d in declared)
                raise ShapeError(
                    f"input '{value.name}' has dynamic dimension(s) {dynamic} "
                    f"(declared shape {declared}); give a concrete size with "
                    f"shapes={{'{value.name}': {example}}} (CLI: --shape "
                    f"{value.name}={','.join(map(str, example))})"
                )
            shape = tuple(declared)
        else:
            shape = tuple(int(d) for d in given)
            fits = declared is None or (len(shape) == len(declared) and all(
                not isinstance(d, int) or d == s for d, s in zip(declared, shape)))
            if not fits:
                raise ShapeError(
                    f"shapes['{value.name}'] = {shape} does not fit the declared shape "
                    f"{declared}; only dynamic dimensions can be set"
                )
            if any(s < 0 for s in shape):
                raise ShapeError(f"shapes['{value.name}'] = {shape} has a negative dimension")
        infos.append(TensorInfo(value.name, shape, _dtype(value)))
    return infos


def output_names(model: onnx.ModelProto) -> list:
    return [value.name for value in model.graph.output]


def declared_output_shapes(model: onnx.ModelProto) -> list:
    """Each output's declared dims (int, or the name of a dynamic dim), None if undeclared."""
    shapes = []
    for value in model.graph.output:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            shapes.append(None)
            continue
        shapes.append([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in tensor.shape.dim])
    return shapes


def constant_names(model: onnx.ModelProto) -> set:
    """Tensors computed from initializers and Constant nodes alone (no graph input)."""
    inputs = {value.name for value in graph_inputs(model)}
    known = {init.name for init in model.graph.initializer} - inputs
    for node in model.graph.node:
        if all(name in known for name in node.input if name) and node.op_type != "RandomNormal":
            known.update(node.output)
    return known


def gemm_nodes(model: onnx.ModelProto) -> list:
    """(node name, 'conv2d' or 'matmul') of each Conv/Gemm/MatMul with a constant weight."""
    constant = constant_names(model)
    kinds = {"Conv": "conv2d", "Gemm": "matmul", "MatMul": "matmul"}
    nodes = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in kinds and len(node.input) > 1 and node.input[1] in constant \
                and node.input[0] not in constant:
            nodes.append((node.name or f"{node.op_type.lower()}_{index}", kinds[node.op_type]))
    return nodes


def import_model(model: onnx.ModelProto, inputs: Sequence[TensorInfo]):
    """Relax IRModule of the model, weights inlined as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {info.name: list(info.shape) for info in inputs}
    dtype_dict = {info.name: info.dtype for info in inputs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict,
                             keep_params_in_input=False)
    except Exception as err:
        message = str(err).strip().splitlines()
        detail = message[-1] if message else type(err).__name__
        raise UnsupportedOpError(
            f"TVM's ONNX importer failed on this model: {type(err).__name__}: {detail}. "
            "The op list passed the support check, so an attribute or input form of one op "
            "is not handled; simplify the model (onnx-simplifier) or report it with the model"
        ) from err
