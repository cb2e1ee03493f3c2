"""Streamed data (``atm_fl.data``) gives the in-memory results; a client process holds one task at a time.

Streamed and in-memory splits must give bit-identical task vectors and metrics on the
CPU (same seeded order, same per-example transform), with and without DataLoader
worker processes, for the image, open_clip and text families. The eviction test drives
the real ClientApp and ServerApp over three tasks in one process, the worst case of a
Ray actor that Flower hands every task in turn.
"""

from __future__ import annotations

import json

import pytest
import torch

from atm_fl import runtime
from atm_fl.config import ConfigError, parse_run_config
from atm_fl.data import InMemorySplit, StreamingSplit, as_split, make_split
from atm_fl.models import get_family
from atm_fl.runtime import TaskRuntime, live_runtimes
from tests.conftest import small_config
from tests.inprocess import InProcessGrid

try:  # the ServerApp is moving from atm_fl/ to strategies/
    from strategies.server_app import run_atm
except ImportError:  # pragma: no cover
    from atm_fl.server_app import run_atm

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def one_round(raw: dict, task: str, data_dir: str | None = None) -> tuple[dict, dict, dict, TaskRuntime]:
    """(task vector, train metrics, test metrics) of round 1 from the pretrained backbone."""
    cfg = parse_run_config(raw)
    rt = TaskRuntime(cfg, task, data_dir)
    base = {k: v.clone() for k, v in rt.family.build_backbone().state_dict().items()}
    tv, metrics = rt.train_round(base, 1)
    test = rt.evaluate(base, "test")
    metrics.pop("seconds")
    test.pop("loss")  # equal too, checked below through accuracy and the vector
    return tv, metrics, test, rt


def assert_same_round(a, b):
    tv_a, m_a, t_a, _ = a
    tv_b, m_b, t_b, _ = b
    assert tv_a.keys() == tv_b.keys() and all(torch.equal(tv_a[k], tv_b[k]) for k in tv_a)
    assert m_a == m_b and t_a == t_b


@pytest.fixture(autouse=True)
def fresh_heads():
    runtime._HEADS.clear()  # each runtime builds its head from its own split kind
    yield
    runtime._RUNTIMES.clear()


def test_streamed_equals_in_memory_efficientnet_and_workers():
    raw = {"tasks": "optdigits", "max-train-examples": 40, "max-eval-examples": 24, "batch-size": 16,
           "local-epochs": 1.5, "image-size": 32}
    mem = one_round(raw, "optdigits")
    assert isinstance(mem[3].train, InMemorySplit) and isinstance(mem[3].test, InMemorySplit)
    runtime._HEADS.clear()
    stream = one_round({**raw, "data-in-memory-mb": 0.0}, "optdigits")
    assert isinstance(stream[3].train, StreamingSplit) and isinstance(stream[3].test, StreamingSplit)
    assert_same_round(mem, stream)
    runtime._HEADS.clear()
    workers = one_round({**raw, "data-in-memory-mb": 0.0, "data-workers": 2}, "optdigits")
    assert workers[3].train.workers == 2
    assert_same_round(mem, workers)


def test_streamed_equals_in_memory_open_clip_on_a_local_image_folder(tmp_path):
    from tests.test_families_offline import EUROSAT_FOLDERS, write_image_folder

    path = tmp_path / "atm-stream-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    data = write_image_folder(tmp_path / "eurosat", EUROSAT_FOLDERS, per_class=(3, 2), size=40)
    raw = {"model-family": "open-clip", "model-name": str(path), "model-pretrained": "none", "tasks": "eurosat",
           "batch-size": 8, "lr": 1e-3}
    mem = one_round(raw, "eurosat", str(data))
    stream = one_round({**raw, "data-in-memory-mb": 0.0}, "eurosat", str(data))
    assert isinstance(stream[3].train, StreamingSplit) and isinstance(mem[3].train, InMemorySplit)
    assert_same_round(mem, stream)


def test_streamed_equals_in_memory_minilm():
    raw = {"model-family": "transformers", "model-name": "minilm", "tasks": "debate-party", "max-seq-length": 16,
           "max-train-examples": 12, "max-eval-examples": 8, "batch-size": 8, "lr": 1e-3}
    mem = one_round(raw, "debate-party")
    runtime._HEADS.clear()
    stream = one_round({**raw, "data-in-memory-mb": 0.0}, "debate-party")
    assert isinstance(stream[3].train, StreamingSplit)
    assert_same_round(mem, stream)


