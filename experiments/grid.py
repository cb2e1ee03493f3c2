"""Sweep grid files: what to run, as a list of cells with stable ids.

A grid file is TOML (format documented in docs/experiments.md):

* ``name`` (str) and ``description`` (str, optional);
* ``preset`` (str, optional): a run-config TOML file (relative to the repository root)
  merged first, e.g. ``experiments/presets/text-minilm.toml``;
* ``[run-config]``: run-config keys applied to every cell (over the preset);
* ``[sweep]``: ``cell-timeout`` (s), ``federation-config`` (for ``atm-fl run``),
  ``baseline-threads`` (torch threads of the in-process baseline cells, default 1);
* ``[[atm]]`` blocks: each is a Cartesian product of ``methods`` × ``budgets`` ×
  ``rounds`` × ``seeds`` run as real Flower simulations (``rounds`` may hold the
  string ``"budget"``: one epoch per round); optional ``train-split`` (``"val"`` for
  valFT ATM), ``alpha`` (a number or a list: one cell per value), ``merge-params`` (table
  method -> ``'name=value,...'``), ``tag``, and ``[atm.run-config]``: the block's own
  run-config keys (a server optimizer, client settings, ``evaluate-split = "val"`` for
  tuning cells), which need a ``tag`` naming the variant in the cell ids;
* ``[[baselines]]`` blocks: ``seeds``, ``budgets``, ``merges`` (one-shot methods, see
  ``experiments.baselines.MERGES``), ``joint`` (bool); optional ``[baselines.replay]``
  (``method``, ``budget``, ``rounds``) for the in-process ATM replay behind the
  cosine/PCA analyses; ``alpha-search`` (``"full"`` or ``"coarse-fine"``);
  ``alpha-grid`` (table method -> list of α) overrides the default grids; ``tune-examples``
  (int) tunes α on the first N validation examples per task; ``reuse-alpha-from-seed``
  (int) gives other seeds the α that seed's cell chose instead of tuning again; ``tag`` and
  ``[baselines.run-config]``: the block's own run-config keys (e.g. ``lr`` for joint training
  with another learning rate), in cells of their own, ``baselines-s<seed>-<tag>``, whose rows
  are labelled ``<method>+<tag>``;
* any block may set ``priority`` (int; ATM blocks default 1, baselines 0): cells run in
  order of priority, then seed, baselines before ATM.

Blocks are unioned: one baselines cell per seed (its budgets and merges are the
union over the blocks naming that seed), one ATM cell per distinct
(method, budget, rounds, seed, train-split, alpha, merge-params).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run-config keys every cell sets itself (from its method, budget, rounds, seed and id).
PER_CELL_KEYS = ("output-dir", "run-name", "seed", "merge-method", "merge-params", "num-server-rounds",
                 "local-epochs", "alpha", "train-split", "save-model", "epoch-budget")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the entry and the fix."""


