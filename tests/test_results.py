"""results.json does not depend on the order the replies arrived in."""

import json
import math

from atm_fl.results import RunRecorder

TASKS = ["optdigits", "mnist", "ising", "cahn-hilliard"]
ACC = {"optdigits": 0.8533333333333334, "mnist": 0.9133333333333333, "ising": 0.9733333333333334,
       "cahn-hilliard": 0.81}


def record(tmp_path, name: str, arrival: list[str]) -> dict:
    rec = RunRecorder(tmp_path / name, {"seed": 0}, TASKS)
    for r in (0, 1):
        for t in arrival:
            rec.round(r).eval[t] = {"accuracy": ACC[t], "loss": 1.0}
            if r:
                rec.round(r).train[t] = {"loss": 0.5}
    rec.write()
    out = json.loads((tmp_path / name / "results.json").read_text())
    out.pop("wall_seconds")
    return out


def test_reply_order_does_not_show_in_results(tmp_path):
    # These four accuracies, summed in one order, give 0.8875000000000001; in another, 0.8875.
    a = record(tmp_path, "a", TASKS)
    b = record(tmp_path, "b", ["mnist", "optdigits", "cahn-hilliard", "ising"])
    assert json.dumps(a) == json.dumps(b)  # key order included
    assert list(a["final"]["accuracy"]) == TASKS and list(a["rounds"][1]["train"]) == TASKS
    assert a["final"]["average_accuracy"] == math.fsum(ACC.values()) / 4
