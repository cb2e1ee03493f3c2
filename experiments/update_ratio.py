"""How far one round of fine-tuning moves a pretrained model: ||task vector|| / ||base|| per task and lr.

    python -m experiments.update_ratio --lr 1e-4 --lr 1e-3 --out docs/bench/update-ratio.json

The yardstick behind the default ``max-update-ratio`` (docs/robustness.md): the embedded
default (pyproject run-config) with ``--run-config``-style overrides, one round of
``local-epochs`` from the pretrained model, through the client's own ``TaskRuntime``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tomllib
from pathlib import Path

from experiments.machine import machine_info, publish

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiments.update_ratio")


def measure(raw: dict, tasks: list[str]) -> list[dict]:
    from atm_fl.config import parse_run_config
    from atm_fl.runtime import get_task_runtime

    cfg = parse_run_config(raw)
    rows = []
    for task in tasks:
        rt = get_task_runtime(cfg, task)
        base = rt.pretrained
        base_norm = math.sqrt(sum(float((base[k].double() ** 2).sum()) for k in rt.keys))
        _, metrics = rt.train_round(base, 1)
        rows.append({"task": task, "lr": cfg.lr, "base_norm": base_norm, "update_norm": metrics["update-norm"],
                     "ratio": metrics["update-norm"] / base_norm})
        log.info("%s lr %g: |tau| / |base| = %.4g", task, cfg.lr, rows[-1]["ratio"])
    return rows


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.update_ratio", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr", type=float, action="append", help="client lr (repeatable; default: the default's)")
    p.add_argument("--tasks", default="", help="comma-separated tasks (default: the default's)")
    p.add_argument("--max-train-examples", type=int, default=256)
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw["max-train-examples"] = args.max_train_examples
    tasks = [t for t in (args.tasks or raw["tasks"]).split(",") if t]
    rows = []
    for lr in args.lr or [raw["lr"]]:
        rows += measure({**raw, "lr": lr}, tasks)
    result = {"command": "python -m experiments.update_ratio " + " ".join(argv or []), "machine": machine_info(),
              "rows": rows}
    if args.out:
        publish(result, Path(args.out))
    else:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
