"""The run-config: every ``[tool.flwr.app.config]`` key, its type, default, check and meaning.

This table is the single source of truth. ``pyproject.toml`` carries the same
defaults (a test keeps them equal) and ``docs/run-config.md`` is generated from it
(``python -m atm_fl.config > docs/run-config.md``; a test keeps it current).

Bad values are refused here, before any training, with a message that names the
key, the value and the fix.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A run-config value that cannot be used; the message names key, value and fix."""


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # human description of the valid range, used in errors

    @property
    def type(self) -> type:
        return type(self.default)


def _positive(x):
    return x > 0


def _non_negative(x):
    return x >= 0


def _within(lo: float, hi: float, *, open_lo: bool = False, integer: bool = False) -> dict[str, Any]:
    """``check`` and ``expect`` for a value in [lo, hi] (or (lo, hi]); splat into ``Key(...)``.

    Every numeric key has an upper bound too: a value like ``alpha=1e30`` is finite but
    can only produce garbage, and is refused before any training.
    """
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    left = "(" if open_lo else "["
    what = "an integer" if integer else "a number"
    return {"check": (lambda x: lo < x <= hi) if open_lo else (lambda x: lo <= x <= hi),
            "expect": f"{what} in {left}{num(lo)}, {num(hi)}]"}


def _path_component(name: str) -> bool:
    # run-name names one directory inside output-dir; '../x' or '/tmp/x' would write elsewhere.
    return name == "" or (name.strip() == name and name not in (".", "..") and not any(c in name for c in "/\\\0"))


# Common names people type for a key (difflib cannot guess these from spelling).
ALIASES = {"learning-rate": "lr", "rounds": "num-server-rounds", "num-rounds": "num-server-rounds",
           "epochs": "local-epochs", "method": "merge-method", "merge": "merge-method", "scale": "alpha",
           "lambda": "alpha", "model": "model-family", "task": "tasks", "name": "run-name", "out": "output-dir",
           "output": "output-dir", "opt": "optimizer", "bs": "batch-size"}


