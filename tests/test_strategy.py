"""ATMStrategy + ServerApp through an in-process grid: results, failures, refused updates."""

import csv
import json

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message
from safetensors.torch import load_file

from atm_fl.config import ConfigError, parse_run_config
from atm_fl.models import get_family
from strategies.server_app import run_atm
from clients.task_client import app as client_app
from strategies.atm import RoundFailed
from tests.conftest import small_config
from tests.inprocess import SILENT, InProcessGrid, Late


def run(tmp_path, faults=None, name="run", **overrides):
    raw = small_config(tmp_path, **{"run-name": name, **overrides})
    cfg = parse_run_config(raw)
    grid = InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list), faults=faults)
    return run_atm(grid, cfg), grid, tmp_path / name


def on_train(change):
    """A fault that rewrites the node's train replies only."""
    def fault(msg, reply):
        return change(msg, reply) if msg.metadata.message_type == "train" else reply
    return fault


def poison(edit):
    def change(msg, reply):
        tv = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord(edit(tv))
        return reply
    return on_train(change)


def test_run_writes_results_for_every_round_and_task(tmp_path, identity):
    rec, grid, out = run(tmp_path)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1, 2]
    for r in res["rounds"]:
        assert set(r["eval"]) == {"mnist", "optdigits", "ising"}
    # Round 0's model is scored by round 1's train messages: nothing is sent in round 0.
    assert res["rounds"][0]["bytes_sent"] == 0 and all(r["bytes_sent"] > 0 for r in res["rounds"][1:])
    assert res["rounds"][1]["bytes_received"] > 0 and res["rounds"][1]["merge_seconds"] >= 0
    assert res["config"]["merge-method"] == "mean" and res["merged_parameters"] > 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 9 and {"round", "task", "accuracy", "loss"} <= set(rows[0])
    # The saved backbone loads strictly into the family's model.
    backbone = get_family(parse_run_config(small_config(tmp_path))).build_backbone()
    backbone.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    assert "average" in rec.summary_table()


def test_evaluation_riding_with_training_gives_the_same_results_with_half_the_messages(tmp_path, identity):
    fused, fused_grid, fused_out = run(tmp_path, name="fused")
    apart, apart_grid, apart_out = run(tmp_path, name="apart", **{"evaluate-in-train": False})
    for a, b in zip(fused.round_dicts(), apart.round_dicts()):
        assert {t: m["accuracy"] for t, m in a["eval"].items()} == {t: m["accuracy"] for t, m in b["eval"].items()}
    assert same_model(fused_out, apart_out)

    def kinds(grid):
        return [m.metadata.message_type for m in grid.sent if m.metadata.message_type != "query"]
    # 3 tasks, 2 rounds: 6 train messages either way; 3 evaluate messages (the last model)
    # instead of 9 (rounds 0, 1, 2).
    assert kinds(fused_grid).count("train") == kinds(apart_grid).count("train") == 6
    assert kinds(fused_grid).count("evaluate") == 3 and kinds(apart_grid).count("evaluate") == 9
    sent = [sum(r["bytes_sent"] for r in rec.round_dicts()) for rec in (fused, apart)]
    assert sent[0] / sent[1] == pytest.approx(9 / 15)


def test_training_changes_the_model_and_accuracy_is_recorded(tmp_path, identity):
    rec, _, out = run(tmp_path, **{"num-server-rounds": 1})
    r0, r1 = rec.rounds[0], rec.rounds[1]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in r1.eval.values())
    assert r0.eval != r1.eval


def test_unknown_merge_method_is_refused_before_any_message(tmp_path, identity):
    raw = small_config(tmp_path, **{"merge-method": "avg"})
    grid = InProcessGrid(client_app, raw, num_nodes=3)
    with pytest.raises(ConfigError, match="mean"):
        run_atm(grid, parse_run_config(raw))
    assert grid.sent == []


def test_crashed_client_stops_the_run_by_default(tmp_path, identity):
    crash = on_train(lambda msg, reply: Message(Error(code=1, reason="CUDA out of memory"), reply_to=msg))
    with pytest.raises(RoundFailed, match="optdigits.*CUDA out of memory.*min-task-fraction"):
        run(tmp_path, faults={2: crash})
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "failed" and "RoundFailed" in res["error"]


def test_silent_client_is_a_failure_not_an_unchanged_model(tmp_path, identity):
    with pytest.raises(RoundFailed, match="no reply"):
        run(tmp_path, faults={3: on_train(lambda msg, reply: SILENT)})


def same_model(a_dir, b_dir):
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crashed_client_is_recorded_and_the_round_merges_the_rest(tmp_path, identity):
    crash = on_train(lambda msg, reply: Message(Error(code=1, reason="ValueError: disk full"), reply_to=msg))
    rec, _, out = run(tmp_path, faults={2: crash}, name="crash", **{"min-task-fraction": 0.6})
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished"
    for r in res["rounds"][1:]:
        assert [f["task"] for f in r["failed"]] == ["optdigits"] and "disk full" in r["failed"][0]["reason"]
        assert set(r["train"]) == {"mnist", "ising"} and set(r["eval"]) == {"mnist", "optdigits", "ising"}
    assert res["faults"]["failed"] == 2 and res["faults"]["failed_by_task"] == {"optdigits": 2}
    # Nothing of the failed task leaks into the model: it equals a run without that task.
    run(tmp_path, name="without", **{"tasks": "mnist,ising"})
    assert same_model(out, tmp_path / "without")


