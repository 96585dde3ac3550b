"""Run-time inputs that passes add to `main` (the seed, the virtual precision t), and the
layout of the activation statistics it returns."""

from __future__ import annotations

from tvm import relax

SEED_PARAM = "mctvm_seed"
T_PARAM = "mctvm_t"
EXTRA_INPUTS = {SEED_PARAM: ([1], "int64"), T_PARAM: ([1], "int32")}
# main's last output with sampled activations: int32 (sampled layers, batch, 3); recorded in
# the metadata so that a library returning them another way is refused, not misread
STATS_LAYOUT = "layers x batch x 3"


def find_or_make(func, name) -> tuple:
    """(var, is_new): `main`'s parameter `name`, or a new one of the agreed type."""
    existing = next((p for p in func.params if p.name == name), None)
    if existing is not None:
        return existing, False
    shape, dtype = EXTRA_INPUTS[name]
    return relax.Var(name, relax.TensorType(shape, dtype)), True


def with_params(func, new_params, body):
    """`func` with `new_params` appended and `body` (normalized), num_input kept in step."""
    num_input = int(func.attrs.get("num_input", len(func.params))) + len(new_params)
    new_func = relax.Function(list(func.params) + list(new_params), body, attrs=func.attrs)
    return new_func.with_attr("num_input", num_input)
