"""``tsv-m`` through the registry: defaults, a hand-checked merge, refused parameters."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

# A 3 x 3 weight, its bias, and a LayerNorm weight.
LAYOUT = Layout((("fc.weight", (3, 3)), ("fc.bias", (3,)), ("ln.weight", (3,))))
CTX = MergeContext(LAYOUT, ("a", "b", "c"), 1, 0)


def task(diag, bias):
    return torch.cat([torch.diag(torch.tensor(diag)).reshape(-1), torch.tensor(bias), torch.tensor(bias)])


def test_defaults_and_a_hand_checked_merge():
    method, params = resolve_merge("tsv-m")
    assert params == {"share": 0.0, "conv": "matrix"}
    # Each task is rank 1 along its own axis (k = 3, r = 1 per task): orthogonal blocks,
    # so the weight is the sum diag(3, 2, 1); the bias and LayerNorm get the mean.
    vs = [task([3.0, 0, 0], [3.0, 0, 0]), task([0, 2.0, 0], [0, 3.0, 0]), task([0, 0, 1.0], [0, 0, 3.0])]
    got = method(vs, CTX, **params)
    assert torch.allclose(got, task([3.0, 2.0, 1.0], [1.0, 1.0, 1.0]), atol=1e-6)


def test_identical_tasks_give_the_task_not_the_sum():
    method, params = resolve_merge("tsv-m")
    v = task([3.0, 0, 0], [1.0, 2.0, 3.0])
    assert torch.allclose(method([v, v, v], CTX, **params), v, atol=1e-6)


@pytest.mark.parametrize("text, word", [("share=1.5", r"\[0, 1\]"), ("share=-0.1", r"\[0, 1\]"),
                                        ("conv=flatten", "matrix, mean"), ("rank=0.1", "share")])
def test_bad_parameters_are_refused(text, word):
    with pytest.raises(ConfigError, match=word):
        resolve_merge("tsv-m", text)
