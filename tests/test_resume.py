"""Checkpoint and resume: a run stopped mid-way and resumed ends with the uninterrupted run's model.

The server is stopped in round 2 of 3, once by a client crash (the round fails and the run
stops) and once by the server process itself dying in the middle of the round (an
exception out of the Grid). Each time the run is resumed from its checkpoint of round 1
and must end with exactly the weights and per-round accuracies of a run that was never
interrupted: on the CPU every step is deterministic, the clients derive their example
stream and RNG from (seed, task, global round), so equality is exact, not approximate.
"""

import json

import pytest
import torch
from flwr.app import Error, Message
from safetensors.torch import load_file

from atm_fl import checkpoint
from atm_fl.config import ConfigError, parse_run_config
from strategies.server_app import run_atm
from clients.task_client import app as client_app
from strategies.atm import RoundFailed
from tests.conftest import small_config
from tests.inprocess import InProcessGrid

ROUNDS = 3


def config(tmp_path, name, **overrides):
    return small_config(tmp_path, **{"run-name": name, "num-server-rounds": ROUNDS, **overrides})


def run(raw, faults=None, grid_cls=InProcessGrid):
    cfg = parse_run_config(raw)
    grid = grid_cls(client_app, raw, num_nodes=len(cfg.task_list), faults=faults)
    return run_atm(grid, cfg), grid


def crash_in_round(stop_round):
    def fault(msg, reply):
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == stop_round:
            return Message(Error(code=1, reason="node went down"), reply_to=msg)
        return reply
    return fault


class DyingGrid(InProcessGrid):
    """The server process dies (an exception out of the Grid) while round 2's train messages are out."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == "train" and int(m.content["config"]["server-round"]) == 2
               for m in messages):
            raise KeyboardInterrupt("server stopped")
        return super().send_and_receive(messages, timeout=timeout)


def load_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def accuracies(res):
    return {r["round"]: {t: m["accuracy"] for t, m in r["eval"].items()} for r in res["rounds"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.inprocess import flower_identity

    tmp = tmp_path_factory.mktemp("ref")
    with flower_identity():
        run(config(tmp, "ref"))
    return tmp / "ref"


@pytest.mark.parametrize("stop", ["client-crash", "server-dies"])
def test_resume_after_a_stop_gives_the_uninterrupted_model(tmp_path, identity, uninterrupted, stop):
    raw = config(tmp_path, "stopped")
    if stop == "client-crash":
        with pytest.raises(RoundFailed, match="round 2"):
            run(raw, faults={2: crash_in_round(2)})
    else:
        with pytest.raises(KeyboardInterrupt):
            run(raw, grid_cls=DyingGrid)
    out = tmp_path / "stopped"
    assert load_results(out)["status"] == "failed"
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["round"] == 1
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["round-0001.safetensors", "state.json"]

    rec, grid = run({**raw, "resume": "auto"})
    # Only rounds 2 and 3 ran again, numbered globally: clients continue their example streams.
    assert {int(m.content["config"]["server-round"]) for m in grid.sent if m.metadata.message_type != "query"} \
        == {2, 3}
    res, ref = load_results(out), load_results(uninterrupted)
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1, 2, 3]
    assert res["resumed"][0]["after_round"] == 1
    assert accuracies(res) == accuracies(ref)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(uninterrupted / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ck = load_file(str(out / "checkpoint" / "round-0003.safetensors"))
    assert all(torch.equal(ck[k], b[k]) for k in b)


def test_resume_refuses_changed_training_settings_and_missing_checkpoints(tmp_path, identity):
    raw = config(tmp_path, "stopped", **{"num-server-rounds": 1})
    run(raw)
    with pytest.raises(ConfigError, match="lr: checkpoint 0.01, now 0.02"):
        run({**raw, "resume": "auto", "lr": 0.02, "num-server-rounds": 2})
    with pytest.raises(ConfigError, match="has no checkpoint"):
        run({**raw, "resume": str(tmp_path / "nothing-here")})
    with pytest.raises(ConfigError, match="needs a fixed 'run-name'"):
        run({**raw, "resume": "auto", "run-name": ""})
    # Extending a finished run is a resume too: one more round, the first one kept.
    rec, grid = run({**raw, "resume": str(tmp_path / "stopped"), "num-server-rounds": 2})
    assert sorted(rec.rounds) == [0, 1, 2] and rec.status == "finished"


def test_auto_without_a_checkpoint_starts_fresh(tmp_path, identity):
    rec, grid = run(config(tmp_path, "new", **{"resume": "auto", "num-server-rounds": 1}))
    assert sorted(rec.rounds) == [0, 1] and "resumed" not in rec.extra


def test_a_half_written_checkpoint_is_ignored_and_a_damaged_one_refused(tmp_path, monkeypatch):
    state = {"w": torch.arange(4.0)}
    checkpoint.save_checkpoint(tmp_path, 1, state, config={}, rounds=[])
    # The server dies after writing round 2's model file but before replacing state.json.
    real_replace = checkpoint.os.replace

    def die_on_state(src, dst):
        if str(dst).endswith("state.json"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", die_on_state)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 2, {"w": torch.zeros(4)}, config={}, rounds=[])
    monkeypatch.undo()
    ck = checkpoint.load_checkpoint(tmp_path)
    assert ck.round == 1 and torch.equal(ck.state["w"], state["w"])
    # A model file that no longer matches its recorded hash is refused, not loaded.
    (tmp_path / "checkpoint" / "round-0001.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="damaged"):
        checkpoint.load_checkpoint(tmp_path)


def test_rng_state_round_trips():
    import random

    import numpy as np

    saved = checkpoint.rng_state()
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.restore_rng(json.loads(json.dumps(saved)))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws


def test_resume_with_site_head_centers_gives_the_uninterrupted_model(tmp_path, identity):
    """head-center = site: the centers are a function of the received base and the site's data, so
    a resumed run re-derives them and gives the same model as an uninterrupted one."""
    site = {"head-center": "site", "head-center-examples": 16}
    run(config(tmp_path, "ref", **site))
    raw = config(tmp_path, "stopped", **site)
    with pytest.raises(RoundFailed, match="round 2"):
        run(raw, faults={2: crash_in_round(2)})
    run({**raw, "resume": "auto"})
    res, ref = load_results(tmp_path / "stopped"), load_results(tmp_path / "ref")
    assert res["status"] == "finished" and accuracies(res) == accuracies(ref)
    a, b = load_file(str(tmp_path / "stopped" / "model.safetensors")), load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    # And the centers did something: the same run with frozen centers scores differently.
    run(config(tmp_path, "frozen"))
    assert accuracies(load_results(tmp_path / "frozen")) != accuracies(ref)
