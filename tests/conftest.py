import numpy as np
import onnxruntime as ort
import pytest


def ort_run(model, feeds: dict) -> list:
    """Run an onnx.ModelProto with onnxruntime on CPU: the independent reference."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