def test_size_rule_and_streamed_split_interface():
    cfg = parse_run_config({"tasks": "mnist", "image-size": 32})
    fam = get_family(cfg)
    from atm_fl.tasks import load_task

    splits = load_task("mnist")
    rows = splits.test.select(range(20))
    encode = lambda r: fam.encode(r, splits)  # noqa: E731
    # One example: 3 x 32 x 32 float32 = 12 KiB, 20 of them 240 KiB.
    assert isinstance(make_split(rows, encode, in_memory_mb=0.25), InMemorySplit)
    assert isinstance(make_split(rows, encode, in_memory_mb=0.2), StreamingSplit)
    streamed = make_split(rows, encode, in_memory_mb=0.0)
    assert isinstance(streamed, StreamingSplit)
    held = as_split(fam.encode(rows, splits))
    assert torch.equal(streamed["labels"], held["labels"]) and streamed.num_examples == 20
    order = torch.tensor([3, 3, 19, 0, 7])  # repeats, as epochs do
    for a, b in zip(streamed.batches(2, order), held.batches(2, order), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(KeyError, match="data-in-memory-mb"):
        streamed["pixel_values"]
    with pytest.raises(ValueError, match="no examples"):
        make_split(rows.select([]), encode, in_memory_mb=1.0, what="mnist test")


def test_head_examples_cap_builds_the_head_from_a_seeded_subset():
    raw = {"model-family": "tiny-mlp", "tasks": "optdigits", "max-train-examples": 64, "image-size": 32}
    full = TaskRuntime(parse_run_config(raw), "optdigits").head
    capped_a = TaskRuntime(parse_run_config({**raw, "max-head-examples": 30}), "optdigits").head
    runtime._HEADS.clear()
    capped_b = TaskRuntime(parse_run_config({**raw, "max-head-examples": 30}), "optdigits").head
    assert capped_a is not capped_b and torch.equal(capped_a.prototypes, capped_b.prototypes)
    assert not torch.equal(full.prototypes, capped_a.prototypes)
    # Ten examples for ten classes: one each, so the head can still be built.
    runtime._HEADS.clear()
    TaskRuntime(parse_run_config({**raw, "max-head-examples": 10}), "optdigits")


def test_balanced_subset_deals_over_the_classes():
    import numpy as np

    from atm_fl.runtime import balanced_subset

    labels = np.array([0] * 50 + [1] * 3 + [2] * 30)
    idx = balanced_subset(labels, 9, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3, 3, 3] and list(idx) == sorted(idx)
    assert np.bincount(labels[balanced_subset(labels, 20, seed=0)]).tolist() == [9, 3, 8]  # class 1 has only 3
    assert not np.array_equal(balanced_subset(labels, 20, seed=0), balanced_subset(labels, 20, seed=1))


@pytest.mark.parametrize("key, value, words", [
    ("data-workers", -1, ["'data-workers'", "-1", "[0, 64]"]),
    ("data-workers", 1.5, ["'data-workers'", "1.5"]),
    ("data-in-memory-mb", -5.0, ["'data-in-memory-mb'", "-5", "[0, 10000000]"]),
    ("max-head-examples", -1, ["'max-head-examples'", "-1"]),
])
def test_data_keys_are_range_checked(key, value, words):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    for w in words:
        assert w in str(err.value)


def test_a_client_process_never_holds_two_task_runtimes(tmp_path, identity, monkeypatch):
    import clients.task_client as task_client

    seen = []
    real = task_client.get_task_runtime

    def checked(cfg, task, data_dir=None):
        rt = real(cfg, task, data_dir)
        seen.append(task)
        # The runtime just handed out is the only one alive in this process.
        assert live_runtimes() == [task], f"process holds {live_runtimes()} while serving {task}"
        return rt

    monkeypatch.setattr(task_client, "get_task_runtime", checked)
    raw = small_config(tmp_path, **{"num-server-rounds": 2, "max-train-examples": 32, "max-eval-examples": 32})
    cfg = parse_run_config(raw)
    # One process serves all three tasks in turn: the in-process grid is a Ray actor that
    # Flower hands every message.
    run_atm(InProcessGrid(task_client.app, raw, num_nodes=3), cfg)
    assert len(seen) >= 6 and set(seen) == {"mnist", "optdigits", "ising"}
    assert len(live_runtimes()) <= 1 and runtime.process_caches()["runtimes"] <= 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"
