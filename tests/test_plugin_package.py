"""The example third-party plugin (examples/atm-fl-example-plugin), pip-installed and run through ``flwr run``.

Issue #13, item 4: an installed package adds a merge method by entry point alone, and
it runs in a real simulation (SuperLink, Ray, ServerApp in its own process). The
package is installed into this interpreter's environment for the test and uninstalled
afterwards, so other tests never see it. The plugin module is also loaded straight
from its file for fast checks of its arithmetic that need no install.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PLAIN_CLIENT
import torch

from atm_fl import plugins
from atm_fl.config import ConfigError
from experiments.local_flower import FlowerEnv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "atm-fl-example-plugin"
DIST = "atm-fl-example-plugin"


def pip(*args: str) -> None:
    # --no-index: must work offline; --no-build-isolation: use the setuptools installed here.
    out = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def example_module():
    spec = importlib.util.spec_from_file_location("atm_fl_example_plugin_src",
                                                  EXAMPLE / "atm_fl_example_plugin" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaled_mean_arithmetic_and_cross_check():
    method = example_module().scaled_mean
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    ctx = plugins.MergeContext(layout=None, tasks=("a", "b"), server_round=1, seed=0)
    before = a.clone()
    assert torch.allclose(method([a, b], ctx), (a + b) / 2)  # defaults: the plain mean
    assert torch.allclose(method([a, b], ctx, scale=0.5), (a + b) / 4)
    assert torch.allclose(method([a, b], ctx, clip=2.5), (a / 2 + b) / 2)  # |a| = 5 shrinks to 2.5
    assert torch.allclose(method([a, b], ctx, normalize=True), (a / 5 + b / 2) / 2)
    assert torch.equal(a, before)  # the contract: inputs untouched
    assert method.check({"scale": 1.0, "clip": 1.0, "normalize": True})
    assert method.check({"scale": 1.0, "clip": 0.0, "normalize": True}) is None


@pytest.fixture
def installed_example(tmp_path):
    """The example package, pip-installed (a copy: a build writes build/ and *.egg-info beside the source)."""
    src = tmp_path / "pkg"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    try:
        pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(src))
        plugins.refresh()
        yield
    finally:
        pip("uninstall", "--yes", "--quiet", DIST)
        plugins.refresh()


@pytest.fixture
def flwr_env(tmp_path):
    flower = FlowerEnv(tmp_path)
    yield flower.env
    flower.close()


def atm_fl_run(env, run_config: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", run_config],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def backbone(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.e2e
def test_installed_plugin_is_found_checked_and_run_by_flwr_run(tmp_path, installed_example, flwr_env, identity):
    # Found by name with no import, and its cross-parameter check refuses before Flower starts.
    method, params = plugins.resolve_merge("scaled-mean", "scale=0.5")
    assert params == {"scale": 0.5, "clip": 0.0, "normalize": False}
    with pytest.raises(ConfigError, match="normalize=true and clip > 0"):
        plugins.resolve_merge("scaled-mean", "clip=1.0,normalize=true")
    bad = atm_fl_run(flwr_env, "merge-method='scaled-mean' merge-params='clip=1.0,normalize=true'")
    assert bad.returncode == 2 and "normalize=true and clip > 0" in bad.stderr, bad.stdout + bad.stderr
    assert not Path(flwr_env["FLWR_HOME"]).exists(), "flwr was started for a refused config"

    # A real simulation with the plugin: scaled-mean, scale 0.5, alpha 1 ...
    out = tmp_path / "runs"
    common = {"model-family": "tiny-mlp", "tasks": "mnist,optdigits", "num-server-rounds": 2,
              "max-train-examples": 32, "max-eval-examples": 32, "batch-size": 16, "lr": 0.01,
              "output-dir": str(out), **PLAIN_CLIENT}
    inline = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in common.items())
    assert common["alpha"] == 1.0  # from PLAIN_CLIENT: the reference below relies on it
    proc = atm_fl_run(flwr_env, f"{inline} merge-method='scaled-mean' merge-params='scale=0.5' run-name='plugin'")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads((out / "plugin" / "results.json").read_text())
    assert res["status"] == "finished" and res["merge"]["method"] == "scaled-mean"
    assert res["merge"]["params"] == {"scale": 0.5, "clip": 0.0, "normalize": False}

    # ... must give the model of mean with alpha 0.5: the same ServerApp and ClientApp code,
    # in process (no second simulation: that would double the test's time).
    from atm_fl.config import parse_run_config
    from atm_fl.models import get_family
    from clients.task_client import app as client_app
    from strategies.server_app import run_atm
    from tests.inprocess import InProcessGrid

    raw = {**common, "merge-method": "mean", "alpha": 0.5, "run-name": "mean", "discovery-timeout": 5.0}
    assert run_atm(InProcessGrid(client_app, raw, num_nodes=2), parse_run_config(raw)).status == "finished"

    base = get_family(parse_run_config(raw)).build_backbone().state_dict()
    plugin, mean = backbone(out / "plugin" / "model.safetensors"), backbone(out / "mean" / "model.safetensors")
    assert plugin.keys() == mean.keys()
    moved = max(float((plugin[k] - base[k]).abs().max()) for k in plugin if plugin[k].is_floating_point())
    apart = max(float((plugin[k] - mean[k]).abs().max()) for k in plugin if plugin[k].is_floating_point())
    # The run moved the model a lot and agrees with the reference to float rounding; had
    # scale been ignored (mean with alpha 1), they would be as far apart as a whole step.
    assert moved > 1e-3 and apart < 1e-5 and apart < moved * 1e-3, (moved, apart)
