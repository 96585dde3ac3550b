"""The real architectures shipped in the onnx wheel (onnx/backend/test/data/light)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).resolve().parent / "backend/test/data/light"
# Fast enough for the default test run (compile + run in seconds each); the rest are `slow`.
FAST = ["bvlc_alexnet", "resnet50", "shufflenet", "squeezenet"]
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]


def path(name) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def reference_output(name) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_0.pb")))


def dummy_input(model: onnx.ModelProto) -> np.ndarray:
    """The input onnx's runner feeds light models: arange(n)/n in the input's shape."""
    inits = {i.name for i in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in inits)
    shape = tuple(d.dim_value or 1 for d in value.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def with_random_weights(model: onnx.ModelProto, seed=0) -> onnx.ModelProto:
    """The light models build their weights with ConstantOfShape (all one value); replace each
    with a He-scaled Gaussian initializer so the comparison exercises real arithmetic."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    keep = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or not node.input:
            keep.append(node)
            continue
        shape = _constant_shape(model, node.input[0])
        if shape is None:
            keep.append(node)
            continue
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if len(shape) == 1:  # biases, BN statistics: keep positive-ish, near 1 for variances
            values = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            values = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
    if keep[-1].op_type == "Softmax":  # compare logits: softmax of random logits saturates
        model.graph.output[0].name = keep.pop().input[0]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _constant_shape(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return [int(d) for d in numpy_helper.to_array(init)]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(d) for d in numpy_helper.to_array(node.attribute[0].t)]
    return None