KEYS: tuple[Key, ...] = (
    # --- what is merged, and how -------------------------------------------------
    Key("num-server-rounds", 16, "ATM rounds K. One round with the whole epoch budget is one-shot merging.",
        **_within(1, 10_000, integer=True)),
    Key("tasks", "mnist,optdigits,ising,cahn-hilliard",
        "Comma-separated task names, one client (SuperNode) per task. In simulation partition-id i runs task i.",
        expect="distinct task names (docs/data.md), comma-separated"),
    Key("local-epochs", 0.25, "Epochs each task fine-tunes per round; fractions allowed (budget / rounds).",
        **_within(0, 1000, open_lo=True)),
    # 4, not the paper's 1: second on validation in the image server-optimizer study, after 6,
    # which fell below round 0 on one of five default runs; 4 did on none (docs/results/README.md,
    # "The embedded default's step"). Presets that reproduce the paper pin alpha = 1.0.
    Key("alpha", 4.0, "Scaling of the merged vector: base <- base + alpha * merge(task vectors).",
        **_within(0, 100, open_lo=True)),
    Key("merge-method", "mean", "Server-side merge plugin (see docs/merging.md for the list)."),
    Key("merge-params", "", "Plugin parameters as 'name=value,name=value'; empty means the plugin's defaults."),
    Key("server-optimizer", "none",
        "Server update rule applied to the merged vector m: 'none' (base + alpha * m), 'momentum' (FedAvgM), "
        "'adam', 'yogi', 'adagrad' (FedOpt); alpha is its learning rate. List: atm-fl merges."),
    Key("server-params", "", "Server-optimizer parameters as 'name=value,...' (e.g. 'beta=0.9'); empty = defaults."),
    Key("alpha-schedule", "constant",
        "Server learning-rate schedule over the rounds: alpha * f(p) with p = (round - 1) / num-server-rounds; "
        "'linear': f = 1 - (1 - alpha-end-factor) p; 'cosine': f = e + (1 - e)(1 + cos(pi p)) / 2.",
        choices=("constant", "linear", "cosine")),
    Key("alpha-end-factor", 0.0, "Where 'linear' and 'cosine' schedules head: f at p = 1 (a fraction of alpha).",
        check=lambda x: 0.0 <= x <= 1.0, expect="a number in [0, 1]"),
    Key("epoch-budget", 0.0,
        "Epochs per task over the whole run; when > 0, each round fine-tunes epoch-budget / num-server-rounds "
        "epochs and local-epochs must stay at its default. 0: use local-epochs.",
        **_within(0, 10_000)),
    Key("train-split", "train", "Split the clients fine-tune on: 'train', or 'val' for the paper's valFT ATM.",
        choices=("train", "val")),
    # --- model ---------------------------------------------------------------------
    Key("model-family", "efficientnet-lite0",
        "Model family: 'efficientnet-lite0' (offline ImageNet weights), 'transformers', 'open-clip', or 'tiny-mlp' (tests).",
        choices=("efficientnet-lite0", "transformers", "open-clip", "tiny-mlp")),
    Key("model-name", "", "Family-specific model: transformers checkpoint or 'minilm' (offline); open_clip architecture. Empty = family default."),
    Key("model-pretrained", "", "open_clip pretrained tag ('openai'); 'none' for random weights. Empty = family default."),
    Key("image-size", 64, "Input resolution for image families without their own transforms (EfficientNet-Lite0 features are nearly all dead at 32 px).",
        **_within(32, 2048, integer=True)),
    Key("max-seq-length", 64, "Token limit for text families.", **_within(1, 8192, integer=True)),
    # --- local fine-tuning -----------------------------------------------------------
    Key("optimizer", "adamw", "Client optimiser (see client-optimizer-state).", choices=("adamw", "sgd")),
    Key("client-optimizer-state", "carry",
        "'fresh': a new client optimiser every round (Adam's first steps are then sign-like and large); "
        "'carry': each site keeps its optimiser's moments from round to round in its node state (never sent). "
        "With 'carry' a resumed run restarts the sites' moments.", choices=("fresh", "carry")),
    Key("client-lr-warmup", 16, "Linear client lr warm-up over this many optimiser steps; 0: none.",
        **_within(0, 1_000_000, integer=True)),
    Key("client-lr-warmup-scope", "run",
        "'run': warm up over the site's first steps of the whole run; 'round': over every round's first steps.",
        choices=("run", "round")),
    Key("client-moment-warmup", 8,
        "Batches a fresh client optimiser sees at lr 0 before its first update (forward and backward, no "
        "weight change): Adam's moments are then estimated from several batches, so its first steps are "
        "not sign-like. With 'carry' only in a site's first round; with 'fresh' in every round. Extra "
        "compute; no weight moves, so it is not counted in the epoch budget. 0: none.",
        **_within(0, 10_000, integer=True)),
    Key("head-center", "site",
        "Where a prototype head's centering vector comes from. 'pretrained': the mean of the pretrained "
        "features on the site's head examples, frozen. 'site': the same mean re-estimated from the current "
        "backbone at the start of every round and before every evaluation (a forward pass over the head "
        "examples; never sent). The class prototypes stay frozen either way; open-clip's zero-shot heads "
        "have no center. Why: docs/merging.md, 'The head's center'.", choices=("pretrained", "site")),
    Key("head-center-examples", 128,
        "With head-center = 'site': how many of the site's head examples (a seeded uniform subset, the "
        "same every round) the center is re-estimated on; 0 = all of them. Each round costs one forward pass "
        "over them.", **_within(0, 10**9, integer=True)),
    Key("lr", 1e-4, "Client learning rate.", **_within(0, 10, open_lo=True)),
    Key("weight-decay", 0.0, "Client weight decay.", **_within(0, 1)),
    Key("max-grad-norm", 0.0, "Clip the gradient norm at this value; 0 disables clipping.",
        **_within(0, 1e6)),
    Key("batch-size", 32, "Client batch size.", **_within(1, 4096, integer=True)),
    Key("max-train-examples", 512, "Cap on examples per task in the fine-tuning split (seeded subset); 0 = all.",
        **_within(0, 10**9, integer=True)),
    Key("max-eval-examples", 500, "Cap on examples per task for evaluation (seeded subset); 0 = all.",
        **_within(0, 10**9, integer=True)),
    Key("max-head-examples", 0,
        "Cap on fine-tuning examples whose pretrained features build a prototype head (seeded subset, dealt over "
        "the classes in turn); 0 = all. "
        "open-clip's zero-shot heads use no examples.", **_within(0, 10**9, integer=True)),
    Key("data-in-memory-mb", 256.0,
        "A split whose encoded tensors fit in this many MiB is encoded once and held in memory; a larger one "
        "streams from its dataset batch by batch. 0 streams every split. Same results either way (docs/data.md).",
        **_within(0, 10**7)),
    Key("data-workers", 0,
        "DataLoader worker processes per client that decode and transform streamed batches; 0 = in the client "
        "process.", **_within(0, 64, integer=True)),
    Key("device", "auto", "Client device: 'auto' (cuda if available), 'cpu' or 'cuda'.", choices=("auto", "cpu", "cuda")),
    Key("precision", "fp32",
        "Client arithmetic on CUDA: 'fp32'; 'bf16' (autocast, fp32 weights); 'fp16' (autocast + gradient scaling). "
        "Ignored on the CPU.", choices=("fp32", "bf16", "fp16")),
    # --- robustness ----------------------------------------------------------------------
    Key("min-task-fraction", 1.0,
        "Fraction of tasks whose task vectors a round needs; fewer valid replies stop the run.",
        check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]"),
    Key("max-norm-ratio", 10.0,
        "Refuse a task vector whose L2 norm exceeds this multiple of the previous round's accepted median, or of "
        "this round's median (>= 3 tasks); 0 disables both rules.",
        # Below 1 it would refuse every vector above the median, i.e. half the tasks.
        check=lambda x: x == 0 or 1 <= x <= 1e6, expect="0 (off) or a number in [1, 1000000]"),
    Key("max-update-ratio", 1.0,
        "Refuse a task vector whose L2 norm exceeds this multiple of the base model's norm over "
        "the merged tensors (works from round 1 and with 2 tasks); 0 disables.",
        **_within(0, 1000)),
    # --- upload compression (client side; docs/performance.md) ---------------------------
    Key("upload-compression", "none",
        "Task-vector upload: 'none' (dense float32), 'fp16' (dense float16), or a client-side sparsifier that "
        "sends only kept entries and their int32 indices: 'topk' (largest magnitudes), 'ties-trim' (TIES' trim "
        "step), 'dare' (seeded random drop, kept entries rescaled).",
        choices=("none", "fp16", "topk", "ties-trim", "dare")),
    Key("upload-density", 0.1, "Fraction of entries a sparsifying upload keeps (topk, ties-trim, dare).",
        check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]"),
    Key("upload-values", "fp32", "Value type of sparse uploads: 'fp32' or 'fp16'.", choices=("fp32", "fp16")),
    Key("evaluate-in-train", True,
        "Score each round's merged model at the start of the next round's train message (one message per task "
        "per round instead of two); the last round, and a task whose train reply brought no score, get a separate "
        "evaluate message. false: Flower's separate evaluate phase every round.", ),
    Key("evaluate-split", "test",
        "Split every round's model is scored on: 'test', or 'val' (the validation split carved from train) when "
        "tuning settings, so that the test split never chooses them.", choices=("test", "val")),
    Key("round-timeout", 3600.0, "Seconds the server waits for a round's replies.",
        **_within(0, 604_800, open_lo=True)),  # at most a week
    Key("discovery-timeout", 120.0, "Seconds the server waits for one node per task to connect.",
        **_within(0, 604_800, open_lo=True)),
    # --- outputs -----------------------------------------------------------------------------
    Key("seed", 0, "Seed of data subsets, head initialisation, DARE masks.",
        **_within(0, 2**32 - 1, integer=True)),  # 32-bit, like every seed seeds.derive_seed makes
    Key("output-dir", "runs", "Where results go; relative paths resolve against the server's working directory."),
    Key("run-name", "", "Sub-directory of output-dir for this run; empty = timestamp + merge method.",
        check=_path_component, expect="one directory name: no '/', '\\', '.' or '..', no surrounding spaces "
                                      "(put parent directories into output-dir)"),
    Key("save-model", True, "Save the final merged backbone as safetensors."),
    Key("resume", "",
        "Continue a stopped run from its last complete round (checkpoint/ in the run directory): a run "
        "directory, 'auto' (output-dir/run-name if it has a checkpoint, else start fresh), or empty (fresh run).",
        check=lambda x: x.strip() == x, expect="a path, 'auto' or '' without surrounding spaces"),
)

