"""Merge plugins: looked up by name, parameters declared, bad choices refused with the valid ones."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.task_vector import Layout
from strategies import registry
from strategies.registry import MergeContext


def test_builtin_methods_present():
    assert set(registry.method_names()) >= {"mean", "sum", "ties", "breadcrumbs", "dare"}


def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError) as err:
        registry.resolve("avg", "")
    msg = str(err.value)
    assert "merge-method" in msg and "'avg'" in msg
    for name in ("mean", "ties", "breadcrumbs", "dare"):
        assert name in msg


def test_unknown_parameter_lists_the_methods_parameters():
    with pytest.raises(ConfigError) as err:
        registry.resolve("ties", "k=0.1")
    assert "'k'" in str(err.value) and "density (default 0.2)" in str(err.value)


@pytest.mark.parametrize("method, text, word", [
    ("ties", "density=0", "(0, 1]"),
    ("ties", "density=abc", "float"),
    ("dare", "then=median", "mean, ties"),
    ("dare", "p=1.5", "[0, 1]"),
    ("mean", "density=0.2", "none"),
    ("ties", "density", "name=value"),
])
def test_bad_parameters_refused(method, text, word):
    with pytest.raises(ConfigError) as err:
        registry.resolve(method, text)
    assert word in str(err.value)


def test_params_parse_with_defaults():
    method, params = registry.resolve("dare", "p=0.5, then=ties")
    assert params == {"p": 0.5, "then": "ties", "density": 0.2}
    assert registry.resolve("breadcrumbs", "")[1] == {"lower": 0.85, "upper": 0.993}


@pytest.mark.parametrize("name", ["mean", "sum", "ties", "breadcrumbs", "dare"])
def test_every_plugin_merges_through_the_registry(name):
    layout = Layout((("w", (4, 5)), ("b", (5,))))
    gen = torch.Generator().manual_seed(0)
    vecs = [torch.randn(layout.numel, generator=gen) for _ in range(3)]
    method, params = registry.resolve(name, "")
    ctx = MergeContext(layout=layout, tasks=("a", "b", "c"), server_round=1, seed=0)
    m = method(vecs, ctx, **params)
    assert m.shape == (25,) and torch.isfinite(m).all()
    if name == "mean":
        torch.testing.assert_close(m, sum(vecs) / 3)
    if name == "sum":
        torch.testing.assert_close(m, sum(vecs))


def test_dare_seeds_depend_on_round_and_task_and_repeat():
    layout = Layout((("w", (10,)),))
    a = MergeContext(layout, ("x", "y"), 1, 0).task_seeds()
    assert a == MergeContext(layout, ("x", "y"), 1, 0).task_seeds()
    assert a != MergeContext(layout, ("x", "y"), 2, 0).task_seeds()
    assert a[0] != a[1]
