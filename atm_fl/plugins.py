"""The public plugin API of atm-fl: merge methods and server update rules, found by name.

This module is the one place a plugin author imports from; its names are stable::

    from atm_fl.plugins import MergeContext, MergeMethod, Param

    def _halve(vectors, ctx, scale):
        return scale * sum(vectors) / len(vectors)

    halve = MergeMethod("halve", _halve, (Param("scale", 0.5, "Factor on the mean."),),
                        "Half the mean of the task vectors.")

and the plugin's package declares it under the entry-point group ``atm_fl.merge_methods``
(pyproject.toml: ``[project.entry-points."atm_fl.merge_methods"] halve = "my_pkg:halve"``).
Once the package is installed, ``merge-method='halve'`` selects it; nothing is imported
by hand. atm-fl's own methods are registered the same way (its pyproject.toml), so a
built-in and a third-party method are found, listed (``atm-fl merges``) and checked by
the same code. Server update rules (``ServerOptimizer``, group
``atm_fl.server_optimizers``) work alike.

Contract of a merge method
--------------------------
``fn(vectors, ctx, **params) -> Tensor``: ``vectors`` are the round's task vectors, one
1-D float32 CPU tensor per task in the order of ``ctx.tasks``, already checked (right
length, finite); the function must not modify them and returns the merged vector m
(same length). The server applies ``base <- base + alpha * m`` (through the server
update rule). ``ctx.layout`` gives the tensor names and shapes in flatten order, for
methods that work per tensor or per weight matrix (``ctx.tensors(v)``).

Parameters are declared with ``Param`` (name, default, doc, optional ``choices`` or
``check``); ``merge-params='name=value,...'`` sets them, typed like the default.
``check`` on the method sees all parameters together and returns a reason string for
a combination that cannot work (e.g. ``lower >= upper``); it runs before any training.

Registry rules
--------------
* The entry point's name must equal the object's ``name``.
* Two installed objects with the same name are a clash: that name is refused, with
  both sources named, until one package is removed. Other names keep working.
* A plugin that fails to import is reported by ``atm-fl merges`` and refused when
  selected; it does not break the others.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

import torch

from atm_fl.config import ConfigError
from atm_fl.seeds import derive_seed
from atm_fl.task_vector import Layout, unflatten

log = logging.getLogger(__name__)

MERGE_GROUP = "atm_fl.merge_methods"
OPTIMIZER_GROUP = "atm_fl.server_optimizers"

__all__ = ["Param", "MergeContext", "MergeMethod", "ServerOptimizer", "PluginError", "MERGE_GROUP",
           "OPTIMIZER_GROUP", "merge_methods", "get_merge_method", "resolve_merge", "server_optimizers",
           "get_server_optimizer", "resolve_server_optimizer", "parse_params", "register", "refresh",
           "plugin_problems"]


class PluginError(ConfigError):
    """A plugin that cannot be used (unknown, clashing, broken, or given bad parameters)."""


@dataclass(frozen=True)
class Param:
    """One declared plugin parameter.

    Parameters
    ----------
    name : str
        As written in ``merge-params`` / ``server-params``.
    default : bool, int, float or str
        Its value when not set; its type is the parameter's type.
    doc : str
        One line for ``atm-fl merges`` and the docs.
    choices : tuple, optional
        The only valid values.
    check : callable, optional
        ``check(value) -> bool``; ``expect`` describes the valid range in errors.
    """

    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""


@dataclass(frozen=True)
class MergeContext:
    """What a merge method may need besides the vectors.

    Attributes
    ----------
    layout : Layout
        Names and shapes of the merged tensors, in flatten order.
    tasks : tuple of str
        The tasks whose vectors are merged, in the order of the vectors.
    server_round : int
        The global round (1-based).
    seed : int
        The run's seed; ``task_seeds`` derives per (round, task) seeds from it.
    """

    layout: Layout
    tasks: tuple[str, ...]
    server_round: int
    seed: int

    def task_seeds(self) -> list[int]:
        # One reproducible seed per (run seed, round, task): masks differ across rounds
        # and tasks but repeat exactly for the same run (and after a resume).
        return [derive_seed(self.seed, self.server_round, t) for t in self.tasks]

    def tensors(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat vector shaped as the layout's tensors (no copy)."""
        return unflatten(flat, self.layout)


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: ``fn(vectors, ctx, **params) -> merged vector``.

    Parameters
    ----------
    name : str
        The ``merge-method`` value that selects it (kebab-case).
    fn : callable
        The merge; see the module docstring for its contract.
    params : tuple of Param (default: ())
        Declared parameters and their defaults.
    doc : str (default: "")
        One line for listings and docs.
    check : callable, optional
        ``check(params: dict) -> str | None``: a reason the parameter combination cannot
        work, or None. Runs before any training.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Param, ...] = ()
    doc: str = ""
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    kind = "merge method"
    key = "merge-method"
    params_key = "merge-params"

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def __call__(self, vectors: Sequence[torch.Tensor], ctx: MergeContext, **params: Any) -> torch.Tensor:
        return self.fn(vectors, ctx, **{**self.defaults(), **params})