KEY_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}


@dataclass(frozen=True)
class RunConfig:
    """Validated run-config. Attribute names are the keys with '-' -> '_'."""

    values: Mapping[str, Any]

    def __getattr__(self, item: str) -> Any:
        name = item.replace("_", "-")
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(item)

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.values["tasks"].split(",") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def replace(self, **changes: Any) -> "RunConfig":
        raw = dict(self.values)
        raw.update({k.replace("_", "-"): v for k, v in changes.items()})
        return parse_run_config(raw)


def _finite(value: int | float) -> bool:
    # Flower sends ints as 64-bit: a larger one fails inside flwr with an unhelpful error.
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return math.isfinite(value)


def unknown_key_message(name: str) -> str:
    """Why ``name`` is not a run-config key, with the closest valid keys."""
    norm = name.strip().lower().replace("_", "-")
    if norm in KEY_BY_NAME:
        close = [norm]
    elif ALIASES.get(norm) in KEY_BY_NAME:
        close = [ALIASES[norm]]
    else:
        # A misspelt alias ('lerning-rate') leads to the key the alias stands for.
        near = difflib.get_close_matches(norm, [*KEY_BY_NAME, *ALIASES], n=3, cutoff=0.6)
        close = list(dict.fromkeys(k if k in KEY_BY_NAME else ALIASES[k] for k in near))
        close += [k for k in KEY_BY_NAME if k.split("-")[0] == norm.split("-")[0] and k not in close][:3 - len(close)]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    return (f"unknown run-config key {name!r}{hint} Every key is listed in docs/run-config.md "
            "(or: python -m atm_fl.config).")


