"""User-facing errors: each names what is wrong and the way out."""


class MctvmError(Exception):
    """Base class of every error mctvm raises for bad input."""


class ModelError(MctvmError, ValueError):
    """The model file or proto is missing, corrupt, or rejected by the ONNX checker."""


class UnsupportedOpError(MctvmError):
    """The model uses operators that the importer cannot convert."""


class ShapeError(MctvmError, ValueError):
    """An input shape is dynamic and unresolved, or `shapes=` does not fit the model."""


class TargetError(MctvmError, ValueError):
    """The target does not exist or cannot be built for here."""


class InputError(MctvmError, ValueError):
    """A call passed inputs of the wrong number, name, shape or dtype."""


class ExportError(MctvmError):
    """The program cannot be exported in the requested form on this machine."""
