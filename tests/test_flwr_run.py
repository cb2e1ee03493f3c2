"""End to end through the real `flwr run` simulation engine (SuperLink + Ray), via `atm-fl run`.

Each test runs with its own FLWR_HOME and local-SuperLink ports, so it never touches a
developer's SuperLink, and stops the SuperLink it caused to start by PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.local_flower import FlowerEnv

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@pytest.fixture
def flwr_env(tmp_path):
    flower = FlowerEnv(tmp_path)
    yield flower.env
    flower.close()


def atm_fl_run(env, run_config: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", run_config],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_flwr_run_simulation_runs_atm_and_writes_results(tmp_path, flwr_env):
    out = tmp_path / "runs"
    proc = atm_fl_run(flwr_env, f"model-family='tiny-mlp' tasks='mnist,optdigits,ising' num-server-rounds=2 "
                                f"max-train-examples=64 max-eval-examples=64 merge-method='ties' "
                                f"output-dir='{out}' run-name='e2e'")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    res = json.loads((out / "e2e" / "results.json").read_text())
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1, 2]
    assert all(set(r["eval"]) == {"mnist", "optdigits", "ising"} for r in res["rounds"])
    assert res["merge"]["method"] == "ties" and (out / "e2e" / "model.safetensors").stat().st_size > 0
    # Three simulated nodes, one per task.
    assert len(set(res["task_nodes"].values())) == 3
    assert "per-round accuracy" in log and "average" in log


def test_failed_run_gives_nonzero_exit_and_the_reason(tmp_path, flwr_env):
    # A failure only the clients can see (the CLI's checks pass): one training example
    # cannot give every class a prototype, so every task fails and round 1 stops the run.
    proc = atm_fl_run(flwr_env, f"model-family='tiny-mlp' tasks='mnist,optdigits' max-train-examples=1 "
                                f"num-server-rounds=1 output-dir='{tmp_path / 'runs'}' run-name='bad'")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]
    assert "no training example of class" in log and "finished:failed" in log
    res = json.loads((tmp_path / "runs" / "bad" / "results.json").read_text())
    assert res["status"] == "failed" and "RoundFailed" in res["error"]
