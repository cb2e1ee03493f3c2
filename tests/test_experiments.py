"""Fast tests of the experiment tooling: sweep resume, metrics, α tuning, the report builder.

One real cell (an in-process baselines cell on the tiny backbone, run by the sweep as a
subprocess) feeds the resume and report tests; ATM cells are faked as finished Flower
results so the skip logic is tested without starting Ray (the real `flwr run` path is
covered by tests/test_flwr_run.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import sweep as sweep_mod
from experiments.baselines import normalized_accuracy, tune_alpha
from experiments.grid import load_grid

TASKS = ["mnist", "optdigits", "ising"]

# The tiny backbone's run-config, shared by the test grids below.
RUN_CONFIG = """
[run-config]
model-family = "tiny-mlp"
tasks = "mnist,optdigits,ising"
max-train-examples = 32
max-eval-examples = 32
batch-size = 16
lr = 0.001
"""

GRID = """
name = "t"
""" + RUN_CONFIG + """
[[baselines]]
seeds = [0]
budgets = [1, 2]
merges = ["sum", "mean", "ties"]
joint = true
alpha-search = "full"
replay = { method = "mean", budget = 2, rounds = 2 }
[baselines.alpha-grid]
sum = [0.1, 0.3, 0.6, 1.0]
ties = [0.5, 1.0, 2.0]

