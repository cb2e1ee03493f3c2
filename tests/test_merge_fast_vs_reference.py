"""The fast merge operators equal the direct reference formulations exactly.

"Exactly" means ``torch.equal``: same float32 value in every coordinate, where -0.0
and 0.0 count as equal (the fast code may produce -0.0 where the reference has 0.0,
e.g. ``-x * 0``; the value is the same). Ties are part of the definition (entries tied
with a threshold are kept by both), so they are tested too, on vectors with many
repeated magnitudes and many zeros.

The chunk size and the "small vector" cut-off of :mod:`atm_fl.merge.ops` are lowered
so that short vectors cross many chunk boundaries and take the sampled-bracket path of
the TIES threshold search; one test runs with the module defaults on vectors longer
than one chunk and than the cut-off.
"""

from __future__ import annotations

import pytest
import torch

from atm_fl.merge import ops
from atm_fl.merge import reference as ref

SIZES = [1, 2, 7, 999, 1000, 1001, 4097, 30_011]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ops, "CHUNK", 1000)
    monkeypatch.setattr(ops, "SMALL", 1500)
    monkeypatch.setattr(ops, "SAMPLE", 512)


def vectors(d: int, T: int, seed: int, kind: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return [torch.randn(d, generator=g) * (t + 1) for t in range(T)]
    if kind == "ties":     # few distinct magnitudes, both signs, many zeros
        return [(torch.randint(-4, 5, (d,), generator=g) / 4).float() for _ in range(T)]
    if kind == "sparse":   # mostly zeros: the k-th magnitude is often 0
        out = []
        for _ in range(T):
            v = torch.randn(d, generator=g)
            v[torch.rand(d, generator=g) < 0.9] = 0.0
            out.append(v)
        return out
    raise ValueError(kind)


def layout_for(d: int, seed: int) -> list[tuple[str, tuple[int, ...]]]:
    """A mixed layout covering d: 0-dim, 2-D and 3-D blocks of random widths, 1-D rest."""
    g = torch.Generator().manual_seed(seed)
    out, used = [], 0
    if d >= 1:
        out.append(("scale", ()))
        used = 1
    i = 0
    while True:
        n = int(torch.randint(1, 900, (1,), generator=g))
        rows = int(torch.randint(1, 6, (1,), generator=g))
        shape = (rows, n) if i % 2 == 0 else (2, rows, n)
        size = rows * n * (1 if i % 2 == 0 else 2)
        if used + size > d:
            break
        out.append((f"w{i}", shape))
        used += size
        i += 1
    if used < d:
        out.append(("rest", (d - used,)))
    return out


def check(fast: torch.Tensor, slow: torch.Tensor) -> None:
    assert fast.dtype == slow.dtype == torch.float32
    assert fast.shape == slow.shape
    bad = (fast != slow).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} differ, first at {bad[:3].tolist()}"


@pytest.mark.parametrize("kind", ["normal", "ties", "sparse"])
@pytest.mark.parametrize("d", SIZES)
def test_fast_equals_reference_small_chunks(small_chunks, d, kind):
    T = 3
    vs = vectors(d, T, seed=d, kind=kind)
    check(ops.merge_mean(vs), ref.merge_mean(vs))
    check(ops.merge_sum(vs), ref.merge_sum(vs))
    for density in (0.01, 0.2, 0.5, 1.0):
        check(ops.merge_ties(vs, density), ref.merge_ties(vs, density))
        assert ops.ties_threshold(vs[0], density) == ref.ties_threshold(vs[0], density)
        check(ops.ties_trim(vs[0], density), ref.ties_trim(vs[0], density))
        assert torch.equal(ops.ties_trim_mask(vs[0], density), ref.ties_trim_mask(vs[0], density))
    layout = layout_for(d, seed=d)
    for lower, upper in ((0.85, 0.993), (0.0, 1.0), (0.2, 0.9), (0.5, 0.51)):
        check(ops.merge_breadcrumbs(vs, layout, lower, upper), ref.merge_breadcrumbs(vs, layout, lower, upper))
    for p in (0.0, 0.3, 0.9, 1.0):
        check(ops.merge_dare(vs, p, "mean", seeds=[5, 6, 7]), ref.merge_dare(vs, p, "mean", seeds=[5, 6, 7]))
        check(ops.merge_dare(vs, p, "ties", 0.3, seeds=[5, 6, 7]),
              ref.merge_dare(vs, p, "ties", 0.3, seeds=[5, 6, 7]))
        check(ops.dare_drop(vs[1], p, 9), ref.dare_drop(vs[1], p, 9))


