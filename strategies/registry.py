"""Merge plugins, picked by name with run-config ``merge-method`` / ``merge-params``.

A plugin declares its parameters with defaults; ``merge-params='density=0.15'`` sets
them. Unknown methods and unknown or out-of-range parameters are refused before any
training, with the valid choices in the message. Add a plugin with ``register``:

    register(MergeMethod("my-merge", my_fn, (Param("beta", 0.5, "what beta does"),), "one line"))

where ``my_fn(vectors, ctx, **params) -> Tensor`` takes the round's flattened task
vectors (1-D float32, one per task, same order as ``ctx.tasks``) and returns the merged
vector m; the server then applies ``base + alpha * m``.
"""

from __future__ import annotations


from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from atm_fl import merge as ops
from atm_fl.config import ConfigError
from atm_fl.seeds import derive_seed
from atm_fl.task_vector import Layout


@dataclass(frozen=True)
class MergeContext:
    """What a plugin may need besides the vectors."""

    layout: Layout
    tasks: tuple[str, ...]
    server_round: int
    seed: int

    def task_seeds(self) -> list[int]:
        # One reproducible seed per (run seed, round, task): DARE masks differ across
        # rounds and tasks but repeat exactly for the same run.
        return [derive_seed(self.seed, self.server_round, t) for t in self.tasks]


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    doc: str

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def __call__(self, vectors: Sequence[torch.Tensor], ctx: MergeContext, **params: Any) -> torch.Tensor:
        return self.fn(vectors, ctx, **{**self.defaults(), **params})


_METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MergeMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"run-config key 'merge-method' = {name!r} is not a merge method; "
                          f"choose one of: {', '.join(method_names())}.") from None


def _convert(method: MergeMethod, p: Param, text: str) -> Any:
    want = type(p.default)
    try:
        value = want(text) if want is not bool else text.lower() in ("1", "true", "yes")
    except ValueError:
        raise ConfigError(f"merge-params: {method.name} parameter {p.name!r} = {text!r} is not a "
                          f"{want.__name__}; e.g. merge-params='{p.name}={p.default}'.") from None
    if p.choices is not None and value not in p.choices:
        raise ConfigError(f"merge-params: {method.name} parameter {p.name!r} = {value!r}; "
                          f"choose one of: {', '.join(map(str, p.choices))}.")
    if p.check is not None and not p.check(value):
        raise ConfigError(f"merge-params: {method.name} parameter {p.name!r} = {value!r} is out of range; "
                          f"expected {p.expect}.")
    return value


def parse_merge_params(method: MergeMethod, text: str) -> dict[str, Any]:
    """Parse ``'name=value,name=value'`` against the method's declared parameters."""
    params = method.defaults()
    by_name = {p.name: p for p in method.params}
    for item in filter(None, (s.strip() for s in text.replace(";", ",").split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"merge-params item {item!r} is not 'name=value'.")
        if name not in by_name:
            valid = ", ".join(f"{p.name} (default {p.default})" for p in method.params) or "none"
            raise ConfigError(f"merge-params: {method.name} has no parameter {name!r}; its parameters: {valid}.")
        params[name] = _convert(method, by_name[name], value.strip())
    return params


def resolve(name: str, params_text: str) -> tuple[MergeMethod, dict[str, Any]]:
    method = get_method(name)
    return method, parse_merge_params(method, params_text)


# --- built-in plugins (semantics: docs/merging.md) ---------------------------------------

_density = Param("density", 0.2, "Fraction of each task vector's entries kept by the TIES trim.",
                 check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]")

register(MergeMethod("mean", lambda v, ctx: ops.merge_mean(v), (),
                     "Average of the task vectors (ATM, eq. 7)."))
register(MergeMethod("sum", lambda v, ctx: ops.merge_sum(v), (),
                     "Sum of the task vectors (task arithmetic); tune alpha."))
register(MergeMethod("ties", lambda v, ctx, density: ops.merge_ties(v, density=density), (_density,),
                     "TIES: trim per task, elect signs, disjoint mean."))
register(MergeMethod(
    "breadcrumbs",
    lambda v, ctx, lower, upper: ops.merge_breadcrumbs(v, ctx.layout.entries, lower=lower, upper=upper),
    (Param("lower", 0.85, "Lower magnitude quantile per row; smaller entries are dropped.",
           check=lambda x: 0.0 <= x < 1.0, expect="a number in [0, 1)"),
     Param("upper", 0.993, "Upper magnitude quantile per row; larger entries are dropped.",
           check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]")),
    "Model Breadcrumbs: keep each row's magnitude band (lower, upper], then mean."))
register(MergeMethod(
    "dare",
    lambda v, ctx, p, then, density: ops.merge_dare(v, p=p, then=then, density=density, seeds=ctx.task_seeds()),
    (Param("p", 0.9, "Drop probability per entry; survivors are scaled by 1/(1-p).",
           check=lambda x: 0.0 <= x <= 1.0, expect="a number in [0, 1]"),
     Param("then", "mean", "Merge after the drop: 'mean' (DARE-mean) or 'ties' (DARE-TIES).", choices=("mean", "ties")),
     _density),
    "DARE: seeded random drop with rescale, then mean or TIES."))


def methods_markdown() -> str:
    """The plugin table for docs/merging.md."""
    lines = ["| method | parameters (default) | what it does |", "|---|---|---|"]
    for name in method_names():
        m = _METHODS[name]
        ps = "; ".join(f"`{p.name}` ({p.default}): {p.doc}" for p in m.params) or "none"
        lines.append(f"| `{name}` | {ps} | {m.doc} |")
    return "\n".join(lines) + "\n"
