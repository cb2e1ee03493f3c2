"""Server update rules, alpha schedules and the epoch budget, through the real ServerApp and strategy.

* ``momentum`` with beta = 0 is ``none`` bit for bit, end to end;
* a run with ``adam`` stopped in round 2 and resumed ends with exactly the model of an
  uninterrupted run: the optimiser's moments and step count are in the checkpoint;
* the alpha schedule is applied per round and recorded; a resume that would change it is refused;
* ``epoch-budget`` splits the budget over the rounds.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from atm_fl import checkpoint
from atm_fl.config import ConfigError, parse_run_config
from atm_fl.schedules import alpha_at
from clients.task_client import app as client_app
from strategies.atm import RoundFailed
from strategies.server_app import run_atm
from tests.conftest import small_config
from tests.inprocess import InProcessGrid
from tests.test_resume import crash_in_round


def run(tmp_path, name, faults=None, **overrides):
    raw = small_config(tmp_path, **{"run-name": name, **overrides})
    cfg = parse_run_config(raw)
    return run_atm(InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list), faults=faults), cfg), tmp_path / name


def model(out):
    return load_file(str(out / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_momentum_with_beta_zero_is_none_end_to_end(tmp_path, identity):
    run(tmp_path, "none")
    run(tmp_path, "mom0", **{"server-optimizer": "momentum", "server-params": "beta=0"})
    run(tmp_path, "mom9", **{"server-optimizer": "momentum", "server-params": "beta=0.9"})
    assert same(model(tmp_path / "none"), model(tmp_path / "mom0"))
    assert not same(model(tmp_path / "none"), model(tmp_path / "mom9"))


ADAM = {"server-optimizer": "adam", "server-params": "beta1=0.9,beta2=0.99", "alpha": 0.003,
        "alpha-schedule": "cosine", "num-server-rounds": 3}


def test_adam_state_survives_a_stop_and_resume_exactly(tmp_path, identity):
    ref, ref_out = run(tmp_path, "ref", **ADAM)
    ckdir = ref_out / checkpoint.DIRNAME
    assert sorted(p.name for p in ckdir.glob("*.safetensors")) == ["round-0003.safetensors", "server-0003.safetensors"]
    saved = checkpoint.load_checkpoint(ref_out)
    assert saved.server_steps == 3 and set(saved.server_state) == {"first_moment", "second_moment"}

    with pytest.raises(RoundFailed, match="round 2"):
        run(tmp_path, "stopped", faults={2: crash_in_round(2)}, **ADAM)
    assert checkpoint.load_checkpoint(tmp_path / "stopped").server_steps == 1
    run(tmp_path, "stopped", resume="auto", **ADAM)
    assert same(model(ref_out), model(tmp_path / "stopped"))
    # Without the restored moments the resumed rounds would differ: the check can fail.
    run(tmp_path, "fresh-moments", **{**ADAM, "num-server-rounds": 1})
    fresh = checkpoint.load_checkpoint(tmp_path / "fresh-moments")
    assert not torch.equal(fresh.server_state["second_moment"], saved.server_state["second_moment"])


def test_the_schedule_is_applied_per_round_and_recorded(tmp_path, identity):
    rec, out = run(tmp_path, "cos", **{"alpha": 0.8, "alpha-schedule": "cosine", "alpha-end-factor": 0.25,
                                       "num-server-rounds": 3})
    res = json.loads((out / "results.json").read_text())
    got = [r["server"]["alpha"] for r in res["rounds"][1:]]
    want = [0.8 * (0.25 + 0.75 * (1 + math.cos(math.pi * p)) / 2) for p in (0, 1 / 3, 2 / 3)]
    assert got == pytest.approx(want) and got[0] == 0.8 and got[0] > got[1] > got[2]
    # With server-optimizer none the step is alpha * m, so its norm scales with alpha.
    for r in res["rounds"][1:]:
        assert r["server"]["step_norm"] == pytest.approx(r["server"]["alpha"] * r["server"]["merged_norm"], rel=1e-5)


def test_resuming_a_scheduled_run_with_other_rounds_is_refused(tmp_path, identity):
    with pytest.raises(RoundFailed):
        run(tmp_path, "sched", faults={2: crash_in_round(2)}, **{"alpha-schedule": "linear", "num-server-rounds": 3})
    with pytest.raises(ConfigError, match="alpha-schedule"):
        run(tmp_path, "sched", resume="auto", **{"alpha-schedule": "linear", "num-server-rounds": 4})


def test_alpha_at_by_hand():
    assert [alpha_at(2.0, "linear", 0.0, r, 4) for r in (1, 2, 3, 4)] == [2.0, 1.5, 1.0, 0.5]
    assert alpha_at(1.0, "constant", 0.0, 3, 4) == 1.0
    assert alpha_at(1.0, "cosine", 0.0, 1, 2) == 1.0 and alpha_at(1.0, "cosine", 0.0, 2, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        alpha_at(1.0, "cosine", 0.0, 5, 4)


def test_epoch_budget_splits_over_the_rounds():
    cfg = parse_run_config({"epoch-budget": 4.0, "num-server-rounds": 8})
    assert cfg.local_epochs == 0.5
    assert parse_run_config(cfg.to_dict()).local_epochs == 0.5  # a parsed config parses again
    with pytest.raises(ConfigError, match="epoch-budget.*local-epochs"):
        parse_run_config({"epoch-budget": 4.0, "local-epochs": 2.0})
