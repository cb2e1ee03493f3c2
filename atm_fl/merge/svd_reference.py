"""Direct formulations of the SVD-based merges, straight from the papers' equations.

Every matrix is decomposed with a full float64 ``torch.linalg.svd``; polar factors
come from the SVD of the concatenated block (``A = P diag(sigma) Q^T`` gives
``polar(A) = P Q^T``). Nothing is randomized, truncated early or formed through a Gram
matrix. The project's choices (which tensors are matrices, the rank share per task,
the zero cut-off ``RTOL``, the canonical polar factor of a rank-deficient block, the
Iso-CTS split) are shared with :mod:`atm_fl.merge.svd` through the small helpers
imported below, so the two differ only in how they compute. The tests and
``experiments/bench_merge.py`` compare them; they favour plainness over speed (about
one full SVD per task and matrix).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .ops import _check_layout, _check_vectors
from .svd import RTOL, iso_cts_split, matrix_entries, tsv_rank

__all__ = ["merge_tsv", "merge_iso_c", "merge_iso_cts", "merge_cart", "polar"]


def polar(a: torch.Tensor) -> torch.Tensor:
    """The polar factor ``P Q^T`` of ``a = P diag(sigma) Q^T`` (float64), leaving out the
    directions whose singular value is at most ``RTOL`` times the largest."""
    p, sig, qh = torch.linalg.svd(a, full_matrices=False)
    keep = sig > RTOL * sig[0] if sig.numel() else sig > 0
    return p[:, keep] @ qh[keep]


def _sum(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    acc = mats[0].clone()
    for x in mats[1:]:
        acc = acc + x
    return acc


def _layer_scale(mats: Sequence[torch.Tensor]) -> float:
    return max(float(torch.linalg.matrix_norm(x.double())) for x in mats)


def _svd(a: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full SVD of float64 ``a`` without the components at or below the cut-off."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    keep = s > RTOL * scale
    return u[:, keep], s[keep], vh[keep].T


def _tsv(mats: list[torch.Tensor], share: float) -> torch.Tensor:
    n, m = mats[0].shape
    r = tsv_rank(min(n, m), len(mats), share)
    scale = _layer_scale(mats)
    parts = [_svd(x.double(), scale) for x in mats]
    u = torch.cat([p[0][:, :r] for p in parts], 1)
    s = torch.cat([p[1][:r] for p in parts])
    v = torch.cat([p[2][:, :r] for p in parts], 1)
    if s.numel() == 0:
        return torch.zeros(n, m)
    return (polar(u) @ torch.diag(s) @ polar(v).T).float()


def _iso_c(mats: list[torch.Tensor]) -> torch.Tensor:
    u, s, v = _svd(_sum(mats).double(), _layer_scale(mats))
    if s.numel() == 0:
        return torch.zeros(mats[0].shape)
    return (s.mean() * u @ v.T).float()


def _iso_cts(mats: list[torch.Tensor], common: float) -> torch.Tensor:
    n, m = mats[0].shape
    scale = _layer_scale(mats)
    c, per = iso_cts_split(min(n, m), len(mats), common)
    u, s, v = _svd(_sum(mats).double(), scale)
    us, ss, vs = [u[:, :c]], [s[:c]], [v[:, :c]]
    for x in mats:
        x64 = x.double()
        residual = x64 - us[0] @ (us[0].T @ x64)          # left projection, as in the paper
        ut, st, vt = _svd(residual, scale)
        us.append(ut[:, :per]), ss.append(st[:per]), vs.append(vt[:, :per])
    u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    if s.numel() == 0:
        return torch.zeros(n, m)
    return (s.mean() * polar(u) @ polar(v).T).float()


def _cart(mats: list[torch.Tensor], rank: float, lam: float) -> torch.Tensor:
    n, m = mats[0].shape
    k = min(n, m)
    r = min(k, max(1, int(rank * k)))
    mean = _sum(mats) / len(mats)
    scale = _layer_scale(mats)
    low = torch.zeros(n, m, dtype=torch.float64)
    for x in mats:
        u, s, v = _svd((x - mean).double(), scale)
        low += (u[:, :r] * s[:r]) @ v[:, :r].T
    return (mean.double() + lam * low).float()


def _merge(vectors, layout, conv: str, per_matrix) -> torch.Tensor:
    vs = _check_vectors(vectors)
    _check_layout(layout, vs[0].numel())
    out = torch.empty(vs[0].numel(), dtype=torch.float32)
    for _, off, n, shape in matrix_entries(layout, conv):
        parts = [v[off:off + n] for v in vs]
        if shape is None:
            out[off:off + n] = _sum(parts) / len(vs)
        else:
            out[off:off + n] = per_matrix([p.view(shape) for p in parts]).reshape(-1)
    return out


@torch.no_grad()
def merge_tsv(vectors, layout, share: float = 0.0, conv: str = "matrix") -> torch.Tensor:
    """TSV-M: ``polar(U) diag(s) polar(V)^T`` of each task's top r components, concatenated."""
    return _merge(vectors, layout, conv, lambda mats: _tsv(mats, share))


@torch.no_grad()
def merge_iso_c(vectors, layout, conv: str = "matrix") -> torch.Tensor:
    """Iso-C: ``mean(s) U V^T`` of the summed matrix ``U diag(s) V^T``."""
    return _merge(vectors, layout, conv, _iso_c)


@torch.no_grad()
def merge_iso_cts(vectors, layout, common: float = 0.8, conv: str = "matrix") -> torch.Tensor:
    """Iso-CTS: common top-c subspace of the sum plus each task's top-s residual, flat spectrum."""
    return _merge(vectors, layout, conv, lambda mats: _iso_cts(mats, common))


@torch.no_grad()
def merge_cart(vectors, layout, rank: float = 0.12, lam: float = 2.0, conv: str = "matrix") -> torch.Tensor:
    """CART: ``mean + lam * sum_t LR_r(M_t - mean)``."""
    return _merge(vectors, layout, conv, lambda mats: _cart(mats, rank, lam))