@dataclass(frozen=True)
class ServerOptimizer:
    """A server update rule applied to the merged vector m (the round's pseudo-gradient).

    ``step(m, state, lr, t, **params) -> delta``: the new base is ``base + delta``. ``m``
    is the merged vector (float32, length d); ``state`` is this rule's dict of float32
    buffers of length d, created by ``init(d)`` before the first round and updated in
    place; ``lr`` is the round's server learning rate (run-config ``alpha`` after the
    ``alpha-schedule``); ``t`` is the 1-based count of server steps taken with this
    state. ``state`` is saved in every checkpoint and restored on resume.

    Parameters
    ----------
    name : str
        The ``server-optimizer`` value that selects it.
    step : callable
        See above.
    init : callable (default: no state)
        ``init(d) -> dict[str, Tensor]``.
    params, doc, check
        As for ``MergeMethod`` (``server-params``).
    """

    name: str
    step: Callable[..., torch.Tensor]
    init: Callable[[int], dict[str, torch.Tensor]] = field(default=lambda d: {})
    params: tuple[Param, ...] = ()
    doc: str = ""
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    kind = "server optimizer"
    key = "server-optimizer"
    params_key = "server-params"

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


P = TypeVar("P", MergeMethod, ServerOptimizer)


# --------------------------------------------------------------------------- registries
@dataclass
class _Registry(Generic[P]):
    """Plugins of one kind: every entry point of ``group``, plus ``register``ed objects."""

    group: str
    cls: type
    loaded: dict[str, P] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # name -> where each object came from
    broken: dict[str, str] = field(default_factory=dict)  # entry-point name -> why it failed to load
    _discovered: bool = False

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            where = f"{ep.value} (package {dist})"
            if where in self.sources.get(ep.name, []):
                continue  # the same distribution seen twice on sys.path (e.g. an editable install)
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                self.broken[ep.name] = f"{where}: {type(exc).__name__}: {exc}"
                log.warning("%s plugin %r failed to load: %s", self.group, ep.name, self.broken[ep.name])
                continue
            if not isinstance(obj, self.cls):
                self.broken[ep.name] = f"{where}: is a {type(obj).__name__}, not a {self.cls.__name__}"
                continue
            if obj.name != ep.name:
                self.broken[ep.name] = f"{where}: entry point {ep.name!r} names an object called {obj.name!r}"
                continue
            self._add(obj, where)

    def _add(self, obj: P, where: str) -> None:
        self.sources.setdefault(obj.name, []).append(where)
        if len(self.sources[obj.name]) == 1:
            self.loaded[obj.name] = obj

    def register(self, obj: P, where: str = "registered in this process") -> P:
        self.discover()
        if obj.name in self.sources:
            raise PluginError(f"{obj.kind} {obj.name!r} already exists ({'; '.join(self.sources[obj.name])}); "
                              "choose another name.")
        self._add(obj, where)
        return obj

    def names(self) -> list[str]:
        self.discover()
        return sorted(n for n in self.loaded if len(self.sources[n]) == 1)

    def get(self, name: str) -> P:
        self.discover()
        kind = self.cls.kind
        key = self.cls.key
        if len(self.sources.get(name, [])) > 1:
            raise PluginError(f"run-config key {key!r} = {name!r}: {len(self.sources[name])} installed packages "
                              f"provide a {kind} of that name ({'; '.join(self.sources[name])}); uninstall one "
                              "of them or rename its entry point.")
        if name in self.loaded:
            return self.loaded[name]
        if name in self.broken:
            raise PluginError(f"run-config key {key!r} = {name!r}: the {kind} is installed but cannot be loaded "
                              f"({self.broken[name]}); fix or reinstall its package.")
        names = self.names()
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise PluginError(f"run-config key {key!r} = {name!r} is not a {kind}; {hint}choose one of: "
                          f"{', '.join(names) or 'none installed (pip install -e . registers the built-ins)'}.")


_MERGES: _Registry[MergeMethod] = _Registry(MERGE_GROUP, MergeMethod)
_OPTIMIZERS: _Registry[ServerOptimizer] = _Registry(OPTIMIZER_GROUP, ServerOptimizer)


def refresh() -> None:
    """Forget what was discovered (after installing or removing a plugin package in this process)."""
    import importlib

    importlib.invalidate_caches()
    for reg in (_MERGES, _OPTIMIZERS):
        reg.loaded.clear(), reg.sources.clear(), reg.broken.clear()
        reg._discovered = False


