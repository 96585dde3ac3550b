"""Targets: resolve what the user names into a tvm.target.Target, and find its lowering."""

from __future__ import annotations

import json
from typing import Union

from ..errors import TargetError
from . import cpu, cuda

TargetLike = Union[str, dict, "tvm.target.Target"]

NAMES = {"llvm": cpu, "cpu": cpu, "cuda": cuda}
BACKENDS = {"llvm": cpu, "cuda": cuda}


def resolve(target: TargetLike):
    """A tvm.target.Target for a name ('cpu', 'llvm', 'cuda'), a JSON dict or string, or a Target."""
    import tvm

    if isinstance(target, tvm.target.Target):
        result = target
    elif isinstance(target, str) and target.strip().startswith("{"):
        try:
            return resolve(json.loads(target))
        except json.JSONDecodeError as err:
            raise TargetError(f"target '{target}' is not valid JSON: {err}") from None
    elif isinstance(target, str):
        if target not in NAMES:
            raise TargetError(
                f"unknown target '{target}'; use one of {sorted(NAMES)}, a dict such as "
                '{"kind": "cuda", "arch": "sm_80"} or {"kind": "llvm", "mtriple": '
                '"aarch64-linux-gnu"}, or a tvm.target.Target'
            )
        result = NAMES[target].default_target()
    elif isinstance(target, dict):
        kind = target.get("kind")
        if kind not in BACKENDS:
            raise TargetError(
                f"target kind {kind!r} is not supported; supported kinds: {sorted(BACKENDS)}"
            )
        try:
            result = BACKENDS[kind].complete_target(dict(target))
        except (ValueError, TypeError, RuntimeError) as err:
            raise TargetError(f"invalid target {target}: {str(err).splitlines()[0]}") from None
    else:
        raise TargetError(f"cannot make a target from a {type(target).__name__}: {target!r}")
    if result.kind.name not in BACKENDS:
        raise TargetError(
            f"target kind '{result.kind.name}' is not supported; supported kinds: {sorted(BACKENDS)}"
        )
    return result


def backend(target):
    """The module (cpu or cuda) that lowers, runs and exports for this target."""
    return BACKENDS[target.kind.name]
