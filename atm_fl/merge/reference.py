"""Reference formulations of the merge operators.

Each function here is the plain reading of the definition in docs/merging.md (the
project's merge semantics): whole-vector ``torch.kthvalue`` for the TIES trim, a full
sort of every row for Breadcrumbs, a full-length uniform draw and mask for DARE, and masks
over the stacked ``[T, d]`` matrix. They favour plainness over speed and memory (the
TIES one peaks near 2.7x its inputs): the fast operators in :mod:`atm_fl.merge.ops`
must return the same float32 value in every coordinate (a zero may differ in sign),
and the tests and ``experiments/bench_merge.py`` check that.

Two conventions make "the same value" well defined, and both implementations follow them:

* Sums over tasks are taken in task order, ``((x_0 + x_1) + x_2) + ...`` (float32
  addition is not associative, so the order is part of the definition).
* Means divide that sum by ``T``; the disjoint mean divides by the count.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from .ops import (
    _check_band,
    _check_dare,
    _check_density,
    _check_layout,
    _check_p,
    _check_seed,
    _check_vectors,
    _dare_keep_threshold,
    _dare_scale,
    _trim_k,
)

__all__ = [
    "merge_mean",
    "merge_sum",
    "ties_threshold",
    "ties_trim_mask",
    "ties_trim",
    "merge_ties",
    "breadcrumbs_mask",
    "merge_breadcrumbs",
    "dare_drop",
    "merge_dare",
]


def _task_sum(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum in task order (see the module docstring); returns a new tensor."""
    return functools.reduce(torch.add, rows[1:], rows[0].clone())


@torch.no_grad()
def merge_mean(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(1/T) * sum_t tau_t``."""
    vs = _check_vectors(vectors)
    return _task_sum(vs) / len(vs)


@torch.no_grad()
def merge_sum(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_t tau_t``."""
    return _task_sum(_check_vectors(vectors))


@torch.no_grad()
def ties_threshold(vector: torch.Tensor, density: float = 0.2) -> float:
    """The k-th largest magnitude, ``k = int(d * density)``, by ``torch.kthvalue``.

    Returns ``inf`` when ``k == 0`` (nothing is kept).
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_density(density)
    d = v.numel()
    k = _trim_k(d, density)
    if k == 0:
        return float("inf")
    return float(torch.kthvalue(v.abs(), d - k + 1).values)


@torch.no_grad()
def ties_trim_mask(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """Boolean mask ``|x| >= ties_threshold(x, density)``."""
    return vector.abs() >= ties_threshold(vector, density)


@torch.no_grad()
def ties_trim(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """``x`` where kept by the TIES trim, 0 elsewhere."""
    return torch.where(ties_trim_mask(vector, density), vector, 0.0)


@torch.no_grad()
def merge_ties(vectors: Sequence[torch.Tensor], density: float = 0.2) -> torch.Tensor:
    """TIES: trim per task, elect the sign, disjoint mean (default ``density=0.2``)."""
    vs = _check_vectors(vectors)
    _check_density(density)
    # [T, d] masks, built a row at a time and applied in place so that the peak stays
    # near two copies of the inputs (the formulation is unchanged).
    stacked = torch.stack(vs)                                            # [T, d]
    thr = [ties_threshold(v, density) for v in vs]                       # per-task kthvalue
    keep = torch.stack([v.abs() >= t for v, t in zip(vs, thr)])          # [T, d] bool
    trimmed = stacked.masked_fill_(keep.logical_not_(), 0.0)
    gamma = torch.sign(_task_sum(list(trimmed)))
    # Global majority sign for coordinates whose trimmed sum is exactly 0.
    majority = int(torch.sign(gamma.sum(dtype=torch.int64)))
    gamma = torch.where(gamma == 0, float(majority), gamma)
    # A zero entry has sign 0, so it never agrees with gamma (which is +-1 or 0 here,
    # and a coordinate with gamma 0 gets no agreeing entry at all).
    agree = keep
    for t, row in enumerate(trimmed):
        torch.eq(torch.sign(row), gamma, out=agree[t])
    agree &= gamma != 0
    total = _task_sum(list(trimmed.masked_fill_(~agree, 0.0)))
    count = agree.sum(dim=0, dtype=torch.float32)
    return total / count.clamp(min=1.0)


@torch.no_grad()
def breadcrumbs_mask(tensor: torch.Tensor, lower: float = 0.85, upper: float = 0.993) -> torch.Tensor:
    """Boolean keep-mask of one tensor, by a full sort of each row along the last dim.

    For a row of length ``n`` sorted by magnitude ascending into ``s``, with
    ``i_lo = int(n * lower)`` and ``i_hi = int(n * upper)``, an entry is kept iff
    ``s[i_lo] <= |x| <= s[i_hi - 1]``; nothing is kept if ``i_hi <= i_lo``. A 0-dim
    tensor is kept whole.
    """
    _check_band(lower, upper)
    if tensor.dim() == 0:
        return torch.ones((), dtype=torch.bool)
    n = tensor.shape[-1]
    i_lo, i_hi = int(n * lower), int(n * upper)
    if i_hi <= i_lo:
        return torch.zeros(tensor.shape, dtype=torch.bool)
    a = tensor.abs()
    s = torch.sort(a, dim=-1).values
    return (a >= s[..., i_lo:i_lo + 1]) & (a <= s[..., i_hi - 1:i_hi])


@torch.no_grad()
def merge_breadcrumbs(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, tuple[int, ...]]],
                      lower: float = 0.85, upper: float = 0.993) -> torch.Tensor:
    """Breadcrumbs: per-row magnitude band mask per tensor, then the mean over tasks."""
    vs = _check_vectors(vectors)
    _check_band(lower, upper)
    shapes = _check_layout(layout, vs[0].numel())
    masked = []
    for v in vs:
        parts, off = [], 0
        for shape, n in shapes:
            x = v[off:off + n].reshape(shape)
            parts.append(torch.where(breadcrumbs_mask(x, lower, upper), x, 0.0).reshape(-1))
            off += n
        masked.append(torch.cat(parts) if parts else v.new_zeros(0))
    return _task_sum(masked) / len(vs)


@torch.no_grad()
def dare_drop(vector: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """DARE drop and rescale of one vector with a full-length mask.

    ``u = numpy.random.Generator(numpy.random.PCG64(seed)).random(d, dtype=float32)``;
    entry ``i`` is kept iff ``u[i] >= float32(p)``; kept entries are multiplied by
    ``float32(1/(1-p))`` (by 1 when ``p == 1``, where everything is dropped).
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_p(p)
    seed = _check_seed(seed)
    u = np.random.Generator(np.random.PCG64(seed)).random(v.numel(), dtype=np.float32)
    keep = torch.from_numpy(u) >= _dare_keep_threshold(p)
    return torch.where(keep, v * _dare_scale(p), 0.0)


@torch.no_grad()
def merge_dare(vectors: Sequence[torch.Tensor], p: float = 0.9, then: str = "mean",
               density: float = 0.2, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """DARE: drop with probability ``p`` and rescale per task, then ``mean`` or ``ties``."""
    vs = _check_vectors(vectors)
    seeds = _check_dare(p, then, density, seeds, len(vs))
    dropped = [dare_drop(v, p, s) for v, s in zip(vs, seeds)]
    return merge_mean(dropped) if then == "mean" else merge_ties(dropped, density)
