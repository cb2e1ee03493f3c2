"""Round overhead: a `flwr run` simulation round vs the same fine-tune, merge and evaluation in-process.

    python -m experiments.bench_round --out docs/bench/round.json

Both sides run the embedded default (pyproject run-config) with the same overrides,
for ``--rounds`` rounds. The in-process side builds one ``TaskRuntime`` per task (the
object the ClientApp uses), then per round fine-tunes every task in turn, merges with
the strategy's plugin, applies ``base + alpha * m`` and evaluates every task, timing
fine-tuning+merge and evaluation apart. The Flower side is ``atm-fl run`` with one
simulated node per task and ``client-resources-num-cpus`` equal to the machine's
cores, so Ray runs one client at a time with every core, as the in-process loop does.

With ``evaluate-in-train`` (the default) Flower's round r carries the evaluation of
round r-1's model, so its ``round_seconds`` (server clock: train messages out -> merged
model) is compared with in-process eval(r-1) + train(r) + merge(r), and the last
round's separate evaluate phase (``eval_seconds``) with in-process eval(R). Round 1
is left out on both sides: on the Flower side it includes the clients' start-up (data
loading, head building). With ``--run-config "evaluate-in-train=false"`` a Flower round
is ``round_seconds + eval_seconds`` against train(r) + merge(r) + eval(r). The headline
ratio is total Flower time / total in-process time over the compared rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

from experiments.machine import cpu_by_process, machine_info, publish

log = logging.getLogger("experiments.bench_round")
ROOT = Path(__file__).resolve().parents[1]


def default_config(overrides: dict) -> dict:
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update(overrides)
    return raw


def in_process(raw: dict, rounds: int) -> tuple[list[float], list[float]]:
    """Per round 1..rounds: (seconds to train every task + merge + apply, seconds to evaluate every task)."""
    from atm_fl.config import parse_run_config
    from atm_fl.models import get_family
    from atm_fl.runtime import get_task_runtime
    from atm_fl.task_vector import Layout, apply_update, flatten, mergeable_keys, unflatten
    from atm_fl import plugins

    cfg = parse_run_config(raw)
    method, params = plugins.resolve_merge(cfg.merge_method, cfg.merge_params)
    backbone = get_family(cfg).build_backbone()
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    layout = Layout.of(state, mergeable_keys(backbone))
    runtimes = [get_task_runtime(cfg, t) for t in cfg.task_list]
    for rt in runtimes:  # round 0 on both sides: the starting model is evaluated
        rt.evaluate(state)
    train, evaluate = [], []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        flat = [flatten(rt.train_round(state, r)[0], layout) for rt in runtimes]
        ctx = plugins.MergeContext(layout=layout, tasks=tuple(cfg.task_list), server_round=r, seed=cfg.seed)
        state = apply_update(state, unflatten(method(flat, ctx, **params), layout), cfg.alpha)
        t1 = time.perf_counter()
        for rt in runtimes:
            rt.evaluate(state)
        train.append(t1 - t0)
        evaluate.append(time.perf_counter() - t1)
        log.info("in-process round %d: train+merge %.1fs, evaluate %.1fs", r, train[-1], evaluate[-1])
    return train, evaluate


def paired(res: dict, train: list[float], evaluate: list[float]) -> tuple[list[float], list[float], list[str]]:
    """(Flower seconds, in-process seconds, label) for the same work, rounds 2..R (module docstring)."""
    rows = {r["round"]: r for r in res["rounds"]}
    last = max(rows)
    flwr_s, local_s, labels = [], [], []
    fused = bool(res["config"].get("evaluate-in-train", True))
    for r in range(2, last + 1):
        if fused:
            flwr_s.append(rows[r]["round_seconds"])
            local_s.append(evaluate[r - 2] + train[r - 1])
            labels.append(f"round {r}: eval({r - 1}) + train({r})")
        else:
            flwr_s.append(rows[r]["round_seconds"] + rows[r]["eval_seconds"])
            local_s.append(train[r - 1] + evaluate[r - 1])
            labels.append(f"round {r}: train({r}) + eval({r})")
    if fused:
        flwr_s.append(rows[last]["eval_seconds"])
        local_s.append(evaluate[last - 1])
        labels.append(f"final eval({last})")
    return flwr_s, local_s, labels


def with_flower(raw_overrides: dict, rounds: int, out: Path, cpus: int) -> tuple[dict, dict[str, float]]:
    """results.json of the Flower run, and the CPU seconds each process used during it."""
    run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in raw_overrides.items())  # TOML values
    run_config += f" num-server-rounds={rounds} output-dir=\"{out}\" run-name=\"bench-round\" save-model=false"
    ntasks = len(default_config(raw_overrides)["tasks"].split(","))
    cmd = [sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", run_config,
           "--federation-config", f"num-supernodes={ntasks} client-resources-num-cpus={cpus}"]
    log.info("running: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT)
    cpu = cpu_by_process(proc)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return json.loads((out / "bench-round" / "results.json").read_text()), cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per side (>= 2; round 1 is not compared)")
    ap.add_argument("--client-cpus", type=int, default=0,
                    help="client-resources-num-cpus on the Flower side; 0 (default) = all cores, one client at a time")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-round.json")
    ap.add_argument("--run-config", default="", help="extra overrides, 'key=value key=value' (TOML values)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = tomllib.loads("\n".join(args.run_config.split())) if args.run_config else {}
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)

    if args.rounds < 2:
        ap.error("--rounds must be >= 2: round 1 includes the clients' start-up and is not compared")
    res, cpu = with_flower(overrides, args.rounds, ROOT / "runs" / "bench-round-runs", args.client_cpus or cpus)
    cpu0 = time.process_time()
    train, evaluate = in_process(default_config({**overrides, "num-server-rounds": args.rounds}), args.rounds)
    cpu_inprocess = time.process_time() - cpu0
    flwr_s, local_s, labels = paired(res, train, evaluate)
    mid = res["rounds"][2]  # a steady-state round (with fused evaluation, no evaluate messages)
    report = {
        "machine": machine_info(), "overrides": overrides, "rounds": args.rounds,
        "client_cpus": args.client_cpus or cpus,
        "evaluate_in_train": bool(res["config"]["evaluate-in-train"]),
        "compared": [{"what": w, "flwr_seconds": f, "inprocess_seconds": i, "ratio": f / i}
                     for w, f, i in zip(labels, flwr_s, local_s)],
        "ratio_total": sum(flwr_s) / sum(local_s),
        "ratio_median": statistics.median(f / i for f, i in zip(flwr_s, local_s)),
        "inprocess_train_merge_seconds": train, "inprocess_eval_seconds": evaluate,
        "bytes_sent_round_2": mid["bytes_sent"], "bytes_received_round_2": mid["bytes_received"],
        "bytes_per_round": {r["round"]: [r["bytes_sent"], r["bytes_received"]] for r in res["rounds"]},
        # Server phases against what the clients report for their own work in them: the gap is messaging.
        "flwr_phases": [{"round": r["round"], "train_phase_seconds": r["round_seconds"],
                         "eval_phase_seconds": r["eval_seconds"],
                         "clients_train_seconds": sum(m.get("seconds", 0.0) for m in r["train"].values()),
                         "clients_eval_seconds_of_this_model": sum(m.get("seconds", 0.0) for m in r["eval"].values())}
                        for r in res["rounds"]],
        # Whole runs, start-up included: the Flower run's processes vs this process's in-process loop.
        "cpu_seconds_by_process_flwr_run": cpu, "cpu_seconds_inprocess_run": cpu_inprocess,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
