"""Run-config: defaults in pyproject match the key table, docs are current, bad values are refused."""

import tomllib
from pathlib import Path

import pytest

from atm_fl.config import KEYS, ConfigError, markdown_table, parse_run_config

ALPHA_DEFAULT = next(k.default for k in KEYS if k.name == "alpha")  # the error names the default

ROOT = Path(__file__).resolve().parents[1]


def pyproject_config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_equal_key_table():
    assert pyproject_config() == {k.name: k.default for k in KEYS}


def test_every_key_is_kebab_case_and_documented():
    doc = (ROOT / "docs" / "run-config.md").read_text()
    assert doc == markdown_table(), "regenerate: python -m atm_fl.config > docs/run-config.md"
    for k in KEYS:
        assert k.name == k.name.lower() and "_" not in k.name
        assert f"`{k.name}`" in doc and k.doc


def test_defaults_parse():
    cfg = parse_run_config(pyproject_config())
    assert cfg.num_server_rounds == 16 and cfg.image_size == 64 and cfg.task_list == ["mnist", "optdigits", "ising", "cahn-hilliard"]


@pytest.mark.parametrize("raw, words", [
    ({"num-server-rounds": 0}, ["num-server-rounds", "0", "[1, 10000]"]),
    ({"local-epochs": -1.0}, ["local-epochs", "-1.0"]),
    ({"lr": "fast"}, ["lr", "'fast'", "float"]),
    ({"optimizer": "lion"}, ["optimizer", "lion", "adamw, sgd"]),
    ({"tasks": "mnist,imagenet"}, ["tasks", "imagenet", "valid tasks", "optdigits"]),
    ({"tasks": "mnist,mnist"}, ["tasks", "mnist", "more than once"]),
    ({"tasks": ""}, ["tasks", "empty"]),
    ({"num-server-round": 3}, ["unknown run-config key", "num-server-round", "num-server-rounds"]),
    ({"min-task-fraction": 0.0}, ["min-task-fraction", "(0, 1]"]),
    ({"save-model": "maybe"}, ["save-model", "true or false"]),
])
def test_bad_values_are_refused_with_key_value_and_fix(raw, words):
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    for w in words:
        assert w in str(err.value)


def test_integers_coerce_to_float_keys_and_back():
    cfg = parse_run_config({"lr": 1, "num-server-rounds": 3.0})
    assert isinstance(cfg.lr, float) and cfg.num_server_rounds == 3 and isinstance(cfg.num_server_rounds, int)


# --- every number finite and in its documented range (issue #12, item 5) -------------------
NUMERIC = [k for k in KEYS if k.type in (int, float)]


@pytest.mark.parametrize("raw, words", [
    ({"alpha": float("inf")}, ["'alpha'", "inf", "not a finite number", "(0, 100]"]),
    ({"alpha": float("nan")}, ["'alpha'", "nan", "not a finite number"]),
    ({"alpha": 1e30}, ["'alpha'", "1e+30", "out of range", "(0, 100]", f"alpha={ALPHA_DEFAULT}"]),
    ({"alpha": -1.0}, ["'alpha'", "-1.0", "(0, 100]"]),
    ({"lr": float("inf")}, ["'lr'", "inf", "not a finite number", "(0, 10]"]),
    ({"seed": 2**70}, ["'seed'", "64-bit"]),
    ({"learning-rate": 0.1}, ["unknown run-config key 'learning-rate'", "did you mean 'lr'"]),
    ({"lerning-rate": 0.1}, ["'lerning-rate'", "did you mean 'lr'"]),
    ({"num_server_rounds": 2}, ["'num_server_rounds'", "did you mean 'num-server-rounds'"]),
    ({"merge-metod": "ties"}, ["'merge-metod'", "did you mean 'merge-method'"]),
    ({"run-name": "../x"}, ["'run-name'", "'../x'", "one directory name", "output-dir"]),
    ({"run-name": "/tmp/x"}, ["'run-name'", "'/tmp/x'"]),
    ({"run-name": "a/b"}, ["'run-name'", "'a/b'"]),
    ({"run-name": ".."}, ["'run-name'", "'..'"]),
    ({"max-norm-ratio": 0.5}, ["'max-norm-ratio'", "0 (off) or a number in [1"]),
])
def test_non_finite_out_of_range_and_unknown_are_refused(raw, words):
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    for w in words:
        assert w in str(err.value)


def test_a_plain_run_name_is_accepted():
    assert parse_run_config({"run-name": "exp-1.a"}).run_name == "exp-1.a"


