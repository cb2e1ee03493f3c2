"""``trimmed-mean``: by hand; beta = 0 is the mean; one attacking site among five barely moves it."""

import pytest
import torch

from atm_fl.config import ConfigError
from atm_fl.merge.robust import trim_count
from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout


def merge(text, vectors):
    layout = Layout((("w", (vectors[0].numel(),)),))
    method, params = resolve_merge("trimmed-mean", text)
    return method(vectors, MergeContext(layout, tuple(f"t{i}" for i in range(len(vectors))), 1, 0), **params)


def test_trimmed_mean_by_hand():
    vs = [torch.tensor([x, -x]) for x in (1.0, 2.0, 3.0, 4.0, 100.0)]
    # beta 0.2, T 5: drop 1 at each end -> mean of 2, 3, 4
    assert torch.equal(merge("beta=0.2", vs), torch.tensor([3.0, -3.0]))
    torch.testing.assert_close(merge("beta=0", vs), torch.stack(vs).mean(0))


def test_trim_keeps_at_least_one_value():
    assert [trim_count(T, 0.45) for T in (1, 2, 3, 4, 5)] == [0, 0, 1, 1, 2]


def test_one_attacker_among_five_moves_it_far_less_than_mean():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4000, generator=gen)
    honest = [base + 0.3 * torch.randn(4000, generator=gen) for _ in range(4)]
    for bad in (-10 * honest[0], 100 * honest[1]):
        clean_mean, clean_tm = torch.stack(honest).mean(0), merge("beta=0.2", honest)
        moved_mean = (torch.stack(honest + [bad]).mean(0) - clean_mean).norm() / clean_mean.norm()
        moved_tm = (merge("beta=0.2", honest + [bad]) - clean_tm).norm() / clean_tm.norm()
        assert moved_tm < 0.5 * moved_mean and moved_tm < 0.3, (moved_tm, moved_mean)


def test_beta_half_or_more_is_refused():
    with pytest.raises(ConfigError, match=r"\[0, 0.5\)"):
        resolve_merge("trimmed-mean", "beta=0.5")
