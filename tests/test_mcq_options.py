"""MCQ options resolve per layer as documented; bad options are clear errors."""

import pytest

import mctvm
from mctvm.mcq_options import MCQOptions

SITES = [("conv1", "conv2d"), ("conv2", "conv2d"), ("fc", "matmul")]


def _ks(plans):
    return [(p.name, p.K_weights, p.K_activations) for p in plans]


def test_float_program_has_no_options():
    assert MCQOptions.from_args(None) is None
    assert MCQOptions.from_args(5, quantize=()) is None


def test_default_skips_the_first_layer():
    plans = MCQOptions.from_args(5).plan(SITES)
    assert _ks(plans) == [("conv1", None, None), ("conv2", 5, 5), ("fc", 5, 5)]


def test_skip_last_names_and_none():
    assert _ks(MCQOptions.from_args(2, skip=("last",)).plan(SITES))[2] == ("fc", None, None)
    assert _ks(MCQOptions.from_args(2, skip="conv2").plan(SITES))[1] == ("conv2", None, None)
    assert all(p.K_weights == 2 for p in MCQOptions.from_args(2, skip=()).plan(SITES))


def test_parts_and_separate_Ks():
    plans = MCQOptions.from_args(None, K_weights=3, K_activations=1, skip=()).plan(SITES)
    assert _ks(plans)[0] == ("conv1", 3, 1)
    plans = MCQOptions.from_args(4, quantize=("weights",), skip=()).plan(SITES)
    assert _ks(plans)[0] == ("conv1", 4, None)
    plans = MCQOptions.from_args(4, quantize="activations", skip=()).plan(SITES)
    assert _ks(plans)[0] == ("conv1", None, 4)


def test_per_layer_K_overrides():
    plans = MCQOptions.from_args(5, layer_K={"fc": 10}).plan(SITES)
    assert _ks(plans) == [("conv1", None, None), ("conv2", 5, 5), ("fc", 10, 10)]
    only = MCQOptions.from_args(None, layer_K={"conv2": 2}).plan(SITES)
    assert _ks(only) == [("conv1", None, None), ("conv2", 2, 2), ("fc", None, None)]


@pytest.mark.parametrize("kwargs,match", [
    ({"K": 5, "quantize": ("weights", "gradients")}, "quantize="),
    ({"K": 5, "normalize": "neuron"}, "normalize="),
    ({"K": 5, "order": "magnitude"}, "order="),
    ({"K": 5, "activation_dtype": "int4"}, "activation_dtype="),
    ({"K": -2}, "K must be a positive"),
    ({"K": 5, "K_weights": 0}, "K_weights must be a positive"),
    ({"K": 5, "layer_K": {"fc": float("nan")}}, "layer_K"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(mctvm.MctvmError, match=match):
        MCQOptions.from_args(**kwargs)


def test_unknown_layer_names_list_the_real_ones():
    with pytest.raises(mctvm.MctvmError, match=r"\['conv1', 'conv2', 'fc'\]"):
        MCQOptions.from_args(5, layer_K={"conv9": 3}).plan(SITES)
    with pytest.raises(mctvm.MctvmError, match="not GEMM/conv nodes"):
        MCQOptions.from_args(5, skip=("pool",)).plan(SITES)


def test_unknown_compile_option_is_a_clear_error():
    from mctvm.models import synthetic

    with pytest.raises(mctvm.MctvmError, match="unexpected keyword argument 'kk'"):
        mctvm.compile(synthetic.cnn(), K=5, kk=3, shapes={"input": (1, 1, 16, 16)})


@pytest.mark.parametrize("dtype", ["auto", "int16", "int8", "uint8"])
def test_activation_dtypes(dtype):
    assert MCQOptions.from_args(5, activation_dtype=dtype).activation_dtype == dtype


def test_activation_dtype_defaults_to_auto():
    assert MCQOptions.from_args(5).activation_dtype == "auto"


def test_bad_activation_dtype_lists_the_choices():
    with pytest.raises(mctvm.MctvmError, match=r"'int16', 'int8', 'uint8'.*non-negative"):
        MCQOptions.from_args(5, activation_dtype="u8")
