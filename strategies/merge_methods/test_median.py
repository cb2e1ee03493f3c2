"""``median``: by hand, and a sign-flipped or scaled site moves it far less than it moves ``mean``."""

import torch

from atm_fl.plugins import MergeContext, resolve_merge
from atm_fl.task_vector import Layout


def test_median_by_hand_odd_and_even():
    layout = Layout((("w", (3,)),))
    a, b, c, d = (torch.tensor(x) for x in ([1.0, 5.0, -2.0], [2.0, -1.0, 0.0], [9.0, 0.0, 1.0], [3.0, 2.0, 4.0]))
    method, _ = resolve_merge("median")
    assert torch.equal(method([a, b, c], MergeContext(layout, tuple("abc"), 1, 0)), torch.tensor([2.0, 0.0, 0.0]))
    assert torch.equal(method([a, b, c, d], MergeContext(layout, tuple("abcd"), 1, 0)),
                       torch.tensor([2.5, 1.0, 0.5]))


def honest_and_attacker(attack):
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(5000, generator=gen)
    honest = [direction + 0.3 * torch.randn(5000, generator=gen) for _ in range(4)]
    return honest, attack(honest)


def shift(name, vectors):
    layout = Layout((("w", (5000,)),))
    method, params = resolve_merge(name)
    return method(vectors, MergeContext(layout, tuple(f"t{i}" for i in range(len(vectors))), 1, 0), **params)


def test_a_sign_flipped_or_scaled_site_moves_median_far_less_than_mean():
    for attack in (lambda h: -10 * h[0], lambda h: 100 * h[0], lambda h: -h[0]):
        honest, bad = honest_and_attacker(attack)
        clean_mean, clean_median = shift("mean", honest), shift("median", honest)
        moved_mean = (shift("mean", honest + [bad]) - clean_mean).norm() / clean_mean.norm()
        moved_median = (shift("median", honest + [bad]) - clean_median).norm() / clean_median.norm()
        assert moved_median < 0.5 * moved_mean and moved_median < 0.35, (moved_median, moved_mean)