@pytest.mark.parametrize("T", [1, 2, 7])
def test_fast_equals_reference_task_counts(small_chunks, T):
    vs = vectors(5003, T, seed=T, kind="normal")
    layout = layout_for(5003, seed=T)
    check(ops.merge_mean(vs), ref.merge_mean(vs))
    check(ops.merge_ties(vs, 0.2), ref.merge_ties(vs, 0.2))
    check(ops.merge_breadcrumbs(vs, layout), ref.merge_breadcrumbs(vs, layout))
    seeds = list(range(100, 100 + T))
    check(ops.merge_dare(vs, 0.9, seeds=seeds), ref.merge_dare(vs, 0.9, seeds=seeds))
    check(ops.merge_dare(vs, 0.9, "ties", 0.2, seeds=seeds), ref.merge_dare(vs, 0.9, "ties", 0.2, seeds=seeds))


def test_breadcrumbs_rows_longer_than_a_chunk(small_chunks):
    # Rows of 2,500 entries > CHUNK = 1000: one row per slice, in a fresh buffer.
    vs = vectors(3 * 2500 + 10, 2, seed=3, kind="normal")
    layout = [("w", (3, 2500)), ("b", (10,))]
    check(ops.merge_breadcrumbs(vs, layout), ref.merge_breadcrumbs(vs, layout))


def test_ties_threshold_survives_a_bad_sample(small_chunks, monkeypatch, caplog):
    """The sampled bracket only affects speed: a sample of the largest entries misses
    the k-th magnitude, the search falls back to the whole vector, the result is exact."""
    vs = vectors(20_000, 2, seed=11, kind="normal")
    top = torch.argsort(vs[0].abs(), descending=True)[:512].sort().values.numpy()
    monkeypatch.setattr(ops, "_sample_positions", lambda d, s: top[:s])
    with caplog.at_level("DEBUG", logger="atm_fl.merge.ops"):
        assert ops.ties_threshold(vs[0], 0.2) == ref.ties_threshold(vs[0], 0.2)
    assert "bracket missed" in caplog.text
    check(ops.merge_ties(vs, 0.2), ref.merge_ties(vs, 0.2))


def test_fast_equals_reference_module_defaults():
    """Default CHUNK and SMALL on vectors longer than both."""
    d = ops.SMALL + 12_345
    assert d > ops.CHUNK
    vs = vectors(d, 3, seed=0, kind="normal")
    check(ops.merge_mean(vs), ref.merge_mean(vs))
    check(ops.merge_ties(vs, 0.2), ref.merge_ties(vs, 0.2))
    layout = [("w", (d // 768, 768)), ("rest", (d % 768,))]
    check(ops.merge_breadcrumbs(vs, layout), ref.merge_breadcrumbs(vs, layout))
    check(ops.merge_dare(vs, 0.9, "mean", seeds=[1, 2, 3]), ref.merge_dare(vs, 0.9, "mean", seeds=[1, 2, 3]))
    check(ops.merge_dare(vs, 0.9, "ties", 0.2, seeds=[1, 2, 3]),
          ref.merge_dare(vs, 0.9, "ties", 0.2, seeds=[1, 2, 3]))


@pytest.mark.parametrize("sign", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_ties_sign_ties_across_slices(small_chunks, sign, density):
    """Task 1 cancels task 0 exactly, so most trimmed sums are 0 and the elected sign
    comes from the global majority, set by task 2 to +, - or none (all zeros)."""
    g = torch.Generator().manual_seed(5)
    d = 5003
    v0 = torch.randn(d, generator=g)
    v2 = sign * torch.randn(d, generator=g).abs() * (torch.rand(d, generator=g) < 0.3)
    vs = [v0, -v0, v2]
    out = ops.merge_ties(vs, density)
    check(out, ref.merge_ties(vs, density))
    if sign == 0.0:
        assert not out.any()
    seeds = [1, 2, 3]
    check(ops.merge_dare(vs, 0.5, "ties", density, seeds=seeds), ref.merge_dare(vs, 0.5, "ties", density, seeds=seeds))


def test_empty_vectors():
    z = [torch.zeros(0), torch.zeros(0)]
    for fast, slow in ((ops.merge_mean(z), ref.merge_mean(z)), (ops.merge_ties(z), ref.merge_ties(z)),
                       (ops.merge_breadcrumbs(z, []), ref.merge_breadcrumbs(z, [])),
                       (ops.merge_dare(z, 0.5), ref.merge_dare(z, 0.5)),
                       (ops.merge_dare(z, 0.5, "ties"), ref.merge_dare(z, 0.5, "ties"))):
        check(fast, slow)
