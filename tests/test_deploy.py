"""The deployment guide on one machine: real SuperLink + SuperNodes on 127.0.0.1, TLS, node authentication.

Everything goes through the scripts in deploy/ that docs/deployment.md tells an operator
to run: certificates, site keys, SuperLink, federation entry, key registration, one
SuperNode per site, and `atm-fl run . <federation>`. The optdigits site serves its own
local data directory (written here) when ``atm_fl.tasks.local`` is available; mnist uses
the built-in offline data. A third SuperNode whose key was never registered must be
refused. Every process started here is stopped by its PID; FLWR_HOME and the dataset
cache are temporary.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from experiments.local_flower import INTRUDER, local_deployment
from tests.conftest import PLAIN_CLIENT_INLINE

SITES = ("mnist", "optdigits")
pytestmark = pytest.mark.e2e


def write_site_data(root: Path) -> None:
    """A small image-folder copy of optdigits: the site's own data directory."""
    import numpy as np
    from PIL import Image

    from atm_fl.tasks import load_task

    full = load_task("optdigits")
    for split, data, per_class in (("train", full.train, 6), ("test", full.test, 3)):
        labels = np.asarray(data["label"])
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:per_class]:
                Image.fromarray(np.asarray(data[int(i)]["image"], dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    # optdigits serves its own local data directory (written here) when local data is supported.
    local_data = importlib.util.find_spec("atm_fl.tasks.local") is not None
    if local_data:
        write_site_data(tmp / "optdigits-site")
    with local_deployment(tmp, SITES, {"optdigits": tmp / "optdigits-site"} if local_data else None,
                          intruder=True) as dep:
        dep.local_data = local_data
        yield dep


RUN_CONFIG = ("model-family='tiny-mlp' tasks='mnist,optdigits' num-server-rounds=1 image-size=32 max-train-examples=32 "
              "max-eval-examples=32 batch-size=16 lr=0.01 discovery-timeout=60.0 round-timeout=300.0 "
              + PLAIN_CLIENT_INLINE)


def test_atm_round_over_tls_with_authenticated_sites(deployment):
    out = deployment.tmp / "runs"
    # An SVD-based merge plugin (issue 13: they work in deployment too); the merge runs on the
    # server, so which one it is changes nothing else here.
    proc = deployment.atm_fl_run(RUN_CONFIG + f"merge-method='tsv-m' output-dir='{out}' run-name='deployed'")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    res = json.loads((out / "deployed" / "results.json").read_text())
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1]
    assert all(set(r["eval"]) == set(SITES) for r in res["rounds"])
    assert set(res["rounds"][1]["train"]) == set(SITES) and res["faults"]["failed"] == 0
    assert res["merge"]["method"] == "tsv-m"
    assert (out / "deployed" / "model.safetensors").stat().st_size > 0
    assert (out / "deployed" / "checkpoint" / "round-0001.safetensors").exists()
    # Each task ran on the node registered for that site's key, and only there.
    assert res["task_nodes"] == deployment.node_ids
    for site in SITES:
        other = next(s for s in SITES if s != site)
        assert f"[{site} r1]" in deployment.log(site) and f"[{site} r1]" not in deployment.log(other)
    if deployment.local_data:
        # optdigits came from the site's directory (30 test images; the built-in data would give
        # max-eval-examples=32).
        assert [r["eval"]["optdigits"]["num-examples"] for r in res["rounds"]] == [30, 30]
        assert res["rounds"][1]["eval"]["mnist"]["num-examples"] == 32


def test_failed_remote_run_exits_nonzero(deployment):
    proc = deployment.atm_fl_run(RUN_CONFIG + f"merge-method='avg' output-dir='{deployment.tmp / 'runs'}'")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-5000:]
    assert "not a merge method" in log and "finished:failed" in log


def test_unregistered_supernode_is_refused(deployment):
    intruder = deployment.procs[INTRUDER]
    try:
        code = intruder.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the SuperNode with an unregistered key is still running:\n" + deployment.log("intruder")[-3000:])
    assert code != 0
    assert "Failed to activate SuperNode" in deployment.log(INTRUDER)
    assert "No SuperNode found with the given public key" in deployment.log("superlink")
    nodes = deployment.wait_online(len(SITES), timeout=5)
    assert {int(nd["node-id"]) for nd in nodes} == set(deployment.node_ids.values())
