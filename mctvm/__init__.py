"""mctvm: compile ONNX models into Monte Carlo quantized TVM programs."""

__version__ = "0.1.0"

from .compiler import compile  # noqa: E402
from .errors import (  # noqa: E402
    ExportError, InputError, MctvmError, ModelError, ShapeError, TargetError, UnsupportedOpError,
)
from .runtime import CompiledModel, LatencyStats, load  # noqa: E402
from .tune import TuningResult, tune  # noqa: E402

__all__ = [
    "compile", "tune", "load", "CompiledModel", "TuningResult", "LatencyStats", "MctvmError",
    "ModelError", "UnsupportedOpError", "ShapeError", "TargetError", "InputError", "ExportError",
]
