"""Round overhead: a `flwr run` simulation round vs the same fine-tune, merge and evaluation in-process.

    python -m experiments.bench_round --out docs/bench/round.json

Both sides run the embedded default (pyproject run-config) with the same overrides,
for ``--rounds`` rounds. The in-process side builds one ``TaskRuntime`` per task (the
object the ClientApp uses), then per round fine-tunes every task in turn, merges with
the strategy's plugin, applies ``base + alpha * m`` and evaluates every task. The
Flower side is ``atm-fl run`` with one simulated node per task and
``client-resources-num-cpus`` equal to the machine's cores, so Ray runs one client at
a time with every core, as the in-process loop does. A round's time on the Flower
side is ``round_seconds + eval_seconds`` from results.json (server clock, from the
train messages leaving to the evaluations aggregated). Round 0 (start-up, data
loading, head building) is excluded on both sides. The ratio is flwr / in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

log = logging.getLogger("experiments.bench_round")
ROOT = Path(__file__).resolve().parents[1]


def default_config(overrides: dict) -> dict:
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update(overrides)
    return raw


def in_process(raw: dict, rounds: int) -> list[float]:
    """Seconds per round (train every task, merge, apply, evaluate every task)."""
    from atm_fl.config import parse_run_config
    from atm_fl.models import get_family
    from atm_fl.runtime import get_task_runtime
    from atm_fl.task_vector import Layout, apply_update, flatten, mergeable_keys, unflatten
    from strategies import registry

    cfg = parse_run_config(raw)
    method, params = registry.resolve(cfg.merge_method, cfg.merge_params)
    backbone = get_family(cfg).build_backbone()
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    layout = Layout.of(state, mergeable_keys(backbone))
    runtimes = [get_task_runtime(cfg, t) for t in cfg.task_list]
    for rt in runtimes:  # round 0 on both sides: the starting model is evaluated
        rt.evaluate(state)
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        flat = [flatten(rt.train_round(state, r)[0], layout) for rt in runtimes]
        ctx = registry.MergeContext(layout=layout, tasks=tuple(cfg.task_list), server_round=r, seed=cfg.seed)
        state = apply_update(state, unflatten(method(flat, ctx, **params), layout), cfg.alpha)
        for rt in runtimes:
            rt.evaluate(state)
        times.append(time.perf_counter() - t0)
        log.info("in-process round %d: %.1fs", r, times[-1])
    return times


def with_flower(raw_overrides: dict, rounds: int, out: Path, cpus: int) -> tuple[list[float], dict]:
    run_config = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in raw_overrides.items())
    run_config += f" num-server-rounds={rounds} output-dir=\"{out}\" run-name=\"bench-round\" save-model=false"
    ntasks = len(default_config(raw_overrides)["tasks"].split(","))
    cmd = [sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", run_config,
           "--federation-config", f"num-supernodes={ntasks} client-resources-num-cpus={cpus}"]
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads((out / "bench-round" / "results.json").read_text())
    rows = [r for r in res["rounds"] if r["round"] >= 1]
    return [r["round_seconds"] + r["eval_seconds"] for r in rows], rows[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-round.json")
    ap.add_argument("--run-config", default="", help="extra overrides, 'key=value key=value' (TOML values)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = tomllib.loads("\n".join(args.run_config.split())) if args.run_config else {}
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)

    flwr_times, last = with_flower(overrides, args.rounds, args.out.parent / "bench-round-runs", cpus)
    inproc = in_process(default_config({**overrides, "num-server-rounds": args.rounds}), args.rounds)
    ratios = [f / i for f, i in zip(flwr_times, inproc)]
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": cpus, "torch": torch.__version__},
        "overrides": overrides, "rounds": args.rounds,
        "flwr_round_seconds": flwr_times, "inprocess_round_seconds": inproc, "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios),
        "bytes_sent_per_round": last["bytes_sent"], "bytes_received_per_round": last["bytes_received"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