@pytest.mark.parametrize("key", NUMERIC, ids=lambda k: k.name)
def test_every_numeric_key_has_a_finite_documented_range(key):
    assert key.check is not None and key.expect, f"{key.name}: give it a range (check= and expect=, or _within)"
    assert key.check(key.default), f"{key.name}: its default is outside its own range"
    huge = 2**62 if key.type is int else 1e300
    for bad in ([huge, float("inf"), float("nan")] if key.type is float else [huge, 2**64]):
        with pytest.raises(ConfigError, match=key.name):
            parse_run_config({key.name: bad})


# --- --run-config values read exactly as Flower reads them -------------------------------
@pytest.mark.parametrize("items, words", [
    (["lr=0.1,alpha=2"], ["'lr'", "spaces, not commas"]),
    (["run-name=foo"], ["'run-name'", "run-name='foo'"]),
    (["alpha=.5"], ["'alpha'", "alpha=0.5"]),
    (["alpha 2"], ["'alpha 2'", "not a key=value pair"]),
    (["alpha=1 alpha=2"], ["'alpha'", "twice"]),
    (["tasks=[1,2]"], ["tasks"]),
    (["missing.toml"], ["missing.toml", "does not exist"]),
    (["a.toml", "alpha=1"], ["a.toml", "only as the one --run-config"]),
])
def test_bad_run_config_text_is_refused_with_the_fix(items, words):
    from atm_fl.config import read_run_config_args

    with pytest.raises(ConfigError) as err:
        read_run_config_args(items)
    for w in words:
        assert w in str(err.value)


def test_toml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    from atm_fl.config import read_run_config_args

    bad = tmp_path / "bad.toml"
    bad.write_text("alpha = 1.0\nlr = = 0.1\n")
    with pytest.raises(ConfigError) as err:
        read_run_config_args([str(bad)])
    msg = str(err.value)
    assert str(bad) in msg and "line 2, column 6" in msg and "\n" not in msg


def test_our_view_of_the_run_config_is_flowers():
    """Repeated --run-config and TOML values give the same fused config as Flower's own code."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    from atm_fl.config import app_run_config

    items = ["alpha=0.5 merge-method='ties' tasks=\"mnist,optdigits\"", "alpha=2 seed=3 save-model=false"]
    flower = get_fused_config_from_dir(ROOT, parse_config_args(items))
    cfg = app_run_config(ROOT, items)
    assert cfg.to_dict() == parse_run_config(flower).to_dict()
    assert cfg.alpha == 2.0 and cfg.seed == 3 and cfg.save_model is False and cfg.task_list == ["mnist", "optdigits"]


def test_a_typo_in_a_toml_file_names_the_file_and_the_closest_key(tmp_path):
    from atm_fl.config import app_run_config

    f = tmp_path / "preset.toml"
    f.write_text("alpha = 1.0\nlearnig-rate = 0.1\n")
    with pytest.raises(ConfigError) as err:
        app_run_config(ROOT, [str(f)])
    assert str(f) in str(err.value) and "'learnig-rate'" in str(err.value) and "did you mean 'lr'" in str(err.value)


def test_a_key_missing_from_the_apps_pyproject_is_named(tmp_path):
    """Flower refuses an override that the app's pyproject lacks; say which and how to fix it."""
    from atm_fl.config import app_run_config

    (tmp_path / "pyproject.toml").write_text("[tool.flwr.app.config]\nalpha = 1.0\n")
    with pytest.raises(ConfigError, match="'lr' is missing from .*pyproject.toml.*--toml"):
        app_run_config(tmp_path, ["lr=0.1"])


def test_plugin_cross_parameter_checks_run_with_the_config():
    from atm_fl.config import app_run_config

    with pytest.raises(ConfigError, match="breadcrumbs.*lower.*upper"):
        app_run_config(ROOT, ["merge-method='breadcrumbs' merge-params='lower=0.9,upper=0.5'"])
    with pytest.raises(ConfigError, match="merge-method.*'meen'.*did you mean 'mean'"):
        app_run_config(ROOT, ["merge-method='meen'"])


def test_a_plugin_missing_here_is_only_warned_about_for_a_remote_federation(caplog):
    from atm_fl.config import check_plugins

    cfg = parse_run_config({"merge-method": "only-on-the-server"})
    with pytest.raises(ConfigError):
        check_plugins(cfg)
    check_plugins(cfg, missing_ok=True)
    assert "only-on-the-server" in caplog.text and "not installed here" in caplog.text
    with pytest.raises(ConfigError, match="lower"):  # an installed plugin is still checked
        check_plugins(parse_run_config({"merge-method": "breadcrumbs", "merge-params": "lower=0.9,upper=0.5"}),
                      missing_ok=True)


def test_our_copy_of_flowers_pair_pattern_is_flowers():
    """The inline pairs we diagnose are the ones Flower parses (its pattern is a local of parse_config_args)."""
    import inspect

    from flwr.common.config import parse_config_args

    from atm_fl.config import _PAIR

    assert _PAIR.pattern in inspect.getsource(parse_config_args)
