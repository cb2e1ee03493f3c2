"""Ctrl-C on ``atm-fl run`` in simulation: the run stops on the local SuperLink too, as ``stopped``.

The real ``flwr run`` simulation engine (local SuperLink, ``flwr-simulation``, Ray), with
its own FLWR_HOME and ports (``FlowerEnv``). ``atm-fl run`` runs in a session of its own
and gets SIGINT as a terminal's foreground job would. The ServerApp runs in a worker
thread of ``flwr-simulation``. It learns of the stop when Flower's exit begins, which is
when the process's task heartbeat (every 17.5-22.5 s) finds the run stopped. So a few more
tiny rounds may finish first, and they are kept.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atm_fl.cli import run_status, superlink_pids
from experiments.local_flower import FOREGROUND_JOB, FlowerEnv, alive, descendants, is_command
from tests.conftest import PLAIN_CLIENT_INLINE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e
ROUNDS = 200


@pytest.fixture
def flower(tmp_path, monkeypatch):
    env = FlowerEnv(tmp_path)
    for key in ("FLWR_HOME", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT"):
        monkeypatch.setenv(key, env.env[key])  # run_status asks this test's SuperLink
    yield env
    env.close()


def test_ctrl_c_stops_a_simulation_run_and_keeps_its_rounds(tmp_path, flower):
    out, log = tmp_path / "runs", tmp_path / "run.log"
    config = (f"model-family='tiny-mlp' tasks='mnist,optdigits' num-server-rounds={ROUNDS} max-train-examples=32 "
              f"max-eval-examples=32 output-dir='{out}' run-name='sim' " + PLAIN_CLIENT_INLINE)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", config],
                                env=flower.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, **FOREGROUND_JOB)
    try:
        for _ in range(1200):
            if "[ROUND 3/" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-4000:]
        run_id = re.search(r"run (\d{4,})", log.read_text()).group(1)
        link = superlink_pids(str(flower.port).encode())[0]
        # flwr-simulation and the Ray processes it started; orphans would leave this tree.
        started = {p: c for p, c in descendants(link).items() if not is_command(c, "flower-superexec")}
        assert any(is_command(c, "flwr-simulation") for c in started.values()), started
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=240) == 130, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert run_status(run_id) == "finished:stopped"
    res = json.loads((out / "sim" / "results.json").read_text())
    assert res["status"] == "stopped", (res.get("error"), log.read_text()[-3000:])
    done = [r["round"] for r in res["rounds"]]
    assert done == list(range(len(done))) and 3 <= done[-1] < ROUNDS
    state = json.loads((out / "sim" / "checkpoint" / "state.json").read_text())
    assert 2 <= state["round"] <= done[-1]
    # flwr-simulation and the Ray processes it started are gone (the SuperLink and its launcher stay).
    for _ in range(240):
        left = {p: c for p, c in started.items() if alive(p)}
        if not left:
            break
        time.sleep(0.5)
    assert left == {}


def test_a_stopped_job_gets_ctrl_c_even_when_pytest_runs_with_sigint_ignored():
    # CI from `nohup ... &` starts pytest with SIGINT ignored; the run under test must still
    # see Ctrl-C, as a terminal's foreground job would.
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        inherited = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
        ours = subprocess.run(probe, capture_output=True, text=True, check=True, **FOREGROUND_JOB).stdout.strip()
    finally:
        signal.signal(signal.SIGINT, old)
    assert (inherited, ours) == ("True", "False")
