"""ATM in one process, for quick studies: the clients' ``TaskRuntime``, the registry's merge and server rule.

    python -m experiments.replay --set epoch-budget=4 --set num-server-rounds=16 \\
        --set max-train-examples=256 --set max-eval-examples=300 --splits val,test --out /tmp/r.json

Same fine-tuning (``TaskRuntime.train_round``), merge plugin, server update rule and alpha
schedule as a ``flwr run``, without Flower's messaging, so a setting can be tried in a
fraction of the time; every round's model is scored on each split in ``--splits``, and the
task vectors' norms and pairwise cosines are recorded (what the oscillation study reads).
Published numbers come from real ``flwr run`` sweeps (experiments/sweep.py); this tool is
for exploring which settings deserve a sweep.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiments.replay")


def replay(raw: dict[str, Any], splits: tuple[str, ...] = ("test",)) -> dict[str, Any]:
    """Run ATM under run-config ``raw`` in-process; per-round records (round 0 = the starting model)."""
    from atm_fl.config import parse_run_config
    from atm_fl.plugins import MergeContext, resolve_merge, resolve_server_optimizer
    from atm_fl.runtime import get_task_runtime
    from atm_fl.schedules import alpha_at
    from atm_fl.task_vector import Layout, apply_update, flatten, unflatten

    cfg = parse_run_config(raw)
    tasks = cfg.task_list
    method, params = resolve_merge(cfg.merge_method, cfg.merge_params)
    opt, opt_params = resolve_server_optimizer(cfg.server_optimizer, cfg.server_params)
    rts = {t: get_task_runtime(cfg, t) for t in tasks}
    base = dict(rts[tasks[0]].pretrained)
    layout = Layout.of(base, rts[tasks[0]].keys)
    state, rounds = opt.init(layout.numel), []
    # The sites' carried optimiser states (client-optimizer-state = carry), as each ClientApp keeps them.
    carried = {t: {} for t in tasks} if cfg.client_optimizer_state == "carry" else {t: None for t in tasks}

    def score(r: int, extra: dict[str, Any]) -> None:
        rec = {"round": r, **extra}
        for split in splits:
            acc = {t: rts[t].evaluate(base, split)["accuracy"] for t in tasks}
            rec[split] = {"accuracy": acc, "average": sum(acc.values()) / len(acc)}
        rounds.append(rec)
        log.info("round %d: %s", r, ", ".join(f"{s} {100 * rec[s]['average']:.2f}" for s in splits))

    score(0, {})
    t0 = time.perf_counter()
    previous: torch.Tensor | None = None  # the last round's step, for the oscillation signature
    for r in range(1, cfg.num_server_rounds + 1):
        vecs, losses = [], {}
        for t in tasks:
            tv, metrics = rts[t].train_round(base, r, optimizer_state=carried[t])
            vecs.append(flatten({k: v.float() for k, v in tv.items()}, layout))
            losses[t] = metrics["loss"]
        merged = method(vecs, MergeContext(layout, tuple(tasks), r, cfg.seed), **params)
        lr = alpha_at(cfg.alpha, cfg.alpha_schedule, cfg.alpha_end_factor, r, cfg.num_server_rounds)
        delta = opt.step(merged, state, lr, r, **opt_params)
        base = apply_update(base, unflatten(delta, layout), 1.0)
        v = torch.stack(vecs).double()
        unit = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cos = unit @ unit.T
        off = cos[~torch.eye(len(tasks), dtype=torch.bool)]
        # cos(step_r, step_{r-1}) < 0: this round undoes part of the last one (a period-2 oscillation).
        turn = float(torch.nn.functional.cosine_similarity(delta.double(), previous.double(), dim=0)) \
            if previous is not None else None
        previous = delta.clone()
        score(r, {"alpha": lr, "train_loss": losses, "norms": [float(x) for x in v.norm(dim=1)],
                  "cosine_with_previous_step": turn,
                  "merged_norm": float(merged.norm()), "step_norm": float(delta.norm()),
                  "mean_cosine": float(off.mean()) if off.numel() else 0.0})
    return {"config": cfg.to_dict(), "splits": list(splits), "rounds": rounds, "seconds": time.perf_counter() - t0}


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override (repeat)")
    p.add_argument("--splits", default="test", help="comma-separated: val, test (default test)")
    p.add_argument("--out", default=None, help="JSON file for the per-round records")
    args = p.parse_args(argv)
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for item in args.set:
        key, _, value = item.partition("=")
        raw[key.strip()] = _value(value.strip())
    result = replay(raw, tuple(s for s in args.splits.split(",") if s))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
