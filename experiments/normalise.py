"""Normalise one sweep's rows by another sweep's fine-tuned-alone accuracies.

A sweep run with ``--only`` (a few ATM cells added to a study later) has no baselines
cell of its own, so its ``results.csv`` has ``normalized = nan``. When the study's
fine-tuned-alone rows were made at the same setting, seeds and budget, on a CPU that
gives the same numbers (check one cell that both sweeps ran), this fills them in::

    python -m experiments.normalise runs/sweeps/text-atm-study/results.csv \\
        --reference docs/results/text-atm-study/results.csv --out cells.csv

Per task: accuracy ÷ the reference's ``finetuned`` accuracy for the same seed, budget and
task (NaN where there is none). It logs, per method, the mean ± std over seeds of the
average accuracy and of the average normalised accuracy.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from experiments.baselines import mean_of, normalized_accuracy

log = logging.getLogger("experiments.normalise")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def normalise(rows: list[dict[str, str]], reference: list[dict[str, str]]) -> list[dict[str, str]]:
    """``rows`` with ``normalized`` recomputed from ``reference``'s fine-tuned-alone rows."""
    ref: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
    for r in reference:
        if r["method"] == "finetuned":
            ref[(r["seed"], float(r["budget"]))][r["task"]] = float(r["accuracy"])
    out = []
    for r in rows:
        key = (r["seed"], float(r["budget"]))
        norm = normalized_accuracy({r["task"]: float(r["accuracy"])}, ref.get(key, {}))[r["task"]]
        out.append({**r, "normalized": repr(norm) if not math.isnan(norm) else "nan"})
    return out


def summary(rows: list[dict[str, str]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{method label: {"accuracy" | "normalized": (mean, std, seeds)}} over seeds of per-cell averages."""
    # A baselines cell holds several methods: one entry per (cell, method).
    cells: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(lambda: {"acc": {}, "norm": {}})
    label = {}
    for r in rows:
        key = (r["cell"], r["method"])
        cells[key]["acc"][r["task"]] = float(r["accuracy"])
        cells[key]["norm"][r["task"]] = float(r["normalized"])
        label[key] = f"{r['method']} k={r['rounds']} α={r['alpha'] or '-'}"
    by_method: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"accuracy": [], "normalized": []})
    for cid, c in cells.items():
        by_method[label[cid]]["accuracy"].append(mean_of(c["acc"]))
        by_method[label[cid]]["normalized"].append(mean_of(c["norm"]))
    out = {}
    for m, v in by_method.items():
        out[m] = {k: (float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0, len(x)) for k, x in v.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.normalise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="results.csv of the cells to normalise")
    p.add_argument("--reference", required=True, help="results.csv holding the fine-tuned-alone ('finetuned') rows")
    p.add_argument("--out", required=True, help="where to write the normalised rows (CSV)")
    args = p.parse_args(argv)
    rows = normalise(read_rows(Path(args.rows)), read_rows(Path(args.reference)))
    if not rows:
        log.error("%s has no rows", args.rows)
        return 2
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for m, s in sorted(summary(rows).items()):
        (a, sa, n), (z, sz, _) = s["accuracy"], s["normalized"]
        log.info("%s: %d seeds, accuracy %.1f ± %.1f %%, normalised %.3f ± %.3f", m, n, 100 * a, 100 * sa, z, sz)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
