"""The run-config: every ``[tool.flwr.app.config]`` key, its type, default, check and meaning.

This table is the single source of truth. ``pyproject.toml`` carries the same
defaults (a test keeps them equal) and ``docs/run-config.md`` is generated from it
(``python -m atm_fl.config > docs/run-config.md``; a test keeps it current).

Bad values are refused here, before any training, with a message that names the
key, the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


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


KEYS: tuple[Key, ...] = (
    # --- what is merged, and how -------------------------------------------------
    Key("num-server-rounds", 4, "ATM rounds K. One round with the whole epoch budget is one-shot merging.",
        check=_positive, expect="an integer >= 1"),
    Key("tasks", "mnist,optdigits,ising,cahn-hilliard",
        "Comma-separated task names, one client (SuperNode) per task. In simulation partition-id i runs task i."),
    Key("local-epochs", 1.0, "Epochs each task fine-tunes per round; fractions allowed (budget / rounds).",
        check=_positive, expect="a number > 0"),
    Key("alpha", 1.0, "Scaling of the merged vector: base <- base + alpha * merge(task vectors).",
        check=lambda x: x != 0, expect="a non-zero number"),
    Key("merge-method", "mean", "Server-side merge plugin (see docs/merging.md for the list)."),
    Key("merge-params", "", "Plugin parameters as 'name=value,name=value'; empty means the plugin's defaults."),
    Key("train-split", "train", "Split the clients fine-tune on: 'train', or 'val' for the paper's valFT ATM.",
        choices=("train", "val")),
    # --- model ---------------------------------------------------------------------
    Key("model-family", "efficientnet-lite0",
        "Model family: 'efficientnet-lite0' (offline ImageNet weights), 'transformers', 'open-clip', or 'tiny-mlp' (tests).",
        choices=("efficientnet-lite0", "transformers", "open-clip", "tiny-mlp")),
    Key("model-name", "", "Family-specific model: transformers checkpoint or 'minilm' (offline); open_clip architecture. Empty = family default."),
    Key("model-pretrained", "", "open_clip pretrained tag ('openai'); 'none' for random weights. Empty = family default."),
    Key("image-size", 64, "Input resolution for image families without their own transforms (EfficientNet-Lite0 features are nearly all dead at 32 px).",
        check=lambda x: x >= 32, expect="an integer >= 32"),
    Key("max-seq-length", 64, "Token limit for text families.", check=_positive, expect="an integer >= 1"),
    # --- local fine-tuning -----------------------------------------------------------
    Key("optimizer", "adamw", "Client optimiser, fresh every round.", choices=("adamw", "sgd")),
    Key("lr", 1e-4, "Client learning rate.", check=_positive, expect="a number > 0"),
    Key("weight-decay", 0.0, "Client weight decay.", check=_non_negative, expect="a number >= 0"),
    Key("max-grad-norm", 0.0, "Clip the gradient norm at this value; 0 disables clipping.",
        check=_non_negative, expect="a number >= 0"),
    Key("batch-size", 32, "Client batch size.", check=_positive, expect="an integer >= 1"),
    Key("max-train-examples", 512, "Cap on examples per task in the fine-tuning split (seeded subset); 0 = all.",
        check=_non_negative, expect="an integer >= 0"),
    Key("max-eval-examples", 500, "Cap on examples per task for evaluation (seeded subset); 0 = all.",
        check=_non_negative, expect="an integer >= 0"),
    Key("device", "auto", "Client device: 'auto' (cuda if available), 'cpu' or 'cuda'.", choices=("auto", "cpu", "cuda")),
    Key("precision", "fp32",
        "Client arithmetic on CUDA: 'fp32'; 'bf16' (autocast, fp32 weights); 'fp16' (autocast + gradient scaling). "
        "Ignored on the CPU.", choices=("fp32", "bf16", "fp16")),
    # --- robustness ----------------------------------------------------------------------
    Key("min-task-fraction", 1.0,
        "Fraction of tasks whose task vectors a round needs; fewer valid replies stop the run.",
        check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]"),
    Key("max-norm-ratio", 10.0,
        "Refuse a task vector whose L2 norm exceeds this multiple of the round's median (>= 3 tasks); 0 disables.",
        check=_non_negative, expect="a number >= 0"),
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
    Key("round-timeout", 3600.0, "Seconds the server waits for a round's replies.",
        check=_positive, expect="a number > 0"),
    Key("discovery-timeout", 120.0, "Seconds the server waits for one node per task to connect.",
        check=_positive, expect="a number > 0"),
    # --- outputs -----------------------------------------------------------------------------
    Key("seed", 0, "Seed of data subsets, head initialisation, DARE masks.", check=_non_negative,
        expect="an integer >= 0"),
    Key("output-dir", "runs", "Where results go; relative paths resolve against the server's working directory."),
    Key("run-name", "", "Sub-directory of output-dir for this run; empty = timestamp + merge method."),
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


def _coerce(key: Key, value: Any) -> Any:
    want = key.type
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"run-config key {key.name!r} = {value!r}: expected true or false.")
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
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
            close = [k for k in KEY_BY_NAME if k.split("-")[0] == name.split("-")[0]]
            raise ConfigError(
                f"unknown run-config key {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                + " See docs/run-config.md for the valid keys."
            )
        key = KEY_BY_NAME[name]
        value = _coerce(key, value)
        if key.choices is not None and value not in key.choices:
            raise ConfigError(
                f"run-config key {name!r} = {value!r} is not valid; choose one of: {', '.join(key.choices)}."
            )
        if key.check is not None and not key.check(value):
            raise ConfigError(f"run-config key {name!r} = {value!r} is out of range; expected {key.expect}.")
        values[name] = value
    for key in KEYS:
        values.setdefault(key.name, key.default)
    cfg = RunConfig(values)
    _check_tasks(cfg)
    return cfg


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


def markdown_table() -> str:
    """The run-config reference as markdown (docs/run-config.md)."""
    lines = [
        "# Run-config reference",
        "",
        "Generated by `python -m atm_fl.config > docs/run-config.md` from `atm_fl/config.py`.",
        "Override any key with `flwr run . --run-config \"key=value other='text'\"` or a TOML file.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for k in KEYS:
        default = repr(k.default).replace("'", '"') if not isinstance(k.default, bool) else str(k.default).lower()
        extra = f" One of: {', '.join(k.choices)}." if k.choices else ""
        lines.append(f"| `{k.name}` | `{default}` | {k.doc}{extra} |")
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

__all__ = ["ConfigError", "KEYS", "Key", "RunConfig", "parse_run_config", "markdown_table"]
