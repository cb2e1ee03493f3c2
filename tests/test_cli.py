"""``atm-fl`` as a user runs it (a subprocess): bad run-configs never reach Flower; ``atm-fl merges`` lists plugins.

Whether Flower started is read from ``FLWR_HOME``: the first thing ``flwr run`` does is
create ``$FLWR_HOME/config.toml``, before it builds the app or starts a SuperLink; the
control test shows that it does when the config passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atm_fl import plugins

ROOT = Path(__file__).resolve().parents[1]


def atm_fl(args: list[str], env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atm_fl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def flwr_home(tmp_path) -> Path:
    return tmp_path / "flwr-home"


def refused(flwr_home: Path, *run_config: str) -> str:
    """Run ``atm-fl run`` and return its one error line, checking Flower was never started."""
    args = ["run", str(ROOT)]
    for rc in run_config:
        args += ["--run-config", rc]
    proc = atm_fl(args, env={"FLWR_HOME": str(flwr_home)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not flwr_home.exists(), "flwr was started"
    lines = proc.stderr.strip().splitlines()
    assert proc.stdout == "" and len(lines) == 1 and lines[0].startswith("atm-fl: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("run_config, words", [
    ("alpha=inf", ["'alpha'", "inf", "finite", "(0, 100]"]),
    ("alpha=1e30", ["'alpha'", "1e+30", "out of range", "(0, 100]"]),
    ("alpha=nan", ["'alpha'", "nan", "finite"]),
    ("lr=inf", ["'lr'", "inf", "(0, 10]"]),
    ("learning-rate=0.1", ["unknown run-config key 'learning-rate'", "did you mean 'lr'"]),
    ("run-name='../x'", ["'run-name'", "'../x'", "one directory name", "output-dir"]),
    ("merge-method='breadcrumbs' merge-params='lower=0.9,upper=0.5'",
     ["merge-params", "breadcrumbs", "lower=0.9", "upper=0.5", "must be below"]),
    ("merge-method='meen'", ["'merge-method'", "'meen'", "did you mean 'mean'"]),
    ("run-name=foo", ["'run-name'", "run-name='foo'"]),
])
def test_bad_inline_run_config_exits_2_naming_key_value_and_fix(flwr_home, run_config, words):
    line = refused(flwr_home, run_config)
    for w in words:
        assert w in line


def test_typo_in_a_toml_file_is_named_with_the_closest_key(tmp_path, flwr_home):
    f = tmp_path / "preset.toml"
    f.write_text("model-family = 'tiny-mlp'\nlearnig-rate = 0.1\n")
    line = refused(flwr_home, str(f))
    assert str(f) in line and "'learnig-rate'" in line and "did you mean 'lr'" in line


def test_toml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, flwr_home):
    f = tmp_path / "broken.toml"
    f.write_text("alpha = 1.0\nlr = = 0.1\n")
    line = refused(flwr_home, str(f))
    assert str(f) in line and "line 2, column 6" in line and "Invalid value" in line


def test_repeated_run_config_is_checked_as_flower_fuses_it(flwr_home):
    """The last value of a key wins, as in Flower: a good first value cannot hide a bad second one."""
    line = refused(flwr_home, "alpha=0.5 model-family='tiny-mlp'", "alpha=inf")
    assert "'alpha'" in line and "inf" in line


def test_control_a_good_config_does_reach_flwr(flwr_home):
    """Shows the FLWR_HOME check above can fail: a valid config goes on to `flwr run`.

    A federation nobody configured makes flwr stop right after reading its config, so
    no SuperLink is started.
    """
    proc = atm_fl(["run", str(ROOT), "no-such-federation", "--run-config", "alpha=0.5"],
                  env={"FLWR_HOME": str(flwr_home)})
    assert proc.returncode not in (0, 2), proc.stdout + proc.stderr
    assert (flwr_home / "config.toml").exists() and "no-such-federation" in proc.stdout + proc.stderr


def test_unknown_command_names_the_valid_ones():
    proc = atm_fl(["rnu"])
    assert proc.returncode == 2 and "'rnu'" in proc.stderr and "run, merges" in proc.stderr


# --- atm-fl merges ---------------------------------------------------------------------------
def test_merges_lists_every_method_with_parameters_and_defaults():
    proc = atm_fl(["merges"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name, method in plugins.merge_methods().items():
        assert f"  {name}: {method.doc}" in out
        for p in method.params:
            assert f"{p.name} = {p.default!r}" in out
    assert "lower = 0.85" in out and "density = 0.2" in out and "p = 0.9" in out
    for name in plugins.server_optimizers():
        assert f"  {name}: " in out


def test_merges_markdown_is_the_plugin_table():
    proc = atm_fl(["merges", "--markdown"])
    assert proc.returncode == 0, proc.stderr
    assert plugins.plugins_markdown(plugins.merge_methods()) in proc.stdout
    assert "| `ties` | `density` (0.2)" in proc.stdout


def test_merges_reports_clashing_and_broken_plugins_with_reasons(tmp_path):
    """Two installed distributions (real dist-info on PYTHONPATH): one clashes with 'mean', one is broken."""
    (tmp_path / "tp_clash.py").write_text(textwrap.dedent("""
        from atm_fl.plugins import MergeMethod
        mean = MergeMethod("mean", lambda v, ctx: v[0], (), "an impostor")
    """))
    (tmp_path / "tp_broken.py").write_text("raise ImportError('needs torch_scatter')\n")
    for dist, ep in [("tp-clash", "mean = tp_clash:mean"), ("tp-broken", "broken = tp_broken:thing")]:
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"  # the spec's name: importlib reads it
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{plugins.MERGE_GROUP}]\n{ep}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = atm_fl(["merges"], env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = proc.stdout.split("plugins that cannot be used")[1]
    assert "mean (atm_fl.merge_methods): clash" in problems and "tp_clash:mean" in problems
    assert "broken (atm_fl.merge_methods)" in problems and "torch_scatter" in problems
    assert "  ties: " in proc.stdout  # the others are still listed
    md = atm_fl(["merges", "--markdown"], env=env)
    assert md.returncode == 1 and "| `atm_fl.merge_methods` | `broken` |" in md.stdout
