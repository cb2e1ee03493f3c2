"""GPU sharing with Ray, checked on the CPU: the fractional-GPU federation config and streamed data in Ray actors.

* ``atm-fl run`` passes the ``--federation-config`` of docs/gpu.md through to ``flwr run``
  unchanged, and Flower's own parser reads ``client-resources-num-gpus=0.25`` from it.
* A real ``flwr run`` simulation whose clients each reserve a quarter of a GPU: Ray is
  told the machine has one (``init-args-num-gpus=1``, a logical resource, so the actors
  get scheduled on a CPU-only machine), ``device='auto'`` resolves to the CPU inside
  them, and the clients stream their data through DataLoader worker processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atm_fl import cli
from atm_fl.config import parse_run_config
from atm_fl.train import FinetuneSettings, resolve_device

ROOT = Path(__file__).resolve().parents[1]
PAPER_FEDERATION = "num-supernodes=8 client-resources-num-cpus=2 client-resources-num-gpus=0.25"


class _FakeFlwr:
    """Stands in for the ``flwr run`` subprocess: records the command, prints nothing, exits 0."""

    calls: list[list[str]] = []

    def __init__(self, cmd, **kwargs):
        _FakeFlwr.calls.append(list(cmd))
        self.stdout = iter(())

    def wait(self):
        return 0


def flwr_command(monkeypatch, argv: list[str]) -> list[str]:
    for k, v in cli.FLWR_ENV.items():
        monkeypatch.setenv(k, v)  # cli.run sets them in os.environ; monkeypatch restores them
    monkeypatch.setattr(cli, "ensure_superlink_env", lambda: None)
    monkeypatch.setattr(cli.subprocess, "Popen", _FakeFlwr)
    _FakeFlwr.calls.clear()
    cli.run(argv)  # returns 2: the fake prints no run id
    (cmd,) = _FakeFlwr.calls
    return cmd


def flower_reads(federation_config: str):
    """The simulation config Flower's ``flwr run`` builds from a --federation-config string."""
    from flwr.common.config import parse_config_args
    from flwr.supercore.utils import simulation_config_from_json

    raw = parse_config_args([federation_config])
    return simulation_config_from_json({k.replace("-", "_"): v for k, v in raw.items()})


def test_fractional_gpu_federation_config_reaches_flower_unchanged(monkeypatch):
    cmd = flwr_command(monkeypatch, [str(ROOT), "--run-config", "experiments/presets/vit-b16-8tasks.toml",
                                     "--federation-config", PAPER_FEDERATION])
    assert cmd[cmd.index("--federation-config") + 1] == PAPER_FEDERATION
    sim = flower_reads(PAPER_FEDERATION)
    assert (sim.num_supernodes, sim.client_resources_num_cpus, sim.client_resources_num_gpus) == (8, 2, 0.25)
    # Without one, atm-fl run asks for one node per task and one CPU each, no GPU.
    cmd = flwr_command(monkeypatch, [str(ROOT), "--run-config", "experiments/presets/vit-b16-8tasks.toml"])
    default = cmd[cmd.index("--federation-config") + 1]
    assert default == "num-supernodes=8 client-resources-num-cpus=1"
    assert flower_reads(default).client_resources_num_gpus == 0


def test_device_resolves_without_a_gpu():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert FinetuneSettings.from_config(parse_run_config({"device": "auto"})).device == "cpu"
    with pytest.raises(RuntimeError, match="'device' = 'cuda'.*device='auto'"):
        resolve_device("cuda")


@pytest.mark.e2e
def test_quarter_gpu_clients_stream_their_data_in_a_real_simulation(tmp_path):
    from experiments.local_flower import FlowerEnv

    flower = FlowerEnv(tmp_path)
    out = tmp_path / "runs"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config",
             f"model-family='tiny-mlp' tasks='mnist,optdigits' num-server-rounds=1 max-train-examples=48 "
             f"max-eval-examples=32 data-in-memory-mb=0 data-workers=1 output-dir='{out}' run-name='gpu-share'",
             "--federation-config",
             "num-supernodes=2 client-resources-num-cpus=1 client-resources-num-gpus=0.25 init-args-num-gpus=1"],
            env=flower.env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    finally:
        flower.close()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    res = json.loads((out / "gpu-share" / "results.json").read_text())
    assert res["status"] == "finished" and set(res["rounds"][-1]["eval"]) == {"mnist", "optdigits"}
    assert "streamed, 1 data worker(s)" in log  # the clients' DataLoaders ran inside the Ray actors
