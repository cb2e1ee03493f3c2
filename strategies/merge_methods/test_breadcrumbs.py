"""``breadcrumbs``: the per-row magnitude band, and the cross-parameter check that runs before training."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout


def test_band_keeps_the_middle_of_each_row():
    layout = Layout((("w", (1, 10)),))
    v = torch.arange(1.0, 11.0)  # magnitudes 1..10
    method, params = resolve_merge("breadcrumbs", "lower=0.2,upper=0.9")
    m = method([v], MergeContext(layout, ("a",), 1, 0), **params)
    # drops the 2 smallest (rank < 0.2 * 10) and the largest (rank >= 0.9 * 10)
    kept = (m != 0).nonzero().flatten().tolist()
    assert kept == list(range(2, 9)) and torch.equal(m[kept], v[kept])


@pytest.mark.parametrize("text", ["lower=0.9,upper=0.9", "lower=0.95,upper=0.5"])
def test_lower_not_below_upper_is_refused_before_training(text):
    with pytest.raises(ConfigError, match="lower.*below upper"):
        resolve_merge("breadcrumbs", text)
