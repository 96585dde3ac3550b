"""Small ONNX models built in code with random weights, for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def weight(self, stem, shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        scale = np.sqrt(2.0 / fan_in) if scale is None else scale
        return self.const(stem, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def const(self, stem, array):
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, stem=None, **attrs):
        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def model(self, name, inputs, outputs):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def cnn(channels=(8, 16), image=(1, 16, 16), classes=10, batch="batch", seed=0):
    """Conv-ReLU-MaxPool blocks, then Flatten and Gemm: a tiny VGG."""
    g = _Graph(seed)
    x = "input"
    c_in, h, w = image
    for c_out in channels:
        x = g.op("Conv", [x, g.weight("w", (c_out, c_in, 3, 3)), g.weight("b", (c_out,), 0.1)],
                 "conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        x = g.op("Relu", [x])
        x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        c_in, h, w = c_out, h // 2, w // 2
    x = g.op("Flatten", [x], axis=1)
    x = g.op("Gemm", [x, g.weight("fc", (classes, c_in * h * w)), g.weight("fcb", (classes,), 0.1)],
             "fc", transB=1)
    return g.model(
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *image])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, classes])],
    )


def transformer(seq=32, dim=64, heads=4, ffn=256, layers=1, batch="batch", seed=0):
    """Encoder layers in the MiniLM shape: attention (MatMul, Softmax), LayerNorm, GELU (Erf)."""
    g = _Graph(seed)
    head_dim = dim // heads
    x = "input"
    for _ in range(layers):
        q, k, v = (g.op("MatMul", [x, g.weight(s, (dim, dim), dim ** -0.5)]) for s in "qkv")
        split = g.const("shape", np.array([0, seq, heads, head_dim], dtype=np.int64))

        def heads_first(t, perm):
            return g.op("Transpose", [g.op("Reshape", [t, split])], perm=perm)

        qh, kh, vh = heads_first(q, [0, 2, 1, 3]), heads_first(k, [0, 2, 3, 1]), heads_first(v, [0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [qh, kh]), g.const("scale", np.float32(head_dim ** -0.5))])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])
        merge = g.const("shape", np.array([0, seq, dim], dtype=np.int64))
        attn = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), merge])
        attn = g.op("Add", [g.op("MatMul", [attn, g.weight("o", (dim, dim), dim ** -0.5)]), x])
        x = g.op("LayerNormalization", [attn, g.const("gamma", np.ones(dim, np.float32)),
                                        g.const("beta", np.zeros(dim, np.float32))], axis=-1)
        h = g.op("MatMul", [x, g.weight("ff1", (dim, ffn), dim ** -0.5)])
        h = g.op("Add", [h, g.weight("ff1b", (ffn,), 0.02)])
        gelu = g.op("Erf", [g.op("Mul", [h, g.const("rsqrt2", np.float32(2 ** -0.5))])])
        gelu = g.op("Mul", [g.op("Mul", [h, g.const("half", np.float32(0.5))]),
                            g.op("Add", [gelu, g.const("one", np.float32(1.0))])])
        h = g.op("MatMul", [gelu, g.weight("ff2", (ffn, dim), ffn ** -0.5)])
        x = g.op("LayerNormalization", [g.op("Add", [h, x]), g.const("gamma", np.ones(dim, np.float32)),
                                        g.const("beta", np.zeros(dim, np.float32))], axis=-1)
    return g.model(
        "tiny_transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, seq, dim])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, seq, dim])],
    )


def resnet18(image=224, classes=1000, batch="batch", seed=0):
    """ResNet-18 as torchvision exports it: conv7x7/2 + BatchNorm + ReLU + maxpool, four stages
    of two BasicBlocks (64, 128, 256, 512 channels; 1x1 stride-2 downsample convs on the
    shortcut), global average pool, FC. BatchNorm stays in the graph (inference mode, random
    statistics). `image` is the input's height and width (224 for the real network)."""
    g = _Graph(seed)

    def conv_bn(x, c_in, c_out, kernel, stride, relu=True):
        pad = kernel // 2
        x = g.op("Conv", [x, g.weight("w", (c_out, c_in, kernel, kernel))], "conv",
                 kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
        stats = [g.const(s, v.astype(np.float32)) for s, v in (
            ("gamma", g.rng.uniform(0.5, 1.5, c_out)), ("beta", g.rng.normal(0, 0.1, c_out)),
            ("mean", g.rng.normal(0, 0.1, c_out)), ("var", g.rng.uniform(0.5, 1.5, c_out)))]
        x = g.op("BatchNormalization", [x, *stats], "bn", epsilon=1e-5)
        return g.op("Relu", [x]) if relu else x

    x = conv_bn("input", 3, 64, 7, 2)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, c_out in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x if stride == 1 and c_in == c_out else conv_bn(x, c_in, c_out, 1, stride,
                                                                         relu=False)
            y = conv_bn(conv_bn(x, c_in, c_out, 3, stride), c_out, c_out, 3, 1, relu=False)
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            c_in = c_out
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    x = g.op("Gemm", [x, g.weight("fc", (classes, c_in)), g.weight("fcb", (classes,), 0.1)],
             "fc", transB=1)
    return g.model(
        "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, classes])],
    )