def register(obj: MergeMethod | ServerOptimizer) -> MergeMethod | ServerOptimizer:
    """Add a plugin in this process only (notebooks, tests); deployments use entry points."""
    return (_MERGES if isinstance(obj, MergeMethod) else _OPTIMIZERS).register(obj)


def merge_methods() -> dict[str, MergeMethod]:
    """Every usable merge method, by name."""
    return {n: _MERGES.loaded[n] for n in _MERGES.names()}


def server_optimizers() -> dict[str, ServerOptimizer]:
    """Every usable server update rule, by name."""
    return {n: _OPTIMIZERS.loaded[n] for n in _OPTIMIZERS.names()}


def plugin_problems() -> dict[str, dict[str, str]]:
    """Clashing and broken plugins of each group: {group: {name: reason}} (shown by ``atm-fl merges``)."""
    out: dict[str, dict[str, str]] = {}
    for reg in (_MERGES, _OPTIMIZERS):
        reg.discover()
        probs = {n: f"clash: {'; '.join(s)}" for n, s in reg.sources.items() if len(s) > 1}
        probs.update(reg.broken)
        if probs:
            out[reg.group] = probs
    return out


def get_merge_method(name: str) -> MergeMethod:
    return _MERGES.get(name)


def get_server_optimizer(name: str) -> ServerOptimizer:
    return _OPTIMIZERS.get(name)


# --------------------------------------------------------------------------- parameters
def _convert(plugin: MergeMethod | ServerOptimizer, p: Param, text: str) -> Any:
    want = type(p.default)
    where = f"{plugin.params_key}: {plugin.name} parameter {p.name!r}"
    try:
        if want is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            value: Any = text.lower() in ("true", "1", "yes")
        else:
            value = want(text)
    except ValueError:
        raise PluginError(f"{where} = {text!r} is not a {want.__name__}; e.g. "
                          f"{plugin.params_key}='{p.name}={p.default}'.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise PluginError(f"{where} = {text!r} is not a finite number.")
    if p.choices is not None and value not in p.choices:
        raise PluginError(f"{where} = {value!r}; choose one of: {', '.join(map(str, p.choices))}.")
    if p.check is not None and not p.check(value):
        raise PluginError(f"{where} = {value!r} is out of range; expected {p.expect}.")
    return value


def parse_params(plugin: MergeMethod | ServerOptimizer, text: str) -> dict[str, Any]:
    """Parse ``'name=value,name=value'`` against the plugin's declared parameters and checks."""
    params = plugin.defaults()
    by_name = {p.name: p for p in plugin.params}
    seen: set[str] = set()
    for item in filter(None, (s.strip() for s in str(text).replace(";", ",").split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise PluginError(f"{plugin.params_key} item {item!r} is not 'name=value'.")
        if name not in by_name:
            valid = ", ".join(f"{p.name} (default {p.default})" for p in plugin.params) or "none"
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PluginError(f"{plugin.params_key}: {plugin.name} has no parameter {name!r}; {hint}"
                              f"its parameters: {valid}.")
        if name in seen:
            raise PluginError(f"{plugin.params_key}: {plugin.name} parameter {name!r} is given twice.")
        seen.add(name)
        params[name] = _convert(plugin, by_name[name], value.strip())
    if plugin.check is not None:
        reason = plugin.check(params)
        if reason:
            raise PluginError(f"{plugin.params_key}: {plugin.name} parameters "
                              f"{', '.join(f'{k}={v}' for k, v in params.items())} do not fit together: {reason}")
    return params


def resolve_merge(name: str, params_text: str = "") -> tuple[MergeMethod, dict[str, Any]]:
    """The merge method called ``name`` and its parameters (defaults filled in), checked."""
    method = get_merge_method(name)
    return method, parse_params(method, params_text)


def resolve_server_optimizer(name: str, params_text: str = "") -> tuple[ServerOptimizer, dict[str, Any]]:
    """The server update rule called ``name`` and its parameters, checked."""
    opt = get_server_optimizer(name)
    return opt, parse_params(opt, params_text)


def plugins_markdown(plugins: Mapping[str, MergeMethod | ServerOptimizer]) -> str:
    """A markdown table of plugins, their parameters and defaults (docs and ``atm-fl merges --markdown``)."""
    lines = ["| name | parameters (default) | what it does |", "|---|---|---|"]
    for name, m in sorted(plugins.items()):
        ps = "; ".join(f"`{p.name}` ({p.default}): {p.doc}" for p in m.params) or "none"
        lines.append(f"| `{name}` | {ps} | {m.doc} |")
    return "\n".join(lines) + "\n"
