"""Run results: per-round per-task metrics, timings and bytes, as JSON and CSV, plus the summary table.

Files under ``<output-dir>/<run-name>/``:
* ``results.json``: config, model provenance, merged parameter count, per-round records,
  refusals and failures, final summary; rewritten after every round, so a failed run
  still leaves what it measured;
* ``metrics.csv``: one row per (round, task) with every evaluation metric;
* ``model.safetensors`` (+ ``model.json``): the final merged backbone.
* ``checkpoint/``: the base after the last complete round, for ``resume`` (``atm_fl.checkpoint``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    round: int
    eval: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metrics
    train: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metrics
    refused: list[dict[str, str]] = field(default_factory=list)  # {"task", "reason"}
    failed: list[dict[str, str]] = field(default_factory=list)
    merge_seconds: float = 0.0
    round_seconds: float = 0.0  # server: train messages out -> merged model (includes client fine-tuning)
    eval_seconds: float = 0.0  # server: evaluate messages out -> all replies aggregated
    bytes_sent: int = 0
    bytes_received: int = 0
    checkpoint_seconds: float = 0.0
    server: dict[str, float] = field(default_factory=dict)  # alpha, merged_norm, step_norm, base_norm

    def average(self, metric: str = "accuracy") -> float:
        # fsum is exact before its one rounding, so the order the replies came in cannot show
        # in the last bit (a plain sum in arrival order did: 0.8875 vs 0.8875000000000001).
        vals = [m[metric] for m in self.eval.values() if metric in m]
        return math.fsum(vals) / len(vals) if vals else math.nan


class RunRecorder:
    def __init__(self, out_dir: Path, config: dict[str, Any], tasks: list[str], extra: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.tasks = tasks
        self.extra = dict(extra or {})
        self.rounds: dict[int, RoundRecord] = {}
        self.t_start = time.time()
        self.status = "running"
        self.error = ""

    def round(self, r: int) -> RoundRecord:
        return self.rounds.setdefault(r, RoundRecord(r))

    def round_dicts(self, upto: int | None = None) -> list[dict[str, Any]]:
        """The round records (all, or rounds <= ``upto``) as plain dicts (checkpoints keep them)."""
        return [dict(vars(rec)) for r, rec in sorted(self.rounds.items()) if upto is None or r <= upto]

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Take over the round records of a stopped run (resume); later rounds are dropped."""
        known = set(RoundRecord.__dataclass_fields__)
        self.rounds = {int(d["round"]): RoundRecord(**{k: v for k, v in d.items() if k in known}) for d in records}

    def fault_counts(self) -> dict[str, Any]:
        """How many task vectors were refused and how many task replies failed, in total and per task."""
        out: dict[str, Any] = {"refused": 0, "failed": 0, "refused_by_task": {}, "failed_by_task": {}}
        for rec in self.rounds.values():
            for kind, items in (("refused", rec.refused), ("failed", rec.failed)):
                out[kind] += len(items)
                for item in items:
                    by_task = out[f"{kind}_by_task"]
                    by_task[item["task"]] = by_task.get(item["task"], 0) + 1
        return out

    # --- output -----------------------------------------------------------------
    def in_task_order(self, per_task: dict[str, Any]) -> dict[str, Any]:
        """``per_task`` with the run's tasks first, in their order, then any others by name (replies arrive in any order)."""
        rank = {t: i for i, t in enumerate(self.tasks)}
        return {t: per_task[t] for t in sorted(per_task, key=lambda t: (rank.get(t, len(rank)), t))}

    def to_dict(self) -> dict[str, Any]:
        rounds = [dict(vars(rec), eval=self.in_task_order(rec.eval), train=self.in_task_order(rec.train),
                       average_accuracy=rec.average()) for _, rec in sorted(self.rounds.items())]
        return {"status": self.status, "error": self.error, "tasks": self.tasks, "config": self.config,
                **self.extra, "wall_seconds": time.time() - self.t_start, "rounds": rounds,
                "faults": self.fault_counts(), "final": self.final_summary()}

    def final_summary(self) -> dict[str, Any]:
        evaluated = [r for r in sorted(self.rounds) if self.rounds[r].eval]
        if not evaluated:
            return {}
        last = self.rounds[evaluated[-1]]
        return {"round": last.round, "average_accuracy": last.average(),
                "accuracy": {t: m.get("accuracy") for t, m in self.in_task_order(last.eval).items()}}

    def write(self) -> None:
        # Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers are written as null.
        text = json.dumps(strict_json(self.to_dict()), indent=2, allow_nan=False)
        tmp = self.out_dir / "results.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.out_dir / "results.json")
        metric_names = sorted({k for rec in self.rounds.values() for m in rec.eval.values() for k in m})
        with open(self.out_dir / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["round", "task", *metric_names])
            for r, rec in sorted(self.rounds.items()):
                for task, m in sorted(rec.eval.items()):
                    w.writerow([r, task, *[m.get(k, "") for k in metric_names]])

    def summary_table(self) -> str:
        """Per-round accuracy (%) per task and the average, as fixed-width text."""
        tasks = self.tasks
        width = max(8, *(len(t) for t in tasks))
        head = "round " + " ".join(f"{t:>{width}}" for t in tasks) + f" {'average':>{width}}"
        lines = [head, "-" * len(head)]
        for r, rec in sorted(self.rounds.items()):
            if not rec.eval:
                continue
            cells = [f"{100 * rec.eval[t]['accuracy']:>{width}.2f}" if t in rec.eval else f"{'-':>{width}}"
                     for t in tasks]
            lines.append(f"{r:>5} " + " ".join(cells) + f" {100 * rec.average():>{width}.2f}")
        return "\n".join(lines)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (and tuples as lists), for ``allow_nan=False``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        return strict_json(float(value))
    except (TypeError, ValueError):
        return str(value)


def save_backbone(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> None:
    """Save a backbone state dict as safetensors, metadata as strings (safetensors' rule)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
