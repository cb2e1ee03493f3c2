"""``sum``: task arithmetic's plain sum (T = 1 returns the vector itself)."""

import torch

from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout


def test_sum_of_one_vector_is_that_vector():
    layout = Layout((("w", (3,)),))
    v = torch.tensor([0.5, -1.0, 2.0])
    assert torch.equal(resolve_merge("sum")[0]([v], MergeContext(layout, ("a",), 1, 0)), v)


def test_sum_takes_no_parameters():
    import pytest

    from atm_fl.config import ConfigError

    with pytest.raises(ConfigError, match="none"):
        resolve_merge("sum", "density=0.2")
