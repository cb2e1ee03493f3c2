"""Client optimiser options: carried Adam moments and lr warm-up.

With one task, ATM with ``mean`` and alpha = 1 moves the base to the fine-tuned model every
round, so carrying the optimiser state from round to round must give the same model as
one uninterrupted fine-tuning run of the same total length (up to float rounding of
base + (fine-tuned - base)); a fresh optimiser every round must not.
"""

import pytest
import torch

from atm_fl.config import parse_run_config
from atm_fl.runtime import get_task_runtime
from atm_fl.task_vector import apply_update
from atm_fl.train import FinetuneSettings
from clients.task_client import app as client_app
from strategies.server_app import run_atm
from tests.conftest import small_config
from tests.inprocess import InProcessGrid


def two_rounds(tmp_path, carry: bool):
    cfg = parse_run_config(small_config(tmp_path, tasks="mnist", **{"local-epochs": 1.0}))
    rt = get_task_runtime(cfg, "mnist")
    state = {} if carry else None
    base = dict(rt.pretrained)
    for r in (1, 2):
        tv, _ = rt.train_round(base, r, optimizer_state=state)
        base = apply_update(base, tv, 1.0)
    return base, state


def continuous(tmp_path):
    cfg = parse_run_config(small_config(tmp_path, tasks="mnist", **{"local-epochs": 2.0}))
    rt = get_task_runtime(cfg, "mnist")
    tv, _ = rt.train_round(dict(rt.pretrained), 1)
    return apply_update(dict(rt.pretrained), tv, 1.0)


def test_carried_moments_continue_one_fine_tuning_run(tmp_path):
    carried, state = two_rounds(tmp_path, carry=True)
    fresh, _ = two_rounds(tmp_path, carry=False)
    one_run = continuous(tmp_path)
    assert any(k.endswith("exp_avg_sq") for k in state) and any(k.endswith(".step") for k in state)
    steps = {float(v) for k, v in state.items() if k.endswith(".step")}
    assert steps == {6.0}  # 48 examples, batch 16: 3 steps per round, counted on across rounds
    for k in one_run:
        torch.testing.assert_close(carried[k], one_run[k], rtol=1e-4, atol=1e-6)
    assert any((fresh[k] - one_run[k]).abs().max() > 1e-4 for k in one_run)


def test_warmup_ramps_the_lr_over_the_run_or_every_round():
    run = FinetuneSettings(epochs=1, batch_size=8, lr=1.0, warmup_steps=4)
    assert [run.lr_at(1, s, 3) for s in (1, 2, 3)] == [0.25, 0.5, 0.75]
    assert [run.lr_at(2, s, 3) for s in (1, 2, 3)] == [1.0, 1.0, 1.0]
    per_round = FinetuneSettings(epochs=1, batch_size=8, lr=1.0, warmup_steps=2, warmup_scope="round")
    assert [per_round.lr_at(r, s, 3) for r in (1, 2) for s in (1, 2, 3)] == [0.5, 1.0, 1.0] * 2
    assert FinetuneSettings(epochs=1, batch_size=8, lr=0.1).lr_at(1, 1, 3) == 0.1


def test_sites_carry_their_state_through_the_clientapp(tmp_path, identity):
    def run(name, **overrides):
        raw = small_config(tmp_path, **{"run-name": name, **overrides})
        cfg = parse_run_config(raw)
        grid = InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list))
        return run_atm(grid, cfg), grid

    fresh, _ = run("fresh")
    carry, grid = run("carry", **{"client-optimizer-state": "carry"})
    # Round 1 starts from the same fresh optimiser; round 2 continues it.
    def losses(rec, r):
        return {t: m["loss"] for t, m in rec.rounds[r].train.items()}
    assert losses(fresh, 1) == losses(carry, 1)
    assert all(losses(fresh, 2)[t] != losses(carry, 2)[t] for t in losses(fresh, 2))
    for node, ctx in grid.contexts.items():
        assert "client-optimizer" in ctx.state.array_records
        assert ctx.state.config_records["client-optimizer-meta"]["round"] == 2


@pytest.mark.parametrize("value", ["later", ""])
def test_bad_carry_value_is_refused(value):
    from atm_fl.config import ConfigError

    with pytest.raises(ConfigError, match="client-optimizer-state"):
        parse_run_config({"client-optimizer-state": value})


def first_step(tmp_path, **overrides):
    """One Adam step (16 of 48 examples, batch 16) from the pretrained model: (|change| / lr, state)."""
    raw = small_config(tmp_path, tasks="mnist", **{"local-epochs": 1 / 3, "lr": 0.01,
                                                    "client-optimizer-state": "carry", **overrides})
    rt = get_task_runtime(parse_run_config(raw), "mnist")
    state = {}
    tv, metrics = rt.train_round(dict(rt.pretrained), 1, optimizer_state=state)
    assert metrics["steps"] == 1.0
    ratio = torch.cat([v.flatten().abs() for v in tv.values()]) / 0.01
    return ratio[ratio > 0], state


def test_moment_warmup_gathers_moments_before_the_first_step(tmp_path):
    plain, plain_state = first_step(tmp_path)
    warm, warm_state = first_step(tmp_path, **{"client-moment-warmup": 3})
    # A fresh Adam's first step is sign-like: every weight with a gradient moves by lr exactly.
    assert plain.median() > 0.99
    # After 3 batches at lr 0 the step is lr * m / sqrt(v): about lr at most (the two bias
    # corrections differ slightly), much less where the batches' gradients disagree.
    assert warm.max() < 1.1 and warm.median() < 0.9
    steps = {float(v) for k, v in warm_state.items() if k.endswith(".step")}
    assert steps == {4.0} and {float(v) for k, v in plain_state.items() if k.endswith(".step")} == {1.0}


def test_moment_warmup_moves_no_weight_and_runs_once_with_carry(tmp_path):
    raw = small_config(tmp_path, tasks="mnist", **{"local-epochs": 1.0, "client-optimizer-state": "carry",
                                                    "client-moment-warmup": 2, "lr": 0.0})
    with pytest.raises(Exception):
        parse_run_config(raw)  # lr must be > 0; use a tiny lr to see that the warm-up itself moves nothing
    raw["lr"] = 1e-30
    rt = get_task_runtime(parse_run_config(raw), "mnist")
    state, base = {}, dict(rt.pretrained)
    tv, _ = rt.train_round(base, 1, optimizer_state=state)
    assert all(float(v.abs().max()) < 1e-20 for v in tv.values())
    assert {float(v) for k, v in state.items() if k.endswith(".step")} == {5.0}  # 2 at lr 0 + 3 steps
    rt.train_round(base, 2, optimizer_state=state)
    assert {float(v) for k, v in state.items() if k.endswith(".step")} == {8.0}  # no second warm-up