def _coerce(key: Key, value: Any) -> Any:
    want = key.type
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"run-config key {key.name!r} = {value!r}: expected true or false.")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if want in (int, float) and number and not _finite(value):
        what = "not a finite number" if isinstance(value, float) else "beyond the 64-bit integers Flower can send"
        shown = repr(value) if len(repr(value)) <= 30 else f"{repr(value)[:12]}...({len(repr(value))} digits)"
        raise ConfigError(f"run-config key {key.name!r} = {shown} is {what}; expected "
                          f"{key.expect or 'a finite number'} (default: {key.name}={key.default!r}).")
    if want is float and number:
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"run-config key {key.name!r} = {value!r} has type {type(value).__name__}; expected "
        f"{want.__name__} (e.g. {key.name}={key.default!r}). "
        + ("Quote strings in --run-config: " + f"\"{key.name}='...'\"" if want is str else "")
    )


def parse_run_config(raw: Mapping[str, Any], *, allow_unknown: bool = False) -> RunConfig:
    """Check and normalise a run-config mapping; missing keys take their defaults.

    Raises
    ------
    ConfigError
        For an unknown key (unless ``allow_unknown``), a wrong type, or a value out of range.
    """
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in KEY_BY_NAME:
            if allow_unknown:
                continue
            raise ConfigError(unknown_key_message(name))
        key = KEY_BY_NAME[name]
        value = _coerce(key, value)
        if key.choices is not None and value not in key.choices:
            raise ConfigError(
                f"run-config key {name!r} = {value!r} is not valid; choose one of: {', '.join(key.choices)}."
            )
        if key.check is not None and not key.check(value):
            problem = "is not valid" if isinstance(value, str) else "is out of range"
            raise ConfigError(f"run-config key {name!r} = {value!r} {problem}; expected {key.expect} "
                              f"(default: {name}={key.default!r}).")
        values[name] = value
    for key in KEYS:
        values.setdefault(key.name, key.default)
    _apply_budget(values)
    cfg = RunConfig(values)
    _check_tasks(cfg)
    return cfg


