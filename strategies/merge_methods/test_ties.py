"""``ties``: trim, elect, disjoint mean, on a hand-checked case."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

LAYOUT = Layout((("w", (4,)),))
CTX = MergeContext(LAYOUT, ("a", "b", "c"), 1, 0)


def test_ties_by_hand():
    # density 0.5 keeps the 2 largest magnitudes of each task.
    a = torch.tensor([4.0, -3.0, 0.1, 0.2])
    b = torch.tensor([-1.0, -2.0, 5.0, 0.1])
    c = torch.tensor([2.0, 0.1, -0.3, 6.0])
    # trimmed: a = [4, -3, 0, 0]; b = [0, -2, 5, 0]; c = [2, 0, 0, 6]
    # elected signs: [+, -, +, +]; disjoint means: [3, -2.5, 5, 6]
    method, params = resolve_merge("ties", "density=0.5")
    assert params == {"density": 0.5}
    assert torch.equal(method([a, b, c], CTX, **params), torch.tensor([3.0, -2.5, 5.0, 6.0]))


@pytest.mark.parametrize("text, word", [("density=0", r"\(0, 1\]"), ("density=abc", "float"), ("k=0.1", "density"),
                                        ("density", "name=value"), ("density=nan", "finite"),
                                        ("density=0.2,density=0.3", "twice")])
def test_bad_parameters_are_refused(text, word):
    with pytest.raises(ConfigError, match=word):
        resolve_merge("ties", text)