@pytest.mark.parametrize("delay, late", [(30.0, True), (2.0, False)])
def test_reply_later_than_round_timeout_counts_as_failed(tmp_path, identity, delay, late):
    slow = on_train(lambda msg, reply: Late(delay, reply))
    rec, grid, out = run(tmp_path, faults={3: slow}, name="slow",
                         **{"min-task-fraction": 0.6, "round-timeout": 5.0, "num-server-rounds": 1})
    assert set(grid.timeouts[1:]) == {5.0}  # after discovery, every wait uses round-timeout
    failed = rec.rounds[1].failed
    if late:
        assert failed == [{"task": "ising", "reason": "no reply before round-timeout"}]
        run(tmp_path, name="without", **{"tasks": "mnist,optdigits", "num-server-rounds": 1})
        assert same_model(out, tmp_path / "without")
    else:
        assert failed == [] and set(rec.rounds[1].train) == {"mnist", "optdigits", "ising"}


@pytest.mark.parametrize("edit, reason", [
    (lambda tv: {k: v.fill_(float("nan")) if i == 0 else v for i, (k, v) in enumerate(tv.items())}, "NaN"),
    (lambda tv: {k: v.index_put_((torch.tensor([0]),) * v.dim(), torch.tensor(float("inf"))) if i == 2 else v
                 for i, (k, v) in enumerate(tv.items())}, "Inf"),
    (lambda tv: {k: (v.reshape(-1)[:-1] if i == 1 else v) for i, (k, v) in enumerate(tv.items())}, "shape"),
    (lambda tv: {**tv, "extra.weight": torch.zeros(3)}, "unexpected"),
    (lambda tv: dict(list(tv.items())[1:]), "missing"),
    (lambda tv: {k: v.double() for k, v in tv.items()}, "dtype"),
    (lambda tv: {k: v * 1e4 for k, v in tv.items()}, "base model's norm"),
])
def test_bad_update_is_refused_and_merge_equals_the_good_ones_alone(tmp_path, identity, edit, reason):
    rec, _, out = run(tmp_path, faults={3: poison(edit)}, name="poisoned",
                      **{"min-task-fraction": 0.5, "num-server-rounds": 1})
    refused = rec.rounds[1].refused
    assert [r["task"] for r in refused] == ["ising"] and reason in refused[0]["reason"]
    # Counted in results.json, per round and in total; the good tasks were merged.
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["rounds"][1]["refused"] == refused
    assert res["faults"]["refused"] == 1 and res["faults"]["refused_by_task"] == {"ising": 1}
    assert res["faults"]["failed"] == 0
    # The same run without the poisoned task gives exactly the same model.
    run(tmp_path, name="clean", **{"tasks": "mnist,optdigits", "num-server-rounds": 1})
    assert same_model(out, tmp_path / "clean")


def test_task_without_a_node_fails_discovery_with_the_fix(tmp_path, identity):
    raw = small_config(tmp_path, **{"discovery-timeout": 0.5})
    grid = InProcessGrid(client_app, raw, node_configs=[{"task": "mnist"}, {"task": "optdigits"}])
    with pytest.raises(RuntimeError, match="ising.*--node-config"):
        run_atm(grid, parse_run_config(raw))


@pytest.mark.parametrize("method", ["sum", "ties", "breadcrumbs", "dare", "tsv-m", "iso-c", "iso-cts", "cart"])
def test_every_merge_method_runs_end_to_end(tmp_path, identity, method):
    rec, _, _ = run(tmp_path, **{"merge-method": method, "num-server-rounds": 1})
    assert rec.status == "finished" and set(rec.rounds[1].eval) == {"mnist", "optdigits", "ising"}


@pytest.mark.parametrize("in_train", [True, False])
def test_failed_evaluation_is_recorded_and_does_not_stop_the_run(tmp_path, identity, monkeypatch, in_train):
    from atm_fl.runtime import TaskRuntime

    real = TaskRuntime.evaluate

    def evaluate(self, state, split="test"):
        if self.name == "mnist":
            raise MemoryError("out of memory")
        return real(self, state, split)
    monkeypatch.setattr(TaskRuntime, "evaluate", evaluate)
    rec, _, out = run(tmp_path, **{"num-server-rounds": 1, "evaluate-in-train": in_train})
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished"
    for r in res["rounds"]:
        assert set(r["eval"]) == {"optdigits", "ising"}
        assert [f["task"] for f in r["failed"]] == ["mnist"]
        assert r["failed"][0]["reason"].startswith("evaluation: client error: MemoryError: out of memory")
    assert res["faults"]["failed_by_task"] == {"mnist": 2}
    # Training went on: mnist's task vector was merged in round 1.
    assert set(res["rounds"][1]["train"]) == {"mnist", "optdigits", "ising"}
