"""``dare``: seeded drop and rescale; p must stay below 1 (p = 1 would leave the model unchanged)."""

import numpy as np
import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

LAYOUT = Layout((("w", (1000,)),))


def test_survivors_are_rescaled_and_masks_repeat_per_round_and_task():
    v = torch.ones(1000)
    method, params = resolve_merge("dare", "p=0.75")
    ctx = MergeContext(LAYOUT, ("a",), 1, 0)
    m = method([v], ctx, **params)
    kept = m != 0
    assert torch.equal(m[kept], torch.full((int(kept.sum()),), 4.0))
    assert 150 < int(kept.sum()) < 350
    assert torch.equal(m, method([v], ctx, **params))
    assert not torch.equal(m, method([v], MergeContext(LAYOUT, ("a",), 2, 0), **params))


@pytest.mark.parametrize("p", ["1", "1.0", "0.99999999", "1.5", "-0.1"])
def test_p_at_or_above_one_is_refused(p):
    if p == "0.99999999":
        assert float(np.float32(float(p))) == 1.0  # below 1 as a float64, 1 in float32
    with pytest.raises(ConfigError, match="float32"):
        resolve_merge("dare", f"p={p}")


def test_then_must_be_mean_or_ties():
    with pytest.raises(ConfigError, match="mean, ties"):
        resolve_merge("dare", "then=median")
    method, params = resolve_merge("dare", "p=0.5, then=ties")
    assert params == {"p": 0.5, "then": "ties", "density": 0.2}