@dataclass(frozen=True)
class AtmCell:
    method: str
    budget: float
    rounds: int
    seed: int
    train_split: str = "train"
    alpha: float = 1.0
    merge_params: str = ""
    tag: str = ""
    priority: int = field(default=1, compare=False)
    overrides: tuple[tuple[str, Any], ...] = ()  # the block's own run-config keys (named by ``tag``)

    kind = "atm"

    @property
    def local_epochs(self) -> float:
        return self.budget / self.rounds

    @property
    def id(self) -> str:
        parts = ["atm", self.method, f"b{self.budget:g}", f"k{self.rounds}", f"s{self.seed}"]
        if self.train_split == "val":
            parts.append("valft")
        if self.alpha != 1.0:
            parts.append(f"a{self.alpha:g}")
        if self.tag:
            parts.append(self.tag)
        return "-".join(parts)

    def run_config(self, base: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        rc = dict(base)
        rc.update(dict(self.overrides))
        rc.update({"merge-method": self.method, "merge-params": self.merge_params,
                   "num-server-rounds": self.rounds, "local-epochs": float(self.local_epochs), "epoch-budget": 0.0,
                   "alpha": float(self.alpha), "seed": self.seed, "train-split": self.train_split,
                   "output-dir": str(out_dir), "run-name": self.id, "save-model": False})
        return rc


@dataclass(frozen=True)
class BaselineCell:
    seed: int
    budgets: tuple[float, ...]
    merges: dict[float, tuple[str, ...]] = field(hash=False, compare=False, default_factory=dict)
    joint: bool = True
    replay: dict[str, Any] | None = field(hash=False, compare=False, default=None)
    alpha_search: str = "coarse-fine"
    alpha_grid: dict[str, list[float]] = field(hash=False, compare=False, default_factory=dict)
    priority: int = field(default=0, compare=False)
    tune_examples: int = 0
    reuse_alpha_from_seed: int | None = None
    tag: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()  # the block's own run-config keys (named by ``tag``)

    kind = "baselines"

    @staticmethod
    def id_of(seed: int, tag: str = "") -> str:
        return f"baselines-s{seed}" + (f"-{tag}" if tag else "")

    @property
    def id(self) -> str:
        return self.id_of(self.seed, self.tag)

    def run_config(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, **dict(self.overrides)}

    def spec(self) -> dict[str, Any]:
        return {"seed": self.seed, "budgets": list(self.budgets),
                "merges": {f"{b:g}": list(m) for b, m in self.merges.items()}, "joint": self.joint,
                "replay": self.replay, "alpha-search": self.alpha_search, "alpha-grid": self.alpha_grid,
                "tune-examples": self.tune_examples, "tag": self.tag}


@dataclass
class Grid:
    name: str
    description: str
    run_config: dict[str, Any]
    cells: list[Any]
    cell_timeout: float = 3600.0
    federation_config: str | None = None
    source: str = ""
    baseline_threads: int = 1

    @property
    def atm_cells(self) -> list[AtmCell]:
        return [c for c in self.cells if c.kind == "atm"]

    @property
    def baseline_cells(self) -> list[BaselineCell]:
        return [c for c in self.cells if c.kind == "baselines"]


def _list(block: dict, key: str, where: str) -> list:
    if key not in block:
        raise GridError(f"{where}: missing key {key!r}")
    v = block[key]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _block_overrides(block: dict, kind: str, where: str, rc: dict[str, Any]) -> dict[str, Any]:
    """A block's own ``[<kind>.run-config]`` keys, checked before any training."""
    from atm_fl.config import parse_run_config

    overrides = dict(block.get("run-config", {}))
    bad = [k for k in overrides if k in PER_CELL_KEYS]
    if bad:
        raise GridError(f"{where}: run-config key(s) {bad} are set per cell by the sweep; use the block's own "
                        "keys (seeds, budgets; for ATM methods, rounds, alpha, merge-params, train-split)")
    if overrides and not block.get("tag"):
        raise GridError(f"{where}: a block with its own [{kind}.run-config] needs a 'tag' that names the variant "
                        "(it becomes part of the cell ids)")
    parse_run_config({**rc, **overrides})  # refuse bad keys before any training
    return overrides


def load_grid(path: str | Path) -> Grid:
    """Parse and check a grid file (run-config keys are checked with ``atm_fl.config``)."""
    from atm_fl.config import parse_run_config
    from atm_fl import plugins

    path = Path(path)
    raw = tomllib.loads(path.read_text())
    rc: dict[str, Any] = {}
    if raw.get("preset"):
        preset = Path(raw["preset"])
        preset = preset if preset.is_absolute() else ROOT / preset
        if not preset.exists():
            raise GridError(f"{path}: preset {raw['preset']!r} does not exist")
        # Keys the sweep sets per cell are dropped from the preset (a preset is a whole run).
        rc.update({k: v for k, v in tomllib.loads(preset.read_text()).items() if k not in PER_CELL_KEYS})
    for k in raw.get("run-config", {}):
        if k in PER_CELL_KEYS:
            raise GridError(f"{path}: run-config key {k!r} is set per cell by the sweep; remove it")
    rc.update(raw.get("run-config", {}))
    parse_run_config(rc)  # refuse bad keys before any training

    cells: list[Any] = []
    seen: set[str] = set()
    for i, block in enumerate(raw.get("atm", [])):
        where = f"{path}: [[atm]] block {i + 1}"
        params = block.get("merge-params", {})
        overrides = _block_overrides(block, "atm", where, rc)
        for method in _list(block, "methods", where):
            plugins.resolve_merge(method, params.get(method, ""))
            for budget in _list(block, "budgets", where):
                for rounds in _list(block, "rounds", where):
                    k = int(budget) if rounds == "budget" else int(rounds)
                    if rounds == "budget" and float(budget) != int(budget):
                        raise GridError(f"{where}: rounds='budget' needs whole-epoch budgets, got {budget}")
                    if k < 1:
                        raise GridError(f"{where}: rounds must be >= 1 or 'budget', got {rounds!r}")
                    for seed in _list(block, "seeds", where):
                        for alpha in (_list(block, "alpha", where) if "alpha" in block else [1.0]):
                            cell = AtmCell(method, float(budget), k, int(seed),
                                           train_split=block.get("train-split", "train"), alpha=float(alpha),
                                           merge_params=params.get(method, ""), tag=block.get("tag", ""),
                                           priority=int(block.get("priority", 1)),
                                           overrides=tuple(sorted(overrides.items())))
                            if cell.id not in seen:
                                seen.add(cell.id)
                                cells.append(cell)

    from experiments.baselines import MERGES

    # One baselines cell per (seed, tag): blocks naming the same seed and tag are unioned.
    per_seed: dict[tuple[int, str], dict[str, Any]] = {}
    for i, block in enumerate(raw.get("baselines", [])):
        where = f"{path}: [[baselines]] block {i + 1}"
        merges = tuple(block.get("merges", ()))
        bad = [m for m in merges if m not in MERGES]
        if bad:
            raise GridError(f"{where}: unknown merges {bad}; choose from {sorted(MERGES)}")
        tag = str(block.get("tag", ""))
        overrides = _block_overrides(block, "baselines", where, rc)
        for seed in _list(block, "seeds", where):
            d = per_seed.setdefault((int(seed), tag), {"budgets": set(), "merges": {}, "joint": False, "replay": None,
                                                       "alpha-search": "coarse-fine", "alpha-grid": {},
                                                       "priority": None, "tune-examples": 0, "reuse": None,
                                                       "overrides": {}})
            if d["overrides"] and overrides and d["overrides"] != overrides:
                raise GridError(f"{where}: tag {tag!r} already names other run-config keys {d['overrides']}; "
                                "give this variant a tag of its own")
            d["overrides"] = d["overrides"] or overrides
            d["tune-examples"] = int(block.get("tune-examples", d["tune-examples"]))
            if "reuse-alpha-from-seed" in block and int(block["reuse-alpha-from-seed"]) != int(seed):
                d["reuse"] = int(block["reuse-alpha-from-seed"])
            # A seed named by several blocks runs at the most urgent of their priorities.
            p = int(block.get("priority", 0))
            d["priority"] = p if d["priority"] is None else min(d["priority"], p)
            for b in _list(block, "budgets", where):
                d["budgets"].add(float(b))
                d["merges"][float(b)] = tuple(dict.fromkeys(d["merges"].get(float(b), ()) + merges))
            d["joint"] = d["joint"] or bool(block.get("joint", False))
            if block.get("replay"):
                d["replay"] = dict(block["replay"])
            d["alpha-search"] = block.get("alpha-search", d["alpha-search"])
            d["alpha-grid"].update({k: [float(a) for a in v] for k, v in block.get("alpha-grid", {}).items()})
            if d["alpha-search"] not in ("full", "coarse-fine"):
                raise GridError(f"{where}: alpha-search must be 'full' or 'coarse-fine'")
    for (seed, tag), d in sorted(per_seed.items()):
        cells.append(BaselineCell(seed, tuple(sorted(d["budgets"])), d["merges"], d["joint"], d["replay"],
                                  d["alpha-search"], d["alpha-grid"], d["priority"], d["tune-examples"],
                                  d["reuse"], tag, tuple(sorted(d["overrides"].items()))))
    # By block priority (lower first), then seed by seed with the baselines first (they give the
    # per-task references ATM cells are normalised by), so a sweep stopped early has complete seeds.
    cells.sort(key=lambda c: (c.priority, c.seed, c.kind != "baselines"))
    sweep = raw.get("sweep", {})
    return Grid(name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")),
                run_config=rc, cells=cells, cell_timeout=float(sweep.get("cell-timeout", 3600.0)),
                federation_config=sweep.get("federation-config"), source=str(path),
                baseline_threads=int(sweep.get("baseline-threads", 1)))
