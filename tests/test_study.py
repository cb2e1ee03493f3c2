"""experiments.study: gap closed, win/tie/loss, dips and bytes on hand-computable sweep results."""

import math

import pytest

from experiments.study import analyse, markdown


def _atm_cell(method_tag, k, seed, curve, bytes_per_round=1000):
    rounds = [{"round": 0, "eval": {"a": {"accuracy": curve[0]}}}]
    rounds += [{"round": r, "eval": {"a": {"accuracy": acc}}, "bytes_sent": bytes_per_round, "bytes_received": 0}
               for r, acc in enumerate(curve[1:], start=1)]
    cid = f"atm-mean-b4-k{k}-s{seed}" + (f"-{method_tag}" if method_tag else "")
    return cid, {"status": "finished", "config": {"num-server-rounds": k, "seed": seed, "merge-method": "mean"},
                 "rounds": rounds}


def _summary():
    rows, cells = [], {}
    joint = {0: 0.80, 1: 0.90}
    head = {0: 0.70, 1: 0.70}   # ATM mean, k = 4
    new = {0: 0.78, 1: 0.90}    # closes 80% and 100% of the gap
    tuned = {0: 0.785, 1: 0.60}  # "sum-tuned": the only one-shot merge
    for s in (0, 1):
        rows += [{"method": "joint", "rounds": 0, "seed": s, "accuracy": joint[s]},
                 {"method": "sum-tuned", "rounds": 1, "seed": s, "accuracy": tuned[s]},
                 {"method": "atm-mean", "rounds": 4, "seed": s, "accuracy": head[s]},
                 {"method": "atm-mean+carry", "rounds": 16, "seed": s, "accuracy": new[s]}]
        cid, res = _atm_cell("", 4, s, [0.72, 0.60, 0.65, 0.68, head[s]])
        cells[cid] = res
        cid, res = _atm_cell("carry", 16, s, [0.72, 0.73] + [new[s]] * 15, bytes_per_round=500)
        cells[cid] = res
    return {"rows": rows, "cells": cells}


def test_gap_verdicts_dips_and_bytes():
    st = analyse(_summary())
    v = {(x["method"], x["rounds"]): x for x in st["variants"]}
    new = v[("atm-mean+carry", 16)]
    assert new["gap_closed_per_seed"] == pytest.approx({0: 0.8, 1: 1.0})
    assert new["gap_closed"][0] == pytest.approx(0.9)
    assert new["gap_closed_of_means"] == pytest.approx((0.84 - 0.70) / (0.85 - 0.70))
    # vs joint: -2 points (loss) and 0 (tie); vs sum-tuned: -0.5 (tie) and +30 (win)
    assert (new["vs_joint"]["win"], new["vs_joint"]["tie"], new["vs_joint"]["loss"]) == (0, 1, 1)
    assert st["best_one_shot"] == "sum-tuned"
    assert (new["vs_sum-tuned"]["win"], new["vs_sum-tuned"]["tie"], new["vs_sum-tuned"]["loss"]) == (1, 1, 0)
    assert new["dip"] == pytest.approx({0: 0.01, 1: 0.01})
    assert v[("atm-mean", 4)]["dip"][0] == pytest.approx(-0.12)
    assert new["bytes_per_round"] == 500 and v[("atm-mean", 4)]["bytes_per_run"] == 4000
    assert "gap_closed" not in v[("atm-mean", 4)]  # the reference itself
    text = markdown(st, "cmd")
    assert "| atm-mean+carry | 16 | 0, 1 |" in text and not math.isnan(st["joint"]["accuracy"][0])