def _apply_budget(values: dict[str, Any]) -> None:
    """``epoch-budget`` > 0 sets ``local-epochs`` to budget / rounds (the same run split into k rounds)."""
    budget = values["epoch-budget"]
    if budget <= 0:
        return
    per_round = budget / values["num-server-rounds"]
    default = KEY_BY_NAME["local-epochs"].default
    if values["local-epochs"] not in (default, per_round):
        raise ConfigError(
            f"run-config keys 'epoch-budget' = {budget!r} and 'local-epochs' = {values['local-epochs']!r} both set "
            "the epochs per round; keep one: epoch-budget (split over num-server-rounds) or local-epochs.")
    values["local-epochs"] = per_round


def _check_tasks(cfg: RunConfig) -> None:
    from atm_fl.tasks import task_names

    tasks = cfg.task_list
    if not tasks:
        raise ConfigError("run-config key 'tasks' is empty; give a comma-separated list, e.g. tasks='mnist,optdigits'.")
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ConfigError(f"run-config key 'tasks' lists {', '.join(dup)} more than once; each task runs once.")
    known = set(task_names())
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"run-config key 'tasks' = {cfg.tasks!r} names unknown task(s) {', '.join(unknown)}; "
            f"valid tasks: {', '.join(sorted(known))}."
        )


def check_plugins(cfg: RunConfig, *, missing_ok: bool = False) -> None:
    """Resolve the run's merge method (and server optimizer) with their parameters, or raise.

    Runs each plugin's parameter and cross-parameter checks (``MergeMethod.check``).
    The CLI calls it before starting Flower; the ServerApp resolves the same plugins
    (``strategies.server_app.run_atm``) before any message. The ClientApp does not:
    plugins are server-side and a SuperNode need not have them.

    Parameters
    ----------
    cfg : RunConfig
        A config from ``parse_run_config``.
    missing_ok : bool (default: False)
        Only warn about a plugin that is not installed in this environment (``atm-fl run``
        against a remote federation, whose ServerApp may have plugins this machine lacks).

    Raises
    ------
    atm_fl.plugins.PluginError
        A ``ConfigError`` naming the key, the value and the fix.
    """
    from atm_fl import plugins  # here, not at the top: atm_fl.plugins imports this module

    pairs = [("merge-method", "merge-params", plugins.resolve_merge, plugins.merge_methods)]
    if "server-optimizer" in cfg.values:
        pairs.append(("server-optimizer", "server-params", plugins.resolve_server_optimizer,
                      plugins.server_optimizers))
    problems = {name for group in plugins.plugin_problems().values() for name in group}
    for key, params_key, resolve, installed in pairs:
        name = cfg.values[key]
        if missing_ok and name not in installed() and name not in problems:
            log.warning("run-config %s %r is not installed here; the federation's ServerApp will check it",
                        key, name)
            continue
        resolve(name, cfg.values.get(params_key, ""))


