"""``cart`` through the registry: mean plus the low-rank centred tasks, by hand."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout

CTX = MergeContext(Layout((("w", (3, 3)), ("b", (1,)))), ("a", "b", "c"), 1, 0)


def task(d, b):
    return torch.cat([torch.diag(torch.tensor(d)).reshape(-1), torch.tensor([b])])


def test_hand_checked_merge_and_lam_zero_is_the_mean():
    method, params = resolve_merge("cart")
    assert params == {"rank": 0.12, "lam": 2.0, "conv": "matrix"}
    vs = [task([6.0, 0, 0], 3.0), task([0, 6.0, 0], 0.0), task([0, 0, 9.0], 0.0)]
    # mean diag(2, 2, 3); each centred task keeps its top component: diag(4, 4, 6) summed
    assert torch.allclose(method(vs, CTX, **params), task([10.0, 10.0, 15.0], 1.0), atol=1e-5)
    assert torch.allclose(method(vs, CTX, rank=0.12, lam=0.0, conv="matrix"), task([2.0, 2.0, 3.0], 1.0))


@pytest.mark.parametrize("text, word", [("rank=0", r"\(0, 1\]"), ("rank=1.5", r"\(0, 1\]"), ("lam=inf", "finite")])
def test_bad_parameters_are_refused(text, word):
    with pytest.raises(ConfigError, match=word):
        resolve_merge("cart", text)
