"""Run-config: defaults in pyproject match the key table, docs are current, bad values are refused."""

import tomllib
from pathlib import Path

import pytest

from atm_fl.config import KEYS, ConfigError, markdown_table, parse_run_config

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
    assert cfg.num_server_rounds == 4 and cfg.image_size == 64 and cfg.task_list == ["mnist", "optdigits", "ising", "cahn-hilliard"]


@pytest.mark.parametrize("raw, words", [
    ({"num-server-rounds": 0}, ["num-server-rounds", "0", ">= 1"]),
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
