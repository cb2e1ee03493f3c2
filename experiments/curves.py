"""Per-round curves of finished runs: does a setting climb from round 0, and where does it end?

    python -m experiments.curves runs/default-a6/s*/results.json
    python -m experiments.curves runs/default-a6/s0/results.json --table 0,1,2,4,8,12,16

For each run (a ``results.json`` written by the ServerApp): seed, alpha, the final average
test accuracy, the lowest round after round 0 minus round 0 (negative: the run fell below
its start, the embedded default's rule in issue 14) and the worst round-to-round change.
Then the mean ± std of the finals over the runs given. ``--table`` prints the per-task
accuracy at the listed rounds as the README's markdown table. ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("experiments.curves")


def curve_stats(res: dict[str, Any]) -> dict[str, Any]:
    """Seed, alpha, per-round averages (%), final, lowest-after-0 minus round 0, worst step."""
    rounds = sorted((r for r in res["rounds"] if r.get("eval")), key=lambda r: r["round"])
    curve = [100 * float(np.mean([m["accuracy"] for m in r["eval"].values()])) for r in rounds]
    if len(curve) < 2:
        raise ValueError("a curve needs round 0 and at least one merged round")
    steps = np.diff(curve)
    cfg = res.get("config", {})
    return {"seed": cfg.get("seed"), "alpha": cfg.get("alpha"), "curve": curve, "final": curve[-1],
            "lowest_minus_round0": min(curve[1:]) - curve[0], "worst_step": float(steps.min()),
            "rounds_that_fell": int((steps < 0).sum())}


def task_table(res: dict[str, Any], at: list[int]) -> list[str]:
    """Markdown: one row per listed round, per-task accuracy (%) and their average."""
    by_round = {r["round"]: r["eval"] for r in res["rounds"] if r.get("eval")}
    seen = list(next(iter(by_round.values())))
    listed = [t for t in str(res.get("config", {}).get("tasks", "")).split(",") if t in seen]
    tasks = listed + [t for t in seen if t not in listed]  # the run-config's order where it has one
    lines = ["| round | " + " | ".join(tasks) + " | average |", "|---|" + "---:|" * (len(tasks) + 1)]
    for k in at:
        if k not in by_round:
            raise ValueError(f"round {k} has no evaluation in this run (rounds: {sorted(by_round)})")
        accs = [100 * by_round[k][t]["accuracy"] for t in tasks]
        lines.append(f"| {k} | " + " | ".join(f"{a:.1f}" for a in accs) + f" | {np.mean(accs):.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files of finished runs")
    p.add_argument("--table", default="", help="rounds for a per-task markdown table of the first run, "
                                               "e.g. 0,1,2,4,8,12,16 (default: none)")
    p.add_argument("--json", default="", help="write every run's numbers to this file (default: none)")
    args = p.parse_args(argv)
    runs = {}
    for f in args.results:
        if not Path(f).is_file():  # a cell still running has no results.json yet
            log.error("%s: no such file; left out", f)
            continue
        res = json.loads(Path(f).read_text())
        if res.get("status") != "finished":
            log.error("%s: status %r, not finished; left out", f, res.get("status"))
            continue
        runs[f] = st = curve_stats(res)
        log.info("%s: seed %s alpha %s: final %.2f, lowest after round 0 %+.2f, worst step %+.2f "
                 "(%d of %d rounds fell)", f, st["seed"], st["alpha"], st["final"], st["lowest_minus_round0"],
                 st["worst_step"], st["rounds_that_fell"], len(st["curve"]) - 1)
    if not runs:
        return 2
    finals = [s["final"] for s in runs.values()]
    log.info("%d runs: final %.2f ± %.2f (std over runs), %d fell below round 0", len(finals), np.mean(finals),
             np.std(finals, ddof=1) if len(finals) > 1 else 0.0,
             sum(s["lowest_minus_round0"] < 0 for s in runs.values()))
    if args.table:
        first = json.loads(Path(next(iter(runs))).read_text())
        print("\n".join(task_table(first, [int(x) for x in args.table.split(",")])))  # the table is the output
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