[[atm]]
methods = ["mean"]
budgets = [2]
rounds = [1, 2]
seeds = [0]
"""


def fake_atm_result(path: Path, rounds: int, budget: float, acc: float, evaluated: bool = True) -> None:
    path.mkdir(parents=True, exist_ok=True)
    recs = [{"round": r, "eval": ({t: {"accuracy": acc - 0.01 * (rounds - r)} for t in TASKS} if evaluated else {})}
            for r in range(rounds + 1)]
    (path / "results.json").write_text(json.dumps({
        "status": "finished", "tasks": TASKS, "rounds": recs,
        "config": {"merge-method": "mean", "num-server-rounds": rounds, "local-epochs": budget / rounds,
                   "seed": 0, "train-split": "train", "alpha": 1.0}}))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    grid_file = root / "grid.toml"
    grid_file.write_text(GRID)
    out = root / "out"
    grid = load_grid(grid_file)
    # Fake the ATM cells as finished Flower runs; the baselines cell runs for real.
    fake_atm_result(out / "atm-mean-b2-k1-s0", 1, 2.0, 0.5)
    fake_atm_result(out / "atm-mean-b2-k2-s0", 2, 2.0, 0.6)
    summary = sweep_mod.run_sweep(grid, out)
    return grid, out, summary


def test_grid_cells_and_ids(swept):
    grid, _, _ = swept
    ids = [c.id for c in grid.cells]
    assert ids[0] == "baselines-s0"
    assert set(ids) == {"baselines-s0", "atm-mean-b2-k1-s0", "atm-mean-b2-k2-s0"}
    cell = next(c for c in grid.atm_cells if c.rounds == 2)
    rc = cell.run_config(grid.run_config, Path("/x"))
    assert rc["local-epochs"] == 1.0 and rc["num-server-rounds"] == 2 and rc["run-name"] == cell.id
    assert rc["output-dir"] == "/x"


def test_sweep_runs_the_real_cell_and_skips_finished_ones(swept, caplog):
    grid, out, summary = swept
    assert summary["cells"]["baselines-s0"]["status"] == "finished"
    meta = json.loads((out / "sweep-meta.json").read_text())
    # Only the baselines cell ran: the fake-finished ATM cells were skipped.
    assert list(meta["sessions"][-1]["cells"]) == ["baselines-s0"]
    # Resume: nothing left to run, every cell is skipped.
    caplog.set_level("INFO", logger="experiments.sweep")
    sweep_mod.run_sweep(grid, out)
    assert "cell 1/3 baselines-s0: finished already, skipped" in caplog.text
    assert json.loads((out / "sweep-meta.json").read_text())["sessions"][-1]["cells"] == {}


def test_atm_cell_without_final_evaluation_is_not_finished(tmp_path):
    fake_atm_result(tmp_path / "a", 2, 2.0, 0.5, evaluated=False)
    fake_atm_result(tmp_path / "b", 2, 2.0, 0.5)
    assert not sweep_mod.is_finished(tmp_path / "a")
    assert sweep_mod.is_finished(tmp_path / "b")
    assert not sweep_mod.is_finished(tmp_path / "missing")


def test_collected_rows_and_normalised_accuracy(swept):
    _, out, summary = swept
    rows = summary["rows"]
    res = json.loads((out / "baselines-s0" / "results.json").read_text())
    ft2 = next(r for r in res["rows"] if r["method"] == "finetuned" and r["budget"] == 2.0)["accuracy"]
    atm = [r for r in rows if r["cell"] == "atm-mean-b2-k2-s0"]
    assert len(atm) == 3
    for r in atm:
        assert r["accuracy"] == pytest.approx(0.6)
        assert r["normalized"] == pytest.approx(0.6 / ft2[r["task"]]) or math.isnan(r["normalized"])
    methods = {r["method"] for r in rows}
    assert {"pretrained", "finetuned", "joint", "sum-tuned", "mean-untuned", "ties-tuned", "ties-untuned",
            "atm-mean"} <= methods
    assert (out / "results.csv").read_text().startswith("cell,source,method")
    # Analyses recorded by the real cell.
    a = summary["analyses"]["baselines-s0"]
    assert set(a["grad_norm"]) == set(TASKS) and len(a["grad_norm"]["mnist"]["share"]) == 2
    assert sum(a["grad_norm"]["mnist"]["share"]) == pytest.approx(1.0)
    assert {"one-shot b2", "atm-mean-b2-k2 r1", "atm-mean-b2-k2 r2"} <= set(a["cosine"])
    assert any(p["kind"] == "atm" for p in a["pca"]["points"])


def test_normalized_accuracy():
    n = normalized_accuracy({"a": 0.5, "b": 0.9, "c": 0.3}, {"a": 1.0, "b": 0.6, "c": 0.0})
    assert n["a"] == 0.5 and n["b"] == pytest.approx(1.5) and math.isnan(n["c"])
    assert math.isnan(normalized_accuracy({"d": 0.5}, {})["d"])


def test_tune_alpha_picks_the_best_on_val_not_test():
    grid = [0.1 * i for i in range(1, 21)]
    val = lambda a: -(a - 0.7) ** 2  # noqa: E731 - best on val at 0.7
    test = lambda a: -(a - 1.5) ** 2  # noqa: E731 - best on test at 1.5
    best, tried = tune_alpha(val, grid, "full")
    assert best == pytest.approx(0.7) and len(tried) == 20
    assert max(grid, key=test) != pytest.approx(best)
    best_cf, tried_cf = tune_alpha(val, grid, "coarse-fine")
    assert best_cf == pytest.approx(0.7) and len(tried_cf) < len(grid)
    # Ties go to the first (smallest) alpha.
    assert tune_alpha(lambda a: 1.0, [0.5, 1.0, 2.0])[0] == 0.5


def test_baselines_choose_alpha_by_validation_scores(swept):
    _, out, _ = swept
    res = json.loads((out / "baselines-s0" / "results.json").read_text())
    for name, tried in res["alpha_search"].items():
        method, b = name.split(" b")
        best = max(tried, key=lambda p: p["val_normalized"])  # first max = smallest alpha on ties
        row = next(r for r in res["rows"] if r["method"] == f"{method}-tuned" and r["budget"] == float(b))
        assert row["alpha"] == pytest.approx(best["alpha"])
    assert [p["alpha"] for p in res["alpha_search"]["sum b1"]] == [0.1, 0.3, 0.6, 1.0]


def test_report_builds_markdown_and_pngs(swept, tmp_path):
    from experiments.report import build_report

    _, out, _ = swept
    md = build_report(out, tmp_path / "rep").read_text()
    for png in ("radar", "accuracy_vs_budget", "budget_split", "cosine", "pca", "grad_norm", "alpha_search"):
        f = tmp_path / "rep" / f"{png}.png"
        assert f.exists() and f.read_bytes()[:4] == b"\x89PNG", png
        assert f"({png}.png)" in md
    assert "## Headline" in md and "ATM (mean), 2 rounds" in md and "Budget 2 epochs" in md
    assert "wins against" in md or "ties with" in md or "loses to" in md
    assert (tmp_path / "rep" / "results.csv").exists() and (tmp_path / "rep" / "summary.json").exists()


def test_other_seeds_can_reuse_the_alphas_seed_0_chose(swept):
    _, out, _ = swept
    res = json.loads((out / "baselines-s0" / "results.json").read_text())
    spec = sweep_mod.reused_alphas(out / "baselines-s0")
    tuned = {f"{r['method'][:-6]} b{r['budget']:g}": r["alpha"] for r in res["rows"] if r["method"].endswith("-tuned")}
    assert spec["alpha-fixed"] == tuned and spec["alpha-from-seed"] == 0
    assert sweep_mod.reused_alphas(out / "baselines-s9") == {}


def test_multi_epoch_fine_tuning_walks_the_whole_example_stream():
    """Budgets > 1 epoch must train that many epochs (``iterate`` once stopped after one)."""
    import torch

    from atm_fl.models.base import iterate
    from atm_fl.train import example_stream

    data = {"x": torch.arange(10), "labels": torch.zeros(10, dtype=torch.long)}
    order = example_stream(10, 0, 40, seed=0)  # 4 epochs
    batches = list(iterate(data, 4, order))
    assert len(batches) == 10 and sum(len(b["labels"]) for b in batches) == 40
    assert sorted(torch.cat([b["x"] for b in batches]).tolist()) == sorted(list(range(10)) * 4)
    half = list(iterate(data, 4, example_stream(10, 0, 5, seed=0)))  # half an epoch: no empty batches
    assert [len(b["labels"]) for b in half] == [4, 1]


def test_baseline_seeds_take_their_blocks_priority(tmp_path):
    grid_file = tmp_path / "g.toml"
    grid_file.write_text('name = "g"\n'
                         '[[baselines]]\nseeds = [0]\nbudgets = [1]\nmerges = ["sum"]\n'
                         '[[baselines]]\nseeds = [1]\nbudgets = [1]\nmerges = ["sum"]\npriority = 2\n'
                         '[[baselines]]\nseeds = [2]\nbudgets = [1]\nmerges = ["sum"]\npriority = 3\n'
                         '[[baselines]]\nseeds = [2]\nbudgets = [1]\nmerges = ["mean"]\npriority = 1\n'
                         '[[atm]]\nmethods = ["mean"]\nbudgets = [1]\nrounds = [1]\nseeds = [0]\npriority = 1\n')
    cells = load_grid(grid_file).cells
    assert [c.id for c in cells] == ["baselines-s0", "atm-mean-b1-k1-s0", "baselines-s2", "baselines-s1"]


def test_report_lists_validation_tuning_cells_apart_from_test(tmp_path):
    from experiments.report import tuning_table

    def cell(cid, split, curve):
        d = tmp_path / cid
        d.mkdir()
        rounds = [{"round": i, "average_accuracy": a, "eval": {"t": {"accuracy": a}}} for i, a in enumerate(curve)]
        cfg = {"evaluate-split": split, "num-server-rounds": len(curve) - 1, "seed": 0,
               "alpha": 2.0 if "-a2" in cid else 1.0}
        (d / "results.json").write_text(json.dumps({"status": "finished", "config": cfg, "rounds": rounds}))
        return cid

    cells = {cell("atm-mean-b4-k2-s0-val", "val", [0.5, 0.4, 0.6]): {},
             cell("atm-mean-b4-k2-s0-a2-val", "val", [0.5, 0.6, 0.8]): {},
             cell("atm-mean-b4-k2-s0", "test", [0.5, 0.7, 0.9]): {}}
    lines = tuning_table(tmp_path, cells)
    rows = [line for line in lines if line.startswith("| atm-")]
    # Best validation score first; the test cell is not a tuning cell.
    assert [r.split(" | ")[0][2:] for r in rows] == ["atm-mean-b4-k2-s0-a2-val", "atm-mean-b4-k2-s0-val"]
    assert "| 80.0 | +10.0 |" in rows[0] and "| 60.0 | -10.0 |" in rows[1]
    assert tuning_table(tmp_path, {"atm-mean-b4-k2-s0": {}}) == []


def test_normalise_fills_normalised_accuracy_from_another_sweeps_fine_tuned_rows():
    from experiments.normalise import normalise, summary

    head = dict(source="flwr", budget="4.0", rounds="4", alpha="0.5", normalized="nan")
    rows = [dict(head, cell=f"atm-x-s{s}", method="atm-x", seed=str(s), task=t, accuracy=str(a))
            for s, t, a in [(0, "a", 0.4), (0, "b", 0.9), (1, "a", 0.6), (1, "b", 0.3)]]
    ref = [dict(head, cell=f"baselines-s{s}", method=m, seed=str(s), task=t, accuracy=str(a))
           for s, m, t, a in [(0, "finetuned", "a", 0.8), (0, "finetuned", "b", 0.9), (0, "joint", "a", 0.1),
                              (1, "finetuned", "a", 0.6)]]  # seed 1 has no reference for task b
    out = normalise(rows, ref)
    assert [float(r["normalized"]) if r["normalized"] != "nan" else None for r in out] == [0.5, 1.0, 1.0, None]
    s = summary(out)["atm-x k=4 α=0.5"]
    assert s["accuracy"][2] == 2 and s["accuracy"][0] == pytest.approx((0.65 + 0.45) / 2)
    assert s["normalized"][0] == pytest.approx((0.75 + 1.0) / 2)
    # A baselines cell's methods are summarised apart, not merged into one entry.
    both = summary(normalise(ref, ref))
    assert both["finetuned k=4 α=0.5"]["normalized"][0] == pytest.approx(1.0)
    assert both["joint k=4 α=0.5"]["accuracy"][0] == pytest.approx(0.1)


def test_study_joins_a_published_studys_rows_and_curves_with_later_seeds(tmp_path):
    from experiments.study import analyse, published_rows

    def rows(cell, method, rounds, seed, accs):
        return [{"cell": cell, "method": method, "rounds": str(rounds), "seed": str(seed), "task": t, "accuracy": a}
                for t, a in zip("ab", accs)]

    # The published study: seeds 0-1 (CSV strings, as results.csv holds them); one cell it
    # shares with the new sweep, whose own numbers must win.
    published = (rows("baselines-s0", "joint", 0, 0, [0.9, 0.9]) + rows("atm-mean-b4-k4-s0", "atm-mean", 4, 0, [0.5, 0.5])
                 + rows("atm-mean-b4-k16-s0", "atm-mean", 16, 0, [0.7, 0.7])
                 + rows("baselines-s1", "joint", 0, 1, [0.8, 0.8]) + rows("atm-mean-b4-k4-s1", "atm-mean", 4, 1, [0.6, 0.6])
                 + rows("atm-mean-b4-k16-s1", "atm-mean", 16, 1, [0.0, 0.0]))
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("cell,method,rounds,seed,task,accuracy\n"
                        + "".join(f"{r['cell']},{r['method']},{r['rounds']},{r['seed']},{r['task']},{r['accuracy']}\n"
                                  for r in published))
    new = (rows("baselines-s2", "joint", 0, 2, [1.0, 1.0]) + rows("atm-mean-b4-k4-s2", "atm-mean", 4, 2, [0.6, 0.6])
           + rows("atm-mean-b4-k16-s2", "atm-mean", 16, 2, [0.8, 0.8])
           + rows("atm-mean-b4-k16-s1", "atm-mean", 16, 1, [0.7, 0.7]))  # a rerun of seed 1's cell
    own = {r["cell"] for r in new}
    extra = published_rows(csv_path, own)
    assert {r["cell"] for r in extra} == {r["cell"] for r in published} - own
    curves = {"atm-mean-b4-k16-s0": {"method": "atm-mean", "rounds": 16, "seed": 0, "curve": [0.5, 0.4, 0.7], "bytes": 8}}
    st = analyse({"rows": new, "cells": {}}, results={}, extra_rows=extra, extra_curves=curves)
    (k16,) = [v for v in st["variants"] if v["rounds"] == 16]
    assert k16["seeds"] == [0, 1, 2]
    assert k16["per_seed"][1] == pytest.approx(0.7)  # the sweep's own seed-1 cell, not the published 0.0
    # Gap closed per seed: (0.7-0.5)/(0.9-0.5), (0.7-0.6)/(0.8-0.6), (0.8-0.6)/(1.0-0.6).
    assert k16["gap_closed"][0] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert k16["dip"] == {0: pytest.approx(-0.1)} and k16["bytes_per_round"] == pytest.approx(0.5)


def test_curves_find_the_dip_below_round_0_and_the_worst_step():
    from experiments.curves import curve_stats, task_table

    def rnd(k, a, b):
        return {"round": k, "eval": {"b": {"accuracy": b}, "a": {"accuracy": a}}}

    res = {"config": {"seed": 4, "alpha": 6.0, "tasks": "a,b"},
           "rounds": [rnd(0, 0.70, 0.80), rnd(1, 0.80, 0.80), rnd(2, 0.60, 0.80), rnd(3, 0.90, 0.90)]}
    st = curve_stats(res)
    assert st["curve"] == pytest.approx([75.0, 80.0, 70.0, 90.0])
    assert st["lowest_minus_round0"] == pytest.approx(-5.0) and st["worst_step"] == pytest.approx(-10.0)
    assert st["final"] == pytest.approx(90.0) and st["rounds_that_fell"] == 1
    lines = task_table(res, [0, 3])
    assert lines[0] == "| round | a | b | average |" and lines[2] == "| 0 | 70.0 | 80.0 | 75.0 |"
    with pytest.raises(ValueError, match="round 5"):
        task_table(res, [5])


GRIDS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "grids").glob("*.toml"))


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_shipped_grid_loads_with_unique_cells_whose_run_configs_parse(path):
    # A grid is read when a sweep starts, hours before its last cell: a typo in a key, a merge
    # name or a block's own run-config must fail here, not at cell 40 of a night's sweep.
    from atm_fl.config import check_plugins, parse_run_config

    grid = load_grid(path)
    ids = [c.id for c in grid.cells]
    assert ids, f"{path.name} has no cells"
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate cell ids"
    for cell in grid.atm_cells:
        cfg = parse_run_config(cell.run_config(grid.run_config, Path("/x")))
        check_plugins(cfg)  # merge-params / server-params name real parameters with valid values
        values = cfg.values
        assert values["alpha"] == cell.alpha and values["merge-method"] == cell.method, cell.id
        assert values["num-server-rounds"] == cell.rounds and values["run-name"] == cell.id
        for key, value in cell.overrides:  # the block's own keys reach the run, not the grid's
            assert values[key] == value, (cell.id, key)


def test_only_selects_cells_containing_any_of_the_given_texts(tmp_path):
    # `--only` is repeated to add the cells one decision needs to a sweep without running its
    # whole grid; a substring (not a regex) keeps `--only=-val` meaning what it says, and a
    # trailing `$` picks a cell whose id is the prefix of another's.
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[[atm]]\nmethods = ["mean"]\nbudgets = [4]\nrounds = [1, 4, 16]\nseeds = [0]\n'
                    '[[atm]]\nmethods = ["mean"]\nbudgets = [4]\nrounds = [16]\nseeds = [0]\ntag = "val"\n')
    cells = load_grid(grid).cells
    ids = lambda only: [c.id for c in sweep_mod.selected(cells, only)]  # noqa: E731
    assert ids(None) == [c.id for c in cells] and len(cells) == 4
    assert ids("-val") == ["atm-mean-b4-k16-s0-val"]
    assert ids(["k1-s0", "-val"]) == ["atm-mean-b4-k1-s0", "atm-mean-b4-k16-s0-val"]
    assert ids(["nothing"]) == []
    assert ids("k16-s0") == ["atm-mean-b4-k16-s0", "atm-mean-b4-k16-s0-val"]
    assert ids("k16-s0$") == ["atm-mean-b4-k16-s0"]


def test_curves_leave_out_missing_and_unfinished_runs_with_a_message(tmp_path):
    # A glob over a sweep that is still running names cells with no results.json yet: the
    # finished ones are reported, the rest are named in the log, not a traceback.
    from experiments.curves import main

    done = tmp_path / "done.json"
    done.write_text(json.dumps({"status": "finished", "config": {"seed": 0, "alpha": 1.0}, "rounds": [
        {"round": 0, "eval": {"a": {"accuracy": 0.5}}}, {"round": 1, "eval": {"a": {"accuracy": 0.6}}}]}))
    running = tmp_path / "running.json"
    running.write_text(json.dumps({"status": "running", "rounds": []}))
    out = tmp_path / "c.json"
    # A handler of our own on the module's logger, not a captured stream or the root logger: in a
    # full test run an earlier test has already set up the CLI's stderr handler (on a stream this
    # test cannot see) and stopped propagation.
    import io
    import logging

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("experiments.curves")
    logger.addHandler(handler)
    try:
        assert main([str(done), str(running), str(tmp_path / "absent.json"), "--json", str(out)]) == 0
    finally:
        logger.removeHandler(handler)
    assert list(json.loads(out.read_text())) == [str(done)]
    assert "absent.json: no such file" in buf.getvalue() and "not finished" in buf.getvalue()
    assert main([str(tmp_path / "absent.json")]) == 2


TAGGED_GRID = """
name = "t-tagged"
""" + RUN_CONFIG + """
[[baselines]]
seeds = [0]
budgets = [1]
joint = true
tag = "lr0.01"
[baselines.run-config]
lr = 0.01

