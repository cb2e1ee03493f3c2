"""Round time of a real deployment (SuperLink + SuperNodes on 127.0.0.1), evaluation with training vs apart.

    python -m experiments.bench_deploy --out docs/bench/deploy.json

Starts the deployment of docs/deployment.md on this machine (``experiments.local_flower``:
TLS, SuperNode authentication, one SuperNode per site), then runs the same ATM run twice
with ``atm-fl run . sites``: once with ``evaluate-in-train=true`` (each round's model is
scored by the next round's train message; one message per site per round) and once with
``evaluate-in-train=false`` (Flower's separate evaluate phase; two messages per site per
round). On a SuperNode every message starts a fresh ClientApp process (Python, torch,
model and data loading), and nodes poll for work, so the message count sets the round
time. Reported: run wall time (server clock, ``results.json``), seconds per round
(train phase + evaluate phase), bytes sent per round, and the ratio apart / with training.

All sites share this machine, so each SuperNode's ClientApps get one torch thread
(``OMP_NUM_THREADS=1``, as if each site had a core of its own; ``--omp-threads 0``
leaves it unset): with two processes of two threads each on 2 cores, 4 fine-tuning
steps took 0.9 s in one run of a trial and 19-24 s in the next. The runs go in the
order with, apart, apart, with (``--repeat 2``), so a drift of the machine's speed
does not favour either setting; medians over the repeats are reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from experiments.local_flower import local_deployment
from experiments.machine import machine_info, publish

log = logging.getLogger("experiments.bench_deploy")

SITES = ("mnist", "optdigits")
RUN_CONFIG = ("tasks='mnist,optdigits' max-train-examples=128 max-eval-examples=200 "
              "discovery-timeout=120.0 round-timeout=600.0 save-model=false ")


def summarise(res: dict) -> dict:
    rounds = [r for r in res["rounds"] if r["round"] >= 1]
    per_round = [r["round_seconds"] + r["eval_seconds"] for r in rounds]
    return {"wall_seconds": res["wall_seconds"], "round_seconds": per_round,
            "median_round_seconds": statistics.median(per_round),
            "bytes_sent_per_round": [r["bytes_sent"] for r in res["rounds"]],
            "final_accuracy": res["final"]["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting, in the order with, apart, apart, with, ...")
    ap.add_argument("--run-config", default="", help="extra run-config overrides for both runs")
    ap.add_argument("--out", type=Path, default=Path("runs") / "bench-deploy.json")
    ap.add_argument("--omp-threads", type=int, default=1,
                    help="OMP_NUM_THREADS for the SuperNodes (default 1); 0 leaves it unset (torch takes every core)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the deployment's logs and runs in this directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tmp = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="atm-deploy-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.omp_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)  # inherited by the SuperNodes and their ClientApps
    report: dict = {"machine": machine_info(), "rounds": args.rounds, "sites": list(SITES),
                    "run_config": RUN_CONFIG + args.run_config, "omp_num_threads": args.omp_threads or None,
                    "runs": {"with-train": [], "apart": []}}
    order = [(True, False) if i % 2 == 0 else (False, True) for i in range(args.repeat)]
    try:
        with local_deployment(tmp, SITES) as dep:
            for i, fused in enumerate(f for pair in order for f in pair):
                setting = "with-train" if fused else "apart"
                name = f"{i}-{setting}"
                rc = (f"{RUN_CONFIG} {args.run_config} num-server-rounds={args.rounds} "
                      f"evaluate-in-train={str(fused).lower()} output-dir='{tmp / 'runs'}' run-name='{name}'")
                log.info("run %s: atm-fl run . sites --run-config \"%s\"", name, rc)
                proc = dep.atm_fl_run(rc, timeout=3600)
                if proc.returncode != 0:
                    raise RuntimeError(f"run {name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
                report["runs"][setting].append(summarise(json.loads((tmp / "runs" / name / "results.json").read_text())))
                log.info("%s: %s", name, report["runs"][setting][-1])
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    for what in ("wall_seconds", "median_round_seconds"):
        a, w = (statistics.median(r[what] for r in report["runs"][s]) for s in ("apart", "with-train"))
        report[f"{what}_median"] = {"apart": a, "with-train": w, "ratio_apart_over_with_train": a / w}
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
