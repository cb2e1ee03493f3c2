"""``iso-c`` through the registry: a flat spectrum on a hand-checked case; conv kernels."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout


def test_summed_spectrum_is_made_flat():
    method, params = resolve_merge("iso-c")
    assert params == {"conv": "matrix"}
    ctx = MergeContext(Layout((("w", (2, 2)), ("b", (2,)))), ("a", "b"), 1, 0)
    a = torch.tensor([3.0, 0.0, 0.0, 0.0, 1.0, -1.0])
    b = torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0, 1.0])
    # sum of the weights = diag(3, 1) -> 2 I; the bias gets the mean (2, 0)
    assert torch.allclose(method([a, b], ctx, **params), torch.tensor([2.0, 0.0, 0.0, 2.0, 2.0, 0.0]), atol=1e-6)


def test_conv_mean_leaves_conv_kernels_to_the_mean():
    ctx = MergeContext(Layout((("conv.weight", (2, 1, 1, 2)),)), ("a", "b"), 1, 0)
    a, b = torch.tensor([3.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    method, matrix = resolve_merge("iso-c")
    _, mean = resolve_merge("iso-c", "conv=mean")
    assert torch.allclose(method([a, b], ctx, **matrix), torch.tensor([2.0, 0.0, 0.0, 2.0]), atol=1e-6)
    assert torch.equal(method([a, b], ctx, **mean), torch.tensor([1.5, 0.0, 0.0, 0.5]))


def test_unknown_parameter_is_refused():
    with pytest.raises(ConfigError, match="conv"):
        resolve_merge("iso-c", "common=0.8")