# flwr.common.config.parse_config_args's pattern: the pairs Flower sees in an inline --run-config.
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def _toml_problem(err: Exception) -> str:
    # tomli (Flower's parser) gives line and column as attributes; older ones only in the text.
    line, col = getattr(err, "lineno", None), getattr(err, "colno", None)
    msg = getattr(err, "msg", str(err))
    return f"line {line}, column {col}: {msg}" if line else msg


def _toml_value_fix(name: str, value: str) -> str:
    if "," in value and "=" in value:
        return "separate key=value pairs with spaces, not commas"
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isfinite(number):  # '.5' or '5.': Python reads them, TOML does not
        return f"write numbers with a digit on both sides of the point: {name}={number!r}"
    text = value.strip("'\"")
    return f"quote text: {name}='{text}' (numbers look like 0.5, 1e-4 or 3; booleans true or false)"


def read_run_config_args(items: Sequence[str]) -> dict[str, Any]:
    """The overrides Flower reads from ``--run-config`` values (inline pairs or one TOML file).

    Uses Flower's own parser (``flwr.common.config.parse_config_args``), so the keys and
    values are exactly those the run would get, and turns what Flower would reject, or
    silently drop, into a ``ConfigError`` that names the problem and the fix.
    """
    import click
    import tomli
    from flwr.common.config import parse_config_args

    items = [str(i) for i in items]
    if len(items) == 1 and items[0].endswith(".toml"):
        path = Path(items[0]).expanduser()
        if not path.is_file():
            raise ConfigError(f"--run-config file {items[0]!r} does not exist (relative to {Path.cwd()}); "
                              "Flower reads a --run-config value ending in .toml as a file.")
        try:
            return parse_config_args(items)
        except tomli.TOMLDecodeError as err:
            raise ConfigError(f"--run-config file {items[0]}: {_toml_problem(err)}.") from None
        except ValueError as err:  # an array, a date or a table of them: not a run-config value
            raise ConfigError(f"--run-config file {items[0]}: {err}") from None
    for item in items:
        if item.endswith(".toml"):
            raise ConfigError(f"--run-config {item!r} is a TOML file, and Flower takes a file only as the one "
                              "--run-config; move the other key=value pairs into the file.")
        left = _PAIR.sub(" ", item).strip()
        if left:
            raise ConfigError(f"--run-config {item!r}: {left!r} is not a key=value pair (Flower would drop it "
                              "silently); write e.g. --run-config \"alpha=0.5 merge-method='ties'\".")
        seen: set[str] = set()
        for name, value in _PAIR.findall(item):
            if name in seen:
                raise ConfigError(f"--run-config {item!r} sets {name!r} twice; keep one.")
            seen.add(name)
            try:
                tomli.loads(f"{name} = {value}")
            except tomli.TOMLDecodeError:
                raise ConfigError(f"run-config key {name!r} = {value!r} is not a TOML value; "
                                  f"{_toml_value_fix(name, value)}.") from None
    try:
        return parse_config_args(items or None)
    except (click.ClickException, ValueError) as err:  # what the checks above did not foresee
        text = err.format_message() if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(f"--run-config {' '.join(items)!r}: {text}") from None


