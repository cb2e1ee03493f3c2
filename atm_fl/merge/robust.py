"""Coordinate-wise robust merges: the median and the trimmed mean of the task vectors.

Byzantine-robust aggregation (Yin et al. 2018; Flower's FedMedian and FedTrimmedAvg do
the same on full weights) applied to task vectors: per coordinate, sort the T values and
take the middle one(s), or drop the ``k`` smallest and ``k`` largest and average the
rest. A minority of sites can move each coordinate only within the range of the honest
values, however large or sign-flipped their vectors are.

Both work on slices of ``CHUNK`` coordinates so the [T, slice] stack stays small (the
inputs are never copied whole).
"""

from __future__ import annotations

from typing import Sequence

import torch

CHUNK = 1 << 20


def _check(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    vs = [v.detach() for v in vectors]
    if not vs:
        raise ValueError("need at least one vector")
    d = vs[0].numel()
    for i, v in enumerate(vs):
        if v.dim() != 1 or v.numel() != d or v.dtype != torch.float32:
            raise ValueError(f"vectors[{i}]: expected a 1-D float32 tensor of length {d}, got {v.dtype} "
                             f"{tuple(v.shape)}")
    return vs


def trim_count(T: int, beta: float) -> int:
    """Values dropped at each end: ``floor(beta * T)``, capped so that at least one value stays."""
    return min(int(beta * T), (T - 1) // 2)


@torch.no_grad()
def merge_trimmed_mean(vectors: Sequence[torch.Tensor], beta: float = 0.2) -> torch.Tensor:
    """Per coordinate: drop the ``trim_count(T, beta)`` smallest and largest values, average the rest.

    ``beta = 0`` is the mean (up to float summation order); with T = 1 or 2 nothing can be
    trimmed and this is the mean too.
    """
    vs = _check(vectors)
    T, d = len(vs), vs[0].numel()
    k = trim_count(T, beta)
    out = torch.empty(d, dtype=torch.float32)
    for lo in range(0, d, CHUNK):
        hi = min(d, lo + CHUNK)
        block = torch.stack([v[lo:hi] for v in vs])
        if k:
            block = block.sort(dim=0).values[k:T - k]
        out[lo:hi] = block.mean(dim=0)
    return out


@torch.no_grad()
def merge_median(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per coordinate median; for even T the mean of the two middle values (as ``numpy.median``)."""
    vs = _check(vectors)
    T, d = len(vs), vs[0].numel()
    out = torch.empty(d, dtype=torch.float32)
    for lo in range(0, d, CHUNK):
        hi = min(d, lo + CHUNK)
        s = torch.stack([v[lo:hi] for v in vs]).sort(dim=0).values
        out[lo:hi] = s[T // 2] if T % 2 else (s[T // 2 - 1] + s[T // 2]) / 2
    return out
