"""The ServerApp: validate the config, find one node per task, run ATM, write results.

Data path: run-config -> tasks -> (clients fine-tune -> task vectors) -> strategy merge
-> new base -> per-task evaluation -> results.json / metrics.csv / model.safetensors.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from atm_fl import checkpoint
from atm_fl.config import ConfigError, RunConfig, parse_run_config
from atm_fl.logs import setup_logging
from atm_fl.models import get_family
from atm_fl.results import RunRecorder, save_backbone
from atm_fl.plugins import resolve_merge, resolve_server_optimizer
from atm_fl.task_vector import Layout, mergeable_keys
from strategies.atm import ATMStrategy, RunStopped
from strategies.discovery import Rediscovery, discover_tasks
from strategies.run_control import stop_on_signals, stop_requested

log = logging.getLogger(__name__)
app = ServerApp()


def output_dir(cfg: RunConfig) -> Path:
    base = Path(cfg.output_dir).expanduser()
    if not base.is_absolute():
        base = Path.cwd() / base
    name = cfg.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.merge_method}"
    return base / name


def run_atm(grid: Grid, cfg: RunConfig, stop_check: Callable[[], str | None] | None = None) -> RunRecorder:
    """Run ATM under ``cfg`` on ``grid``; returns the recorder (results are written as it goes).

    ``stop_check() -> reason | None`` is asked between phases; a reason ends the run as ``stopped``.
    """
    # Refuse unknown plugins and bad parameter combinations before any message is sent.
    method, params = resolve_merge(cfg.merge_method, cfg.merge_params)
    optimizer, opt_params = resolve_server_optimizer(cfg.server_optimizer, cfg.server_params)
    family = get_family(cfg)
    backbone = family.build_backbone()
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    layout = Layout.of(state, mergeable_keys(backbone))
    del backbone
    tasks = cfg.task_list
    out = output_dir(cfg)
    resumed = checkpoint.resume_dir(cfg, out)
    ckpt = None
    if resumed is not None:
        ckpt = _load_resumable(resumed, cfg, state)
        out, state = resumed, ckpt.state
    else:
        checkpoint.clear_checkpoint(out)
    done = ckpt.round if ckpt is not None else 0
    recorder = RunRecorder(out, cfg.to_dict(), tasks, extra={
        "model": family.describe(), "merge": {"method": method.name, "params": params},
        "server_optimizer": {"name": optimizer.name, "params": opt_params, "alpha": cfg.alpha,
                             "alpha_schedule": cfg.alpha_schedule, "alpha_end_factor": cfg.alpha_end_factor},
        "merged_parameters": layout.numel, "merged_tensors": len(layout.entries),
        "backbone_tensors": len(state)})
    if ckpt is not None:
        recorder.restore(ckpt.rounds)
        recorder.extra["resumed"] = [*ckpt.extra.get("resumed", []), {"after_round": done, "at": time.time()}]
        checkpoint.restore_rng(ckpt.rng)
        log.info("resuming %s after round %d of %d", out, done, cfg.num_server_rounds)

    strategy: ATMStrategy | None = None

    def save_round(server_round: int, new_state: dict) -> None:
        checkpoint.save_checkpoint(out, server_round, new_state, config=cfg.to_dict(),
                                   rounds=recorder.round_dicts(upto=server_round),
                                   extra={"resumed": recorder.extra.get("resumed", [])},
                                   server_state=strategy.optimizer_state if strategy else None,
                                   server_steps=strategy.optimizer_steps if strategy else 0)

    log.info("ATM run -> %s", out)
    log.info("merging %d of %d backbone tensors (%d parameters) with %s %s, alpha %g", len(layout.entries),
             len(state), layout.numel, method.name, params, cfg.alpha)
    try:
        final = state
        if done < cfg.num_server_rounds:
            task_nodes = discover_tasks(grid, tasks, cfg.discovery_timeout)
            recorder.extra["task_nodes"] = task_nodes
            strategy = ATMStrategy(
                method, params, layout, task_nodes, alpha=cfg.alpha, optimizer=optimizer,
                optimizer_params=opt_params, alpha_schedule=cfg.alpha_schedule,
                alpha_end_factor=cfg.alpha_end_factor, total_rounds=cfg.num_server_rounds,
                min_task_fraction=cfg.min_task_fraction, max_norm_ratio=cfg.max_norm_ratio,
                max_update_ratio=cfg.max_update_ratio, seed=cfg.seed, recorder=recorder, on_round_end=save_round,
                round_offset=done, evaluate_in_train=cfg.evaluate_in_train,
                optimizer_state=ckpt.server_state if ckpt is not None else None,
                optimizer_steps=ckpt.server_steps if ckpt is not None else 0, stop_check=stop_check,
                rediscover=Rediscovery(grid, task_nodes, timeout=min(cfg.discovery_timeout, 30.0)))
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(state),
                                    num_rounds=cfg.num_server_rounds - done, timeout=cfg.round_timeout,
                                    train_config=ConfigRecord({}), evaluate_config=ConfigRecord({"split": cfg.evaluate_split}))
            if result.arrays is not None:
                final = result.arrays.to_torch_state_dict()
        if cfg.save_model:
            save_backbone(final, out / "model.safetensors",
                          {"model": family.describe(), "tasks": tasks, "rounds": cfg.num_server_rounds,
                           "merge": method.name, "merged_keys": layout.keys})
        recorder.status = "finished"
    except RunStopped as exc:
        # Stopped from outside: every complete round is in results.json and the checkpoint
        # (resume='auto' continues); no final model is written, as the run did not finish.
        recorder.status, recorder.error = "stopped", str(exc)
        log.warning("%s; results so far: %s", exc, out)
        return recorder
    except BaseException as exc:
        recorder.status, recorder.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        recorder.write()
    log.info("per-round accuracy (%%):\n%s", recorder.summary_table())
    log.info("results: %s", out)
    return recorder


def _load_resumable(run_dir: Path, cfg: RunConfig, fresh_state: dict) -> checkpoint.Checkpoint:
    """The stopped run's checkpoint, checked against this run's config and model."""
    ckpt = checkpoint.load_checkpoint(run_dir)
    checkpoint.check_compatible(ckpt.config, cfg)
    if ckpt.round > cfg.num_server_rounds:
        raise ConfigError(f"cannot resume {run_dir}: it completed {ckpt.round} rounds, more than "
                          f"num-server-rounds={cfg.num_server_rounds}; raise num-server-rounds.")
    want = {k: (tuple(v.shape), v.dtype) for k, v in fresh_state.items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in ckpt.state.items()}
    if want != got:
        bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
        raise ConfigError(f"cannot resume {run_dir}: its checkpointed model does not fit this run's model family "
                          f"(first differing tensor: {bad[0]!r}).")
    return ckpt


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    cfg = parse_run_config(context.run_config)
    with stop_on_signals():
        run_atm(grid, cfg, stop_check=stop_requested)