[[baselines]]
seeds = [0]
budgets = [1]
joint = true
tag = "lr0.01-val"
[baselines.run-config]
lr = 0.01
evaluate-split = "val"
"""


def test_tagged_baselines_cells_run_their_own_run_config(tmp_path):
    """A baselines block with a tag and its own run-config (joint training at another lr) runs as a
    cell of its own; its rows are labelled <method>+<tag> and never normalise other rows; with
    evaluate-split = "val" it is a tuning cell, scored on validation only and left out of the test rows."""
    from experiments.analyses import tuning_rows

    (tmp_path / "grid.toml").write_text(TAGGED_GRID)
    grid = load_grid(tmp_path / "grid.toml")
    assert [c.id for c in grid.cells] == ["baselines-s0-lr0.01", "baselines-s0-lr0.01-val"]
    out = tmp_path / "out"
    summary = sweep_mod.run_sweep(grid, out)
    assert all(v["status"] == "finished" for v in summary["cells"].values())
    test_cell = json.loads((out / "baselines-s0-lr0.01" / "results.json").read_text())
    val_cell = json.loads((out / "baselines-s0-lr0.01-val" / "results.json").read_text())
    assert test_cell["config"]["lr"] == 0.01 and val_cell["config"]["lr"] == 0.01
    # The test-split cell: rows labelled with the tag, not the reference for normalising.
    methods = {r["method"] for r in summary["rows"]}
    assert {"joint+lr0.01", "finetuned+lr0.01", "pretrained+lr0.01"} == methods
    assert all(math.isnan(r["normalized"]) for r in summary["rows"])
    assert all(r["cell"] == "baselines-s0-lr0.01" for r in summary["rows"])
    # The tuning cell scored its reported rows on validation: each row's accuracy is its val accuracy.
    for r in val_cell["rows"]:
        if r["val_accuracy"] is not None:
            assert r["accuracy"] == r["val_accuracy"]
    tuned = {r["method"]: r for r in tuning_rows({"baselines-s0-lr0.01-val": val_cell,
                                                  "baselines-s0-lr0.01": test_cell})}
    assert set(tuned) == {"joint+lr0.01-val", "finetuned+lr0.01-val"}
    joint_val = next(r for r in val_cell["rows"] if r["method"] == "joint")["val_accuracy"]
    assert tuned["joint+lr0.01-val"]["val_average"] == pytest.approx(sum(joint_val.values()) / len(joint_val))


@pytest.mark.parametrize("block, message", [
    ('[[baselines]]\nseeds = [0]\nbudgets = [1]\n[baselines.run-config]\nlr = 0.01\n', "needs a 'tag'"),
    ('[[baselines]]\nseeds = [0]\nbudgets = [1]\ntag = "x"\n[baselines.run-config]\nseed = 3\n', "set per cell"),
    ('[[baselines]]\nseeds = [0]\nbudgets = [1]\ntag = "x"\n[baselines.run-config]\nlr = 0.01\n'
     '[[baselines]]\nseeds = [0]\nbudgets = [1]\ntag = "x"\n[baselines.run-config]\nlr = 0.02\n', "tag of its own"),
    ('[[baselines]]\nseeds = [0]\nbudgets = [1]\ntag = "x"\n[baselines.run-config]\nlr = -1\n', "lr"),
])
def test_tagged_baselines_blocks_are_checked(tmp_path, block, message):
    from experiments.grid import GridError

    (tmp_path / "grid.toml").write_text('name = "t"\n[run-config]\nmodel-family = "tiny-mlp"\n' + block)
    with pytest.raises((GridError, ValueError), match=message):
        load_grid(tmp_path / "grid.toml")


def test_machine_info_names_the_cpu_kernels_the_merges_run_on():
    # Two VMs that both read "AMD EPYC" gave SVD merges other last bits; the BLAS kernels
    # OpenBLAS picked are what tells such machines apart in a sweep's metadata.
    from experiments.machine import machine_info

    info = machine_info()
    assert info["blas"] and all(len(k.split()) == 3 and "None" not in k for k in info["blas"]), info["blas"]
    assert isinstance(info["torch_cpu_capability"], str) and info["torch_cpu_capability"]


def test_compare_runs_finds_the_first_round_that_differs_and_ignores_time(tmp_path):
    from experiments.compare_runs import compare, main

    def run(norm: float, seconds: float, out: str) -> dict:
        rounds = [{"round": r, "merge_seconds": seconds, "average_accuracy": 0.5 + seconds,
                   "train": {"mnist": {"loss": 0.5, "update-norm": norm if r == 3 else 1.0, "seconds": seconds}},
                   "eval": {"mnist": {"accuracy": 0.5, "seconds": seconds}}} for r in range(5)]
        return {"rounds": rounds, "config": {"seed": 0, "output-dir": out}, "final": {"round": 4}}

    a, b = run(1.0, 1.0, "x"), run(1.0, 2.0, "y")
    assert compare(a, b) == []
    c = run(1.5, 1.0, "x")
    assert compare(a, c) == [("round 3.train.mnist.update-norm", 1.0, 1.5)]
    for name, res in (("a", a), ("b", b), ("c", c)):
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert main([str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("child_on_sigint, child_exit", [("exit", 130), ("ignore", -15)])
def test_ctrl_c_on_a_sweep_reaches_the_running_cell(tmp_path, child_on_sigint, child_exit):
    # A cell runs in a session of its own, so the terminal's Ctrl-C reaches only the sweep; the
    # sweep passes it on, and ends a cell that ignores it with SIGTERM after the grace period.
    import os
    import signal
    import subprocess
    import sys
    import time

    from experiments.grid import ROOT

    ready, got = tmp_path / "ready", tmp_path / "got-sigint"
    child = (f"import signal, sys, time, pathlib\n"
             f"def on_int(*_):\n    pathlib.Path({str(got)!r}).touch(); sys.exit(130)\n"
             f"signal.signal(signal.SIGINT, on_int if {child_on_sigint!r} == 'exit' else signal.SIG_IGN)\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             f"time.sleep(120)\n")
    sweep = (f"import os, sys\nimport experiments.sweep as sw\nsw.INTERRUPT_GRACE = 2.0\n"
             f"try:\n    sw._run_logged([sys.executable, '-c', {child!r}], sw.Path({str(tmp_path / 'log.txt')!r}), "
             f"dict(os.environ), 600)\nexcept KeyboardInterrupt:\n    sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", sweep], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists()
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 3
    log_text = (tmp_path / "log.txt").read_text()
    assert f"[sweep] interrupted (Ctrl-C); the cell exited {child_exit}" in log_text, log_text
    assert got.exists() == (child_on_sigint == "exit")
