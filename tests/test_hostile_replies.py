"""Hostile and broken sites (issue #12): every reply is untrusted input.

Each class of the issue has a regression test here, run through the real ServerApp
(``run_atm``), ``ATMStrategy`` and ClientApp on an in-process grid: the corrupted site is
node 3 (task ``ising``), whose genuine replies are rewritten by a fault before the
server sees them. A final fuzz test throws many random corruptions at the server and
checks that nothing escapes, that the model equals a clean run without the corrupted
site, and that results.json stays strict JSON.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord
from safetensors.torch import load_file

from atm_fl.config import parse_run_config
from clients.task_client import app as client_app
from strategies.server_app import run_atm
from tests.conftest import small_config
from tests.inprocess import SILENT, InProcessGrid, flower_identity

TOLERANT = {"min-task-fraction": 0.6}


def run(tmp_path, name, faults=None, **overrides):
    raw = small_config(tmp_path, **{"run-name": name, **overrides})
    cfg = parse_run_config(raw)
    grid = InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list), faults=faults)
    return run_atm(grid, cfg), tmp_path / name


def strict_results(out) -> dict:
    def refuse(token):
        raise AssertionError(f"results.json holds {token}: not strict JSON")
    return json.loads((out / "results.json").read_text(), parse_constant=refuse)


def same_model(a_dir, b_dir) -> bool:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kind(msg):
    return msg.metadata.message_type


def on(kinds, change):
    """A fault that rewrites the node's replies to messages of ``kinds`` only."""
    def fault(msg, reply):
        return change(msg, reply) if kind(msg) in kinds and not reply.has_error() else reply
    return fault


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def replace_array(reply, edit):
    """Rewrite the first tensor of a dense upload with ``edit(name, Array) -> Array``."""
    rec = reply.content["arrays"]
    name = list(rec.keys())[0]
    items = {k: rec[k] for k in rec.keys()}
    items[name] = edit(name, rec[name])
    reply.content["arrays"] = ArrayRecord(items)
    return reply


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The reference: the same run without the corrupted site (mnist and optdigits only)."""
    tmp = tmp_path_factory.mktemp("clean")
    with flower_identity():
        run(tmp, "clean", tasks="mnist,optdigits")
    return tmp / "clean"


# --- class 1: a malformed reply must not crash the run ---------------------------------------------
CLASS_1 = {
    "bytes are not .npy": on({"train"}, lambda m, r: replace_array(
        r, lambda n, a: Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=b"\x00garbage" * 9))),
    "no arrays record": on({"train"}, lambda m, r: (r.content.__delitem__("arrays"), r)[1]),
    "no metrics record": on({"train"}, lambda m, r: (r.content.__delitem__("metrics"), r)[1]),
    "arrays is a config record": on({"train"}, lambda m, r: (r.content.__setitem__(
        "arrays", ConfigRecord({"x": 1})), r)[1]),
    "unexpected record": on({"train"}, lambda m, r: (r.content.__setitem__("payload", ConfigRecord({"x": 1})), r)[1]),
    "unknown encoding": on({"train"}, lambda m, r: (r.content["info"].__setitem__("encoding", "zip"), r)[1]),
    "sparse claim on dense arrays": on({"train"}, lambda m, r: (r.content["info"].__setitem__("encoding", "sparse"),
                                                                r)[1]),
}


@pytest.mark.parametrize("case", list(CLASS_1))
def test_class1_malformed_train_reply_is_refused_not_a_crash(tmp_path, identity, clean, case):
    rec, out = run(tmp_path, "bad", faults={3: CLASS_1[case]}, **TOLERANT)
    res = strict_results(out)
    assert res["status"] == "finished"
    for r in res["rounds"][1:]:
        assert [x["task"] for x in r["refused"]] == ["ising"], (case, r["refused"])
    assert same_model(out, clean)


def test_class1_info_without_task_is_fine_identity_comes_from_the_transport(tmp_path, identity):
    fault = on({"train", "evaluate"}, lambda m, r: (r.content["info"].__delitem__("task"), r)[1])
    rec, out = run(tmp_path, "notask", faults={3: fault})
    res = strict_results(out)
    assert res["status"] == "finished" and res["faults"]["refused"] == 0
    assert set(res["rounds"][-1]["eval"]) == {"mnist", "optdigits", "ising"}


def test_class1_final_evaluation_without_accuracy_keeps_the_model(tmp_path, identity):
    def no_accuracy(msg, reply):
        reply.content["metrics"] = MetricRecord({"loss": 0.5})
        return reply
    rec, out = run(tmp_path, "noacc", faults={3: on({"evaluate"}, no_accuracy)})
    res = strict_results(out)
    assert res["status"] == "finished" and (out / "model.safetensors").exists()
    last = res["rounds"][-1]
    assert set(last["eval"]) == {"mnist", "optdigits"}
    assert any(f["task"] == "ising" and "missing accuracy" in f["reason"] for f in last["failed"])


# --- class 2: truncated or mistyped data ----------------------------------------------------------
def truncate(n, a):
    return Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data[:-8])


def extend(n, a):
    return Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data + b"\x00" * 8)


def float64_data(n, a):
    return Array(dtype="float32", shape=a.shape, stype=a.stype, data=npy(np.zeros(a.shape, dtype=np.float64)))


def header_lies(n, a):
    return Array(dtype="float32", shape=a.shape, stype=a.stype, data=npy(np.zeros((int(np.prod(a.shape)) + 1,),
                                                                                   dtype=np.float32)))


def declared_float16(n, a):
    return Array(dtype="float16", shape=a.shape, stype=a.stype, data=a.data)


@pytest.mark.parametrize("edit, words", [(truncate, "data bytes"), (extend, "data bytes"),
                                         (float64_data, "float64"), (header_lies, "declares"),
                                         (declared_float16, "declares float16")])
def test_class2_truncated_or_mistyped_data_is_refused(tmp_path, identity, clean, edit, words):
    rec, out = run(tmp_path, "trunc", faults={3: on({"train"}, lambda m, r: replace_array(r, edit))}, **TOLERANT)
    refused = rec.rounds[1].refused
    assert [x["task"] for x in refused] == ["ising"] and words in refused[0]["reason"], refused
    assert same_model(out, clean)


# --- class 3: no site speaks for another task, or for a round that was not asked about -------------
def test_class3_a_reply_claiming_another_task_is_refused_and_the_real_one_merged(tmp_path, identity, clean):
    claim = on({"train"}, lambda m, r: (r.content["info"].__setitem__("task", "mnist"), r)[1])
    rec, out = run(tmp_path, "claim", faults={3: claim}, **TOLERANT)
    res = strict_results(out)
    for r in res["rounds"][1:]:
        assert [x["task"] for x in r["refused"]] == ["ising"] and "claims task 'mnist'" in r["refused"][0]["reason"]
        assert set(r["train"]) == {"mnist", "optdigits"} and r["failed"] == []
    assert same_model(out, clean)


@pytest.mark.parametrize("change, words", [
    (lambda r: r.content["info"].__setitem__("server-round", 99), "claims round 99"),
    (lambda r: r.content["info"].__setitem__("task", "mnist"), "claims task"),
    (lambda r: r.content["metrics"].__setitem__("accuracy", 5.0), "outside [0, 1]"),
    (lambda r: r.content["metrics"].__setitem__("accuracy", float("nan")), "outside [0, 1]"),
    (lambda r: r.content["metrics"].__setitem__("loss", float("inf")), "'loss'"),
])
def test_class3_evaluation_claims_and_bad_metrics_are_refused(tmp_path, identity, change, words):
    rec, out = run(tmp_path, "evalclaim", faults={3: on({"evaluate"}, lambda m, r: (change(r), r)[1])})
    res = strict_results(out)
    assert res["status"] == "finished" and res["final"]["round"] == 2
    assert [r["round"] for r in res["rounds"]] == [0, 1, 2]  # no phantom round
    last = res["rounds"][-1]
    assert "ising" not in last["eval"] and all(0 <= m["accuracy"] <= 1 for m in last["eval"].values())
    assert any(f["task"] == "ising" and words in f["reason"] for f in last["failed"]), last["failed"]


def test_class3_ride_along_evaluation_with_bad_accuracy_refuses_the_whole_reply(tmp_path, identity, clean):
    rec, out = run(tmp_path, "ridealong", faults={3: on({"train"}, lambda m, r: (
        r.content["evaluation"].__setitem__("accuracy", 1.77), r)[1])}, **TOLERANT)
    res = strict_results(out)
    assert all(0 <= m["accuracy"] <= 1 for r in res["rounds"] for m in r["eval"].values())
    assert same_model(out, clean)


def test_class3_a_reply_to_an_older_message_is_ignored(tmp_path, identity, clean):
    first: dict = {}

    def stale(msg, reply):
        if kind(msg) != "train":
            return reply
        if "msg" not in first:
            first["msg"] = msg
            return Message(Error(code=1, reason="site down"), reply_to=msg)
        return Message(reply.content, reply_to=first["msg"])  # answers round 1's message again
    rec, out = run(tmp_path, "stale", faults={3: stale}, **TOLERANT)
    assert [f["task"] for f in rec.rounds[2].failed if not f["reason"].startswith("evaluation")] == ["ising"]
    assert rec.rounds[2].failed[0]["reason"] == "no reply before round-timeout"
    assert same_model(out, clean)


# --- class 4: outliers with 2 tasks, and several outliers ------------------------------------------
def scale(factor):
    def change(msg, reply):
        tv = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord({k: v * factor for k, v in tv.items()})
        return reply
    return on({"train"}, change)


def huge_entry(msg, reply):
    tv = reply.content["arrays"].to_torch_state_dict()
    first = next(iter(tv))
    tv[first].view(-1)[0] = 1e38
    reply.content["arrays"] = ArrayRecord(tv)
    return reply


@pytest.mark.parametrize("fault", [scale(1000.0), on({"train"}, huge_entry)])
def test_class4_an_outlier_among_two_tasks_is_refused(tmp_path, identity, fault):
    rec, out = run(tmp_path, "two", faults={2: fault}, tasks="mnist,optdigits", **{"min-task-fraction": 0.5})
    assert [x["task"] for x in rec.rounds[1].refused] == ["optdigits"]
    assert "base model's norm" in rec.rounds[1].refused[0]["reason"]
    run(tmp_path, "alone", tasks="mnist")
    assert same_model(out, tmp_path / "alone")


def test_class4_two_outliers_among_three_are_refused(tmp_path, identity):
    rec, out = run(tmp_path, "twobad", faults={2: scale(1000.0), 3: scale(1000.0)}, **{"min-task-fraction": 0.3})
    assert sorted(x["task"] for x in rec.rounds[1].refused) == ["ising", "optdigits"]
    run(tmp_path, "alone", tasks="mnist")
    assert same_model(out, tmp_path / "alone")


def test_class4_a_site_that_grows_after_round_one_is_caught_by_the_previous_round(tmp_path, identity):
    # Round 1 is honest; from round 2 the site sends 20x its update, far above the previous
    # round's accepted norms.
    def later(msg, reply):
        late = kind(msg) == "train" and int(msg.content["config"]["server-round"]) >= 2
        return scale(20.0)(msg, reply) if late else reply
    # (max-update-ratio=0 switches the base bound off, to see this rule on its own.)
    rec, out = run(tmp_path, "grows", faults={2: later}, tasks="mnist,ising",
                   **{"min-task-fraction": 0.5, "num-server-rounds": 3, "max-update-ratio": 0.0})
    assert rec.rounds[1].refused == []
    assert [x["task"] for x in rec.rounds[2].refused] == ["ising"]
    assert "previous round's median" in rec.rounds[2].refused[0]["reason"]


# --- fuzz ---------------------------------------------------------------------------------------
def _corrupt_array(rng):
    def edit(n, a):
        choice = rng.randrange(6)
        if choice == 0:
            return truncate(n, a)
        if choice == 1:
            return extend(n, a)
        if choice == 2:
            return float64_data(n, a)
        if choice == 3:
            return header_lies(n, a)
        if choice == 4:
            return Array(dtype=a.dtype, shape=tuple(s + 1 for s in a.shape), stype=a.stype, data=a.data)
        return Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=bytes(rng.randrange(256) for _ in range(64)))
    return edit


def corrupt_train(msg, reply, rng, stale_to):
    """One random corruption that must get the reply refused (or counted as missing)."""
    c = reply.content
    choice = rng.randrange(16)
    if choice <= 2:
        return replace_array(reply, _corrupt_array(rng))
    if choice == 3:
        del c[rng.choice(["arrays", "metrics", "info"])]
    elif choice == 4:
        c["info"]["task"] = rng.choice(["mnist", "optdigits", "imagenet", ""])
    elif choice == 5:
        c["metrics"][rng.choice(["loss", "num-examples", "seconds"])] = rng.choice([float("nan"), -1.0, float("inf")])
    elif choice == 6:
        tv = c["arrays"].to_torch_state_dict()
        k = rng.choice(list(tv))
        tv[k].view(-1)[rng.randrange(tv[k].numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        c["arrays"] = ArrayRecord(tv)
    elif choice == 7:
        tv = c["arrays"].to_torch_state_dict()
        c["arrays"] = ArrayRecord({k: v * rng.choice([1e4, -1e5, 3e7]) for k, v in tv.items()})
    elif choice == 8:
        tv = c["arrays"].to_torch_state_dict()
        tv.pop(rng.choice(list(tv)))
        c["arrays"] = ArrayRecord(tv)
    elif choice == 9:
        tv = c["arrays"].to_torch_state_dict()
        tv["extra.weight"] = torch.zeros(3)
        c["arrays"] = ArrayRecord(tv)
    elif choice == 10:
        c["info"]["encoding"] = rng.choice(["sparse", "zip", ""])
    elif choice == 11:
        c["evaluation"] = MetricRecord({"accuracy": rng.choice([1.5, -0.1, float("nan")])})
    elif choice == 12:
        c["smuggled"] = ConfigRecord({"x": "y"})
    elif choice == 13:
        c["arrays"] = ArrayRecord({"indices": torch.tensor([5, 3], dtype=torch.int32), "values": torch.ones(2)})
        c["info"]["encoding"] = "sparse"
    elif choice == 14 and stale_to is not None:
        return Message(c, reply_to=stale_to)  # answers an earlier round's message
    elif choice == 15:
        return SILENT
    else:
        return Message(Error(code=1, reason="x" * rng.randrange(1, 5000)), reply_to=msg)
    return reply


def corrupt_evaluate(reply, rng):
    c = reply.content
    choice = rng.randrange(6)
    if choice == 0:
        c["metrics"]["accuracy"] = rng.choice([5.0, -1.0, float("nan"), float("inf")])
    elif choice == 1:
        del c["metrics"]
    elif choice == 2:
        c["info"]["server-round"] = rng.choice([0, 99, -1])
    elif choice == 3:
        c["info"]["task"] = "mnist"
    elif choice == 4:
        c["info"]["server-round"] = "2"
    else:
        c["extra"] = MetricRecord({"accuracy": 1.0})
    return reply


FUZZ_ROUNDS = 5


@pytest.fixture(scope="module")
def clean_long(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean-long")
    with flower_identity():
        run(tmp, "clean", tasks="mnist,optdigits", **{"num-server-rounds": FUZZ_ROUNDS})
    return tmp / "clean"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzz_random_corruptions_never_escape_or_leak(tmp_path, identity, clean_long, seed):
    rng = random.Random(seed)
    earlier: list = []
    corrupted = {"train": 0, "evaluate": 0}

    def fuzz(msg, reply):
        if reply.has_error() or kind(msg) not in corrupted:
            return reply
        corrupted[kind(msg)] += 1
        if kind(msg) == "train":
            out = corrupt_train(msg, reply, rng, earlier[0] if earlier else None)
            earlier.append(msg)
            return out
        return corrupt_evaluate(reply, rng)
    rec, out = run(tmp_path, f"fuzz{seed}", faults={3: fuzz}, **{**TOLERANT, "num-server-rounds": FUZZ_ROUNDS})
    res = strict_results(out)
    assert res["status"] == "finished" and corrupted["train"] == FUZZ_ROUNDS and corrupted["evaluate"] >= 1
    for r in res["rounds"][1:]:
        assert "ising" in {x["task"] for x in r["refused"]} | {x["task"] for x in r["failed"]}
    assert all(0 <= m["accuracy"] <= 1 for r in res["rounds"] for m in r["eval"].values())
    assert same_model(out, clean_long)


def test_fuzz_the_reply_boundary_directly_never_raises(identity):
    """Hundreds of random byte-, structure- and metadata-level corruptions through ``read_reply``."""
    from flwr.app import MessageType, RecordDict

    from atm_fl.task_vector import Layout
    from strategies.replies import Sent, read_reply

    rng = random.Random(7)
    layout = Layout((("w", (4, 3)), ("b", (3,))))
    for i in range(400):
        sent_msg = Message(RecordDict({"config": ConfigRecord({"task": "a"})}), dst_node_id=5,
                           message_type=MessageType.TRAIN)
        sent_msg.metadata.__dict__["_message_id"] = f"m{i}"
        tensors = {"w": torch.randn(4, 3), "b": torch.randn(3)}
        reply = Message(RecordDict({"arrays": ArrayRecord(tensors), "metrics": MetricRecord({"loss": 0.1}),
                                    "info": ConfigRecord({"task": "a", "encoding": "dense"})}), reply_to=sent_msg)
        reply.metadata.__dict__["_src_node_id"] = 5
        rec = reply.content["arrays"]
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice(["w", "b"])
            a = rec[name]
            data = bytearray(a.data)
            for _ in range(rng.randrange(1, 6)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[:rng.randrange(len(data) + 1)]
            rec[name] = Array(dtype=rng.choice([a.dtype, "float16", "int8", "object", ""]),
                              shape=rng.choice([a.shape, (), (12,), (4, 3, 1)]), stype=a.stype, data=bytes(data))
        out = read_reply(reply, {f"m{i}": Sent("train", 1, "a", 5)}, layout)
        if out.content is not None:  # only a reply whose bytes still decode to finite values of the right shape
            assert torch.isfinite(out.content.vector).all() and out.content.vector.shape == (15,)
