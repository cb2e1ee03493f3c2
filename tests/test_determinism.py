"""Same seed, same results on the CPU; another seed, other results.

Each run starts from an empty client cache (``atm_fl.runtime._RUNTIMES``), so the second
run rebuilds data subsets, heads and models from scratch rather than reusing the first
run's objects, and torch's global RNG is left in a different state between the runs.
"""

import json

import torch
from safetensors.torch import load_file

from atm_fl import runtime
from atm_fl.config import parse_run_config
from strategies.server_app import run_atm
from clients.task_client import app as client_app
from tests.conftest import small_config
from tests.inprocess import InProcessGrid


def run(tmp_path, name, **overrides):
    runtime._RUNTIMES.clear()
    torch.manual_seed(len(name))  # unrelated global RNG state before each run
    raw = small_config(tmp_path, **{"run-name": name, "merge-method": "dare", **overrides})
    cfg = parse_run_config(raw)
    run_atm(InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list)), cfg)
    out = tmp_path / name
    res = json.loads((out / "results.json").read_text())
    acc = {r["round"]: {t: m["accuracy"] for t, m in r["eval"].items()} for r in res["rounds"]}
    loss = {r["round"]: {t: m["loss"] for t, m in r.get("train", {}).items()} for r in res["rounds"]}
    return acc, loss, load_file(str(out / "model.safetensors"))


def test_same_seed_same_results_other_seed_other_results(tmp_path, identity):
    # DARE's random masks are on, so the server's randomness is covered too.
    acc_a, loss_a, model_a = run(tmp_path, "a", seed=7)
    acc_b, loss_b, model_b = run(tmp_path, "bb", seed=7)
    assert acc_a == acc_b and loss_a == loss_b
    assert model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k]) for k in model_a)

    acc_c, _, model_c = run(tmp_path, "ccc", seed=8)
    assert any(not torch.equal(model_a[k], model_c[k]) for k in model_a if model_a[k].is_floating_point())
    assert acc_c != acc_a


def test_svd_merges_repeat_bit_for_bit(tmp_path, identity):
    # TSV-M and Iso-C run LAPACK (OpenBLAS) on worker threads over task vectors decoded from
    # replies. On one machine they repeat to the bit, as the mean does; on another CPU,
    # OpenBLAS's kernels may give other last bits (docs/results/README.md).
    for method in ("tsv-m", "iso-c"):
        acc_a, loss_a, model_a = run(tmp_path, f"{method}-a", seed=3, **{"merge-method": method})
        acc_b, loss_b, model_b = run(tmp_path, f"{method}-bb", seed=3, **{"merge-method": method})
        assert acc_a == acc_b and loss_a == loss_b, method
        assert all(torch.equal(model_a[k], model_b[k]) for k in model_a), method