def app_defaults(app: str | Path) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` defaults of the Flower app in ``app``, flattened as Flower does."""
    import tomli
    from flwr.common.config import flatten_dict

    path = Path(app).expanduser() / "pyproject.toml"
    try:
        doc = tomli.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the Flower app's {path}: {err.strerror}; give the app directory, "
                          "e.g. atm-fl run .") from None
    except tomli.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {_toml_problem(err)}.") from None
    section = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no [tool.flwr.app.config] table; add it: python -m atm_fl.config --toml")
    return flatten_dict(section)


def app_run_config(app: str | Path | None, items: Sequence[str], *,
                   missing_plugins_ok: bool = False) -> RunConfig:
    """The run-config ``flwr run APP --run-config ITEMS`` would give the ServerApp, fully checked.

    Flower fuses the overrides over the app's pyproject defaults; this does the same and
    runs every check the ServerApp runs (``parse_run_config``, ``check_plugins``), so a bad
    config is refused before Flower, a SuperLink or Ray starts.

    Parameters
    ----------
    app : path or None
        The Flower app directory; None (an app on a remote SuperLink) uses ``KEYS``' defaults.
    items : sequence of str
        The ``--run-config`` values, in order.
    missing_plugins_ok : bool (default: False)
        Passed to ``check_plugins``.
    """
    defaults = app_defaults(app) if app is not None else {k.name: k.default for k in KEYS}
    overrides = read_run_config_args(items)
    source = f"--run-config file {items[0]}: " if len(items) == 1 and items[0].endswith(".toml") else ""
    for name in overrides:
        if name not in KEY_BY_NAME:
            raise ConfigError(source + unknown_key_message(name))
        if name not in defaults:
            raise ConfigError(f"run-config key {name!r} is missing from {Path(app) / 'pyproject.toml'} "
                              "[tool.flwr.app.config], so Flower would refuse it; regenerate that block: "
                              "python -m atm_fl.config --toml")
    cfg = parse_run_config({**defaults, **overrides})
    check_plugins(cfg, missing_ok=missing_plugins_ok)
    return cfg


# Checked by check_plugins against what is installed, so not in the Key table.
_PLUGIN_VALID = {"merge-method": "an installed merge method (`atm-fl merges`)",
                 "merge-params": "the merge method's parameters (`atm-fl merges`)",
                 "server-optimizer": "an installed server optimizer (`atm-fl merges`)",
                 "server-params": "the server optimizer's parameters (`atm-fl merges`)"}


def _valid(k: Key) -> str:
    if k.name in _PLUGIN_VALID:
        return _PLUGIN_VALID[k.name]
    if k.choices:
        return "one of: " + ", ".join(k.choices)
    if k.expect:
        return k.expect
    return {bool: "true or false", int: "an integer", float: "a finite number"}.get(k.type, "text")


def markdown_table() -> str:
    """The run-config reference as markdown (docs/run-config.md)."""
    lines = [
        "# Run-config reference",
        "",
        "Generated by `python -m atm_fl.config > docs/run-config.md` from `atm_fl/config.py`.",
        "Override any key with `atm-fl run . --run-config \"key=value other='text'\"` or a TOML file",
        "(`--run-config file.toml`).",
        "",
        "`atm-fl run` checks the whole config before it starts Flower: unknown keys (with the closest",
        "valid one), types, the ranges below (every number must also be finite), the merge method and",
        "server optimizer with their parameters, TOML syntax. It exits with status 2 and one line naming",
        "the key, the value and the fix. The ServerApp runs the same value and plugin checks, so a bare",
        "`flwr run` refuses the same values before any message is sent (an unknown key, though, gets only",
        "Flower's bare \"Invalid run configuration\" there).",
        "",
        "| key | default | valid values | meaning |",
        "|---|---|---|---|",
    ]
    for k in KEYS:
        default = repr(k.default).replace("'", '"') if not isinstance(k.default, bool) else str(k.default).lower()
        lines.append(f"| `{k.name}` | `{default}` | {_valid(k)} | {k.doc} |")
    return "\n".join(lines) + "\n"


def toml_section() -> str:
    """The ``[tool.flwr.app.config]`` block of pyproject.toml, from ``KEYS``."""
    import json

    def value(v):
        return str(v).lower() if isinstance(v, bool) else json.dumps(v)

    return "[tool.flwr.app.config]\n" + "".join(f"{k.name} = {value(k.default)}\n" for k in KEYS)


if __name__ == "__main__":  # pragma: no cover
    import sys

    # `python -m atm_fl.config` writes docs/run-config.md; `--toml` the pyproject block.
    sys.stdout.write(toml_section() if "--toml" in sys.argv else markdown_table())

__all__ = ["ConfigError", "KEYS", "Key", "RunConfig", "parse_run_config", "check_plugins", "read_run_config_args",
           "app_defaults", "app_run_config", "unknown_key_message", "markdown_table"]
