"""Merge operators pinned on small hand-checked inputs (semantics: docs/merging.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atm_fl.merge import (
    dare_drop,
    merge_breadcrumbs,
    merge_dare,
    merge_mean,
    merge_sum,
    merge_ties,
    ties_threshold,
    ties_trim,
    ties_trim_mask,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, dtype and shape (-0.0 counts as 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# --------------------------------------------------------------------------- mean / sum

def test_mean_and_sum_hand_checked():
    vs = [t(1, 2, 3), t(3, -2, 0)]
    assert same(merge_mean(vs), t(2, 0, 1.5))
    assert same(merge_sum(vs), t(4, 0, 3))


def test_mean_equals_sum_over_T():
    g = torch.Generator().manual_seed(0)
    vs = [torch.randn(101, generator=g) for _ in range(4)]
    assert torch.allclose(merge_mean(vs), merge_sum(vs) / 4)


def test_one_task_is_identity_for_mean_and_sum():
    v = t(1.5, -2, 0, 7)
    for out in (merge_mean([v]), merge_sum([v])):
        assert same(out, v)
        assert out.data_ptr() != v.data_ptr()          # a new tensor, not the input


# --------------------------------------------------------------------------- TIES

def test_ties_trim_threshold_and_kept_ties():
    v = t(1, -1, 1, 0.5)
    # density 0.25: k = int(4 * 0.25) = 1; the 1st largest magnitude is 1; all three
    # entries tied with it are kept.
    assert ties_threshold(v, 0.25) == 1.0
    assert same(ties_trim_mask(v, 0.25), torch.tensor([True, True, True, False]))
    assert same(ties_trim(v, 0.25), t(1, -1, 1, 0))
    # density 0.6: k = int(2.4) = 2 -> threshold is still 1.
    assert same(ties_trim(t(3, -1, 2, 0.5, -4), 0.6), t(3, 0, 2, 0, -4))


def test_ties_trim_k_zero_keeps_nothing():
    v = t(1, 2, 3, 4)
    assert ties_threshold(v, 0.1) == math.inf          # k = int(0.4) = 0
    assert not ties_trim_mask(v, 0.1).any()
    assert same(ties_trim(v, 0.1), torch.zeros(4))
    assert same(merge_ties([v, -v], 0.1), torch.zeros(4))


def test_ties_hand_checked():
    # density 0.6, d = 5 -> k = 3 per task.
    v0 = t(3, -1, 2, 0.5, -4)      # keeps 3, 2, -4
    v1 = t(-3, 1, 1, 2, 5)         # keeps -3, 2, 5
    # trimmed sum = [0, 0, 2, 2, 1] -> gamma = [0, 0, +, +, +]; sum(gamma) = 3 > 0, so
    # the zeros take the majority sign +. Disjoint means: coord 0 keeps only +3; coord 1
    # has no entries; coord 4 keeps only +5.
    assert same(merge_ties([v0, v1], density=0.6), t(3, 0, 2, 2, 5))


def test_ties_disjoint_mean_averages_agreeing_entries_only():
    vs = [t(2, -1), t(4, 3), t(-9, 5)]
    # density 1: nothing trimmed. Sum = [-3, 7] -> gamma = [-, +].
    # coord 0: only -9 agrees -> -9; coord 1: 3 and 5 agree -> 4.
    assert same(merge_ties(vs, density=1.0), t(-9, 4))


def test_ties_sign_tie_takes_negative_global_majority():
    vs = [t(1, -2, -3), t(-1, 0, 0)]
    # Sum = [0, -2, -3]: gamma = [0, -, -], majority -, so coord 0 elects - and keeps -1.
    assert same(merge_ties(vs, density=1.0), t(-1, -2, -3))


def test_ties_sign_tie_with_zero_majority_stays_zero():
    vs = [t(1, 2, -3), t(-1, 0, 0)]
    # Sum = [0, 2, -3]: gamma = [0, +, -], sum(gamma) = 0 -> coord 0 stays 0.
    assert same(merge_ties(vs, density=1.0), t(0, 2, -3))
    # Everything cancels: no majority at all.
    assert same(merge_ties([t(1, -1, 2), t(-1, 1, -2)], density=1.0), torch.zeros(3))


def test_ties_one_task_is_its_trim():
    v = t(0.1, -5, 3, 0.2, -0.3, 4, 0, 1, -2, 0.05)
    for density in (0.2, 0.5, 1.0):
        assert same(merge_ties([v], density), ties_trim(v, density))


def test_ties_density_one_keeps_everything():
    v = t(0.1, -5, 3, 0)
    assert ties_threshold(v, 1.0) == 0.0
    assert same(ties_trim(v, 1.0), v)
    assert same(merge_ties([v, v], 1.0), v)


def test_ties_zeros_never_vote_or_agree():
    # The zero of task 1 at coord 0 does not count in the disjoint mean.
    assert same(merge_ties([t(4, 1), t(0, 1)], density=1.0), t(4, 1))


# --------------------------------------------------------------------------- Breadcrumbs

ROW = [0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -1.0]
# lower 0.2, upper 0.9 on n = 10: i_lo = 2, i_hi = 9 -> keep sorted ranks 2..8, i.e. drop
# the two smallest magnitudes (0.1, 0.2) and the largest (1.0).
ROW_KEPT = [0, 0, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, 0]


def test_breadcrumbs_band_per_row_hand_checked():
    row2 = [10 * x for x in reversed(ROW)]
    v = t(*ROW, *row2)
    out = merge_breadcrumbs([v], [("w", (2, 10))], lower=0.2, upper=0.9)
    assert same(out, t(*ROW_KEPT, *[10 * x for x in reversed(ROW_KEPT)]))
    # Per row, not per tensor: a single band over all 20 entries would drop row 1 whole.
    whole = merge_breadcrumbs([v], [("w", (20,))], lower=0.2, upper=0.9)
    assert not torch.equal(out, whole)


def test_breadcrumbs_rows_along_last_dim_of_3d_tensor():
    rows = [[s * x for x in ROW] for s in (1, 2, 3, 4, 5, 6)]
    v = t(*[x for r in rows for x in r])
    out = merge_breadcrumbs([v], [("w", (2, 3, 10))], lower=0.2, upper=0.9)
    assert same(out, t(*[s * x for s in (1, 2, 3, 4, 5, 6) for x in ROW_KEPT]))


def test_breadcrumbs_1d_tensor_is_one_row_and_0d_is_kept_whole():
    layout = [("scale", ()), ("bias", (10,)), ("w", (1, 10))]
    v0 = t(7, *ROW, *ROW)
    v1 = t(-3, *ROW, *ROW)
    out = merge_breadcrumbs([v0, v1], layout, lower=0.2, upper=0.9)
    assert same(out, t(2, *ROW_KEPT, *ROW_KEPT))     # 0-dim: mean of 7 and -3


def test_breadcrumbs_defaults_on_768_wide_row():
    # Magnitudes 1..768 in a shuffled order with alternating signs. Defaults 0.85/0.993:
    # i_lo = 652, i_hi = 762 -> keep magnitudes 653..762 (110 entries, about 14%); the
    # 652 smallest and the 6 largest are dropped.
    g = torch.Generator().manual_seed(0)
    mags = (torch.randperm(768, generator=g) + 1).float()
    x = mags * torch.where(torch.arange(768) % 2 == 0, 1.0, -1.0)
    out = merge_breadcrumbs([x], [("ln.weight", (768,))])
    keep = (mags >= 653) & (mags <= 762)
    assert int(keep.sum()) == 110
    assert same(out, torch.where(keep, x, 0.0))


def test_breadcrumbs_mean_of_masked_tasks():
    v0 = t(*ROW)
    v1 = t(*[-x for x in ROW])
    v2 = t(*[2 * x for x in ROW])
    out = merge_breadcrumbs([v0, v1, v2], [("b", (10,))], lower=0.2, upper=0.9)
    assert torch.allclose(out, t(*ROW_KEPT) * (2 / 3))


def test_breadcrumbs_edge_ties_are_kept():
    v = t(1, -1, 1, 1, -1, 2, 2, -2, 2, 2)
    # sorted magnitudes: s[2] = 1, s[8] = 2 -> every entry lies in [1, 2] and is kept.
    assert same(merge_breadcrumbs([v], [("b", (10,))], lower=0.2, upper=0.9), v)


def test_breadcrumbs_short_rows_keep_nothing_with_defaults():
    # n <= 6: int(0.993 n) == int(0.85 n), an empty band; n = 7 keeps one entry (rank 5).
    for n in range(1, 7):
        v = torch.arange(1, n + 1, dtype=torch.float32)
        assert same(merge_breadcrumbs([v], [("b", (n,))]), torch.zeros(n))
    v = torch.arange(1, 8, dtype=torch.float32)
    assert same(merge_breadcrumbs([v], [("b", (7,))]), t(0, 0, 0, 0, 0, 6, 0))


def test_breadcrumbs_full_band_and_empty_tensors():
    v = t(3, -1, 2, 0)
    layout = [("empty", (0, 5)), ("b", (4,)), ("none", (0,))]
    assert same(merge_breadcrumbs([v], layout, lower=0.0, upper=1.0), v)


def test_breadcrumbs_all_zeros():
    z = torch.zeros(20)
    assert same(merge_breadcrumbs([z, z], [("w", (2, 10))]), z)


# --------------------------------------------------------------------------- DARE

def test_dare_drop_mask_and_rescale():
    v = torch.ones(1000)
    for p in (0.25, 0.5, 0.9):
        out = dare_drop(v, p, seed=3)
        u = torch.from_numpy(np.random.Generator(np.random.PCG64(3)).random(1000, dtype=np.float32))
        scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
        assert same(out, torch.where(u >= p, scale, torch.tensor(0.0)))
        assert abs(float((out != 0).float().mean()) - (1 - p)) < 0.05
    assert set(dare_drop(v, 0.5, 1).unique().tolist()) == {0.0, 2.0}
    assert set(dare_drop(v, 0.9, 1).unique().tolist()) == {0.0, 10.0}


def test_dare_seeded_determinism():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5000, generator=g)
    assert same(dare_drop(v, 0.9, 7), dare_drop(v, 0.9, 7))
    assert not torch.equal(dare_drop(v, 0.9, 7), dare_drop(v, 0.9, 8))
    vs = [v, v.flip(0), -v]
    a = merge_dare(vs, p=0.9, seeds=[1, 2, 3])
    assert same(a, merge_dare(vs, p=0.9, seeds=[1, 2, 3]))
    assert not torch.equal(a, merge_dare(vs, p=0.9, seeds=[1, 2, 4]))
    # Each task uses its own seed; the default seeds are 0..T-1.
    assert same(a, merge_mean([dare_drop(x, 0.9, s) for x, s in zip(vs, [1, 2, 3])]))
    assert same(merge_dare(vs), merge_dare(vs, seeds=[0, 1, 2]))


def test_dare_p_zero_and_p_one():
    vs = [t(1, -2, 3), t(5, 0, -1)]
    assert same(dare_drop(vs[0], 0.0, 1), vs[0])
    assert same(merge_dare(vs, p=0.0), merge_mean(vs))
    assert same(merge_dare(vs, p=0.0, then="ties", density=1.0), merge_ties(vs, 1.0))
    assert same(dare_drop(vs[0], 1.0, 1), torch.zeros(3))
    assert same(merge_dare(vs, p=1.0), torch.zeros(3))
    assert same(merge_dare(vs, p=1.0, then="ties"), torch.zeros(3))


def test_dare_then_ties_is_ties_of_dropped():
    g = torch.Generator().manual_seed(1)
    vs = [torch.randn(777, generator=g) for _ in range(3)]
    seeds = [11, 12, 13]
    dropped = [dare_drop(v, 0.5, s) for v, s in zip(vs, seeds)]
    out = merge_dare(vs, p=0.5, then="ties", density=0.3, seeds=seeds)
    assert same(out, merge_ties(dropped, density=0.3))


def test_dare_one_task_and_zeros():
    v = t(1, 2, 3, 4)
    assert same(merge_dare([v], p=0.5, seeds=[5]), dare_drop(v, 0.5, 5))
    z = torch.zeros(10)
    assert same(merge_dare([z, z], p=0.5), z)
    assert same(merge_dare([z, z], p=0.5, then="ties"), z)


# --------------------------------------------------------------------------- all methods

LAYOUT = [("s", ()), ("w", (3, 7)), ("b", (7,)), ("e", (0,))]
D = 1 + 21 + 7

METHODS = {
    "mean": lambda vs: merge_mean(vs),
    "sum": lambda vs: merge_sum(vs),
    "ties": lambda vs: merge_ties(vs),
    "ties_d1": lambda vs: merge_ties(vs, density=1.0),
    "breadcrumbs": lambda vs: merge_breadcrumbs(vs, LAYOUT, lower=0.2, upper=0.9),
    "dare": lambda vs: merge_dare(vs, p=0.5),
    "dare_ties": lambda vs: merge_dare(vs, p=0.5, then="ties", density=0.5),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inputs_unchanged_and_output_fresh(method):
    g = torch.Generator().manual_seed(2)
    vs = [torch.randn(D, generator=g) for _ in range(3)]
    before = [v.clone() for v in vs]
    out = METHODS[method](vs)
    assert out.dtype == torch.float32 and out.shape == (D,)
    assert all(out.data_ptr() != v.data_ptr() for v in vs)
    for v, b in zip(vs, before):
        assert torch.equal(v, b)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_all_zeros_give_zeros(method):
    z = [torch.zeros(D) for _ in range(3)]
    assert same(METHODS[method](z), torch.zeros(D))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_contiguous_input(method):
    g = torch.Generator().manual_seed(4)
    big = [torch.randn(2 * D, generator=g) for _ in range(2)]
    assert same(METHODS[method]([b[::2] for b in big]), METHODS[method]([b[::2].clone() for b in big]))


# --------------------------------------------------------------------------- errors

GOOD = [t(1, 2, 3), t(4, 5, 6)]


@pytest.mark.parametrize("fn", [merge_mean, merge_sum, merge_ties, merge_dare,
                                lambda vs: merge_breadcrumbs(vs, [("w", (3,))])])
def test_empty_and_mismatched_vectors(fn):
    with pytest.raises(ValueError, match=r"at least one task vector \(T >= 1\)"):
        fn([])
    with pytest.raises(ValueError, match=r"vectors\[1\]: length 2 differs from vectors\[0\] length 3"):
        fn([t(1, 2, 3), t(1, 2)])
    with pytest.raises(ValueError, match="1-D float32"):
        fn([torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="1-D float32"):
        fn([torch.zeros(1, 3)])


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), "0.2", True])
def test_bad_density(density):
    msg = r"density=.* out of range; valid: 0 < density <= 1"
    for call in (lambda: merge_ties(GOOD, density), lambda: ties_trim(GOOD[0], density),
                 lambda: ties_threshold(GOOD[0], density), lambda: ties_trim_mask(GOOD[0], density),
                 lambda: merge_dare(GOOD, p=0.5, then="ties", density=density)):
        with pytest.raises(ValueError, match=msg):
            call()


@pytest.mark.parametrize("p", [-0.01, 1.01, float("nan"), None])
def test_bad_p(p):
    with pytest.raises(ValueError, match=r"p=.* out of range; valid: 0 <= p <= 1"):
        merge_dare(GOOD, p=p)
    with pytest.raises(ValueError, match=r"p=.* out of range; valid: 0 <= p <= 1"):
        dare_drop(GOOD[0], p, 0)


def test_bad_dare_then_and_seeds():
    with pytest.raises(ValueError, match="then='median' is not supported; valid: mean, ties"):
        merge_dare(GOOD, then="median")
    with pytest.raises(ValueError, match=r"seeds: need one seed per task \(T=2\), got 1"):
        merge_dare(GOOD, seeds=[1])


@pytest.mark.parametrize("lower,upper", [(0.9, 0.9), (0.95, 0.9), (-0.1, 0.5), (0.1, 1.1)])
def test_bad_breadcrumbs_band(lower, upper):
    with pytest.raises(ValueError, match=r"valid: 0 <= lower < upper <= 1"):
        merge_breadcrumbs(GOOD, [("w", (3,))], lower=lower, upper=upper)


def test_bad_breadcrumbs_layout():
    with pytest.raises(ValueError, match="layout: shapes cover 4 entries but the vectors have d=3"):
        merge_breadcrumbs(GOOD, [("w", (2, 2))])
    with pytest.raises(ValueError, match="layout: expected"):
        merge_breadcrumbs(GOOD, [("w",)])
