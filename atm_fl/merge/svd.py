"""SVD-based merges, per weight matrix: TSV-M, Iso-C, Iso-CTS and CART (fast versions).

Every function takes T >= 1 flat float32 task vectors and the layout (names and
shapes in flatten order) and returns a new float32 vector of the same length. Each
tensor of the layout is either a *matrix* (:func:`matrix_shape`), merged by the
method, or not, and then merged by the mean over tasks (task-order sum divided by T,
exactly what ``merge_mean`` returns for those entries), as the authors' code does.
The semantics, equations and every choice are in docs/merging.md ("SVD-based
merges"); :mod:`atm_fl.merge.svd_reference` spells each method out with full
float64 SVDs, and the tests compare the two.

How the speed is obtained (docs/performance.md has the numbers). Nothing is
randomized: the results are the exact decompositions, to float64 rounding of a Gram
matrix.

* Every decomposition goes through the smaller float64 Gram matrix (``A^T A`` or
  ``A A^T``: 768 x 768 for every ViT-B-16 matrix), built with BLAS ``dsyrk`` (half
  the work of a product). Where a method needs only the top r components (TSV-M,
  CART, the task-specific part of Iso-CTS), LAPACK's MRRR solver (``dsyevr``)
  computes just those r eigenpairs; the other side's singular vectors are ``A V / s``.
* The Iso-CTS residual ``(I - U_c U_c^T) M`` is never formed: its Gram is
  ``M^T M - Y^T Y`` with ``Y = U_c^T M`` (or ``(I - P) M M^T (I - P)`` on the left).
* The polar factor of a concatenated block U (TSV-M, Iso-CTS) is ``U (U^T U)^{-1/2}``,
  from the eigendecomposition of the small Gram ``U^T U``. The final product of the
  two (orthonormal) polar factors runs in float32.
* Matrices are spread over ``torch.get_num_threads()`` worker threads, each running its
  BLAS and LAPACK calls single-threaded (see :func:`_one_thread_per_op`).

Rank rule: a singular value counts as zero when it is at most ``RTOL`` times the
layer's scale (the largest Frobenius norm among the T task matrices); such components
are dropped before anything else. Float32 rounding of the inputs is about 6e-8 of
that scale, so the cut-off sits well above rounding noise and far below any component
a fine-tuned task vector has. It makes rank-deficient cases (a task of rank below its
share, cancelling tasks, identical tasks) well defined, where the authors' code picks
arbitrary singular vectors. For the same reason the polar factor of a rank-deficient
block is the canonical one (directions whose singular value is at most ``RTOL`` times
the block's largest are left out).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from typing import Callable, Sequence

import numpy as np
import torch

from . import ops
from .ops import _check_layout, _check_vectors

log = logging.getLogger(__name__)

__all__ = ["RTOL", "CONV", "matrix_shape", "matrix_entries", "tsv_rank", "iso_cts_split",
           "merge_tsv", "merge_iso_c", "merge_iso_cts", "merge_cart"]

#: Singular values at or below this fraction of the layer's scale count as zero.
RTOL = 1e-5
#: What a conv kernel (3-D and more) is: a matrix ``[out, in * kh * kw]`` or a non-matrix (mean).
CONV = ("matrix", "mean")


# --------------------------------------------------------------------------- which tensors are matrices

def matrix_shape(name: str, shape: Sequence[int], conv: str = "matrix") -> tuple[int, int] | None:
    """The ``(rows, cols)`` a tensor is merged as, or None when it is not a matrix.

    A tensor is a matrix when it is 2-D, or 3-D and more with ``conv='matrix'`` (a
    conv kernel ``[out, in, kh, kw]`` read as ``[out, in * kh * kw]``, the linear map
    it applies to each flattened patch), unless its name contains ``embedding``
    (a lookup table or a positional table is not a linear map between activations)
    or one side is shorter than 2 (a row or a column: rank 1 whatever the tasks).

    Parameters
    ----------
    name : str
        Tensor name in the layout (e.g. ``transformer.resblocks.0.attn.in_proj_weight``).
    shape : sequence of int
        Its shape.
    conv : {"matrix", "mean"}, default "matrix"
        How tensors of 3 or more dimensions are treated.

    Returns
    -------
    tuple of int or None
    """
    if conv not in CONV:
        raise ValueError(f"conv={conv!r} is not supported; valid: {', '.join(CONV)}")
    if "embedding" in name:
        return None
    if len(shape) == 2:
        rows, cols = int(shape[0]), int(shape[1])
    elif len(shape) >= 3 and conv == "matrix":
        rows, cols = int(shape[0]), math.prod(int(s) for s in shape[1:])
    else:
        return None
    return (rows, cols) if min(rows, cols) >= 2 else None


def matrix_entries(layout: Sequence[tuple[str, Sequence[int]]], conv: str = "matrix") -> list[tuple]:
    """``[(name, offset, numel, (rows, cols) or None)]`` for every tensor of the layout."""
    out, off = [], 0
    for name, shape in layout:
        n = math.prod(int(s) for s in shape)
        out.append((name, off, n, matrix_shape(name, shape, conv)))
        off += n
    return out


def tsv_rank(k: int, tasks: int, share: float = 0.0) -> int:
    """Components TSV-M keeps per task in a matrix of rank bound k: ``max(1, int(share * k))``.

    ``share = 0`` means 1/T, the paper's choice: ``k // T``, the same number as the
    authors' ``int(k * (1 / T))`` (checked for k <= 4096, T <= 20). At least one
    component is kept even when k < T (the authors' code keeps none there and the
    layer's update is lost).
    """
    r = k // tasks if share <= 0 else int(share * k)
    return min(k, max(1, r))


def iso_cts_split(k: int, tasks: int, common: float = 0.8) -> tuple[int, int]:
    """Iso-CTS dimensions ``(c, s)``: c common components and s per task, ``c + T * s = k``.

    As in the authors' code: ``s = round((k - int(k * common)) / T)`` (Python's
    round, half to even), capped at ``k // T`` so that c is never negative.
    """
    s = min(k // tasks, round((k - int(k * common)) / tasks))
    return k - tasks * s, s


# --------------------------------------------------------------------------- linear algebra helpers

def _f64(a: torch.Tensor) -> np.ndarray:
    """A C-contiguous float64 numpy copy."""
    return np.ascontiguousarray(a.numpy(), dtype=np.float64)


def _syrk(a: np.ndarray, right: bool) -> np.ndarray:
    """``a^T a`` (right) or ``a a^T`` of a C-contiguous float64 matrix; upper triangle only.

    ``a.T`` is a Fortran-ordered view of ``a``, which BLAS reads without a copy.
    """
    # scipy is imported where it is used: importing atm_fl.merge (clients do) should
    # not pay for scipy.linalg (about 0.5 s).
    from scipy.linalg import blas

    return blas.dsyrk(1.0, a.T, trans=0 if right else 1)


def _gram(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """The smaller Gram matrix of ``a`` (upper triangle) and whether it is ``a^T a``."""
    right = a.shape[0] >= a.shape[1]
    return _syrk(a, right), right


def _eig_top(g: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The r largest eigenpairs of a symmetric matrix given by its upper triangle, descending."""
    import scipy.linalg

    k = g.shape[0]
    if r >= k:
        lam, vec = scipy.linalg.eigh(g, lower=False, driver="evd", check_finite=False, overwrite_a=True)
    else:
        lam, vec = scipy.linalg.eigh(g, lower=False, subset_by_index=(k - r, k - 1), driver="evr",
                                     check_finite=False, overwrite_a=True)
    return lam[::-1], vec[:, ::-1]


def _triplets(g: np.ndarray, right: bool, r: int, cut: float,
              other: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top r singular triplets ``(U, s, V)`` of the matrix A whose Gram is ``g``.

    ``right``: ``g = A^T A`` (else ``A A^T``). ``other(X)`` applies A (right) or A^T
    (left) to the Gram side's vectors; divided by s it gives the other side's vectors.
    Components with ``s <= cut`` are dropped.
    """
    lam, x = _eig_top(g, r)
    s = np.sqrt(np.clip(lam, 0.0, None))
    j = int((s > cut).sum())
    s, x = s[:j], np.ascontiguousarray(x[:, :j])
    y = other(x) / s
    return (y, s, x) if right else (x, s, y)


def _polar(u: np.ndarray) -> np.ndarray:
    """The polar factor ``u (u^T u)^{+1/2}`` of float64 u: orthonormal columns (float64).

    Eigenvalues of ``u^T u`` at or below ``RTOL**2`` times the largest (singular values
    of u at or below ``RTOL`` times the largest) count as zero, which gives the
    canonical polar factor ``P Q^T`` of a rank-deficient block.
    """
    import scipy.linalg

    lam, vec = scipy.linalg.eigh(_syrk(u, True), lower=False, driver="evd", check_finite=False, overwrite_a=True)
    keep = lam > (RTOL ** 2) * max(lam[-1], 0.0)
    vec = vec[:, keep]
    # (u^T u)^{+1/2} first: one n x R x R product instead of two.
    return u @ ((vec / np.sqrt(lam[keep])) @ vec.T)


def _product(u: np.ndarray, s: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """``u diag(s) v^T`` as float32, for u and v with orthonormal columns.

    In float32: with orthonormal factors there is no cancellation to lose digits to
    (``(u @ G^{-1/2}) @ ...`` with an ill-conditioned G would have).
    """
    return torch.from_numpy(u * s).float() @ torch.from_numpy(v).float().T


def _task_sum(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float32 sum in task order, as ``merge_sum`` takes it."""
    acc = mats[0].clone()
    for x in mats[1:]:
        acc.add_(x)
    return acc


def _scale(mats: Sequence[torch.Tensor]) -> float:
    """The layer's scale: the largest Frobenius norm among the task matrices."""
    return max(float(torch.linalg.vector_norm(x, dtype=torch.float64)) for x in mats)


# --------------------------------------------------------------------------- one matrix each

def _top(x: np.ndarray, r: int, cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top r singular triplets of a float64 matrix (components with ``s <= cut`` dropped)."""
    g, right = _gram(x)
    return _triplets(g, right, r, cut, (lambda z: x @ z) if right else (lambda z: x.T @ z))


def _tsv_matrix(mats: list[torch.Tensor], share: float) -> torch.Tensor:
    n, m = mats[0].shape
    r = tsv_rank(min(n, m), len(mats), share)
    cut = RTOL * _scale(mats)
    parts = [_top(_f64(x), r, cut) for x in mats]
    u = np.concatenate([p[0] for p in parts], 1)
    s = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts], 1)
    if s.size == 0:
        return torch.zeros(n, m)
    return _product(_polar(u), s, _polar(v))


def _sum_spectrum(mats: list[torch.Tensor], cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U, s, V)`` of the task-order sum: every component above the cut-off, descending."""
    total = _f64(_task_sum(mats))
    return _top(total, min(total.shape), cut)


def _iso_c_matrix(mats: list[torch.Tensor]) -> torch.Tensor:
    n, m = mats[0].shape
    u, s, v = _sum_spectrum(mats, RTOL * _scale(mats))
    if s.size == 0:
        return torch.zeros(n, m)
    return torch.from_numpy(s.mean() * (u @ v.T)).float()


def _iso_cts_matrix(mats: list[torch.Tensor], common: float) -> torch.Tensor:
    n, m = mats[0].shape
    T, k = len(mats), min(n, m)
    cut = RTOL * _scale(mats)
    c, per = iso_cts_split(k, T, common)
    total = _f64(_task_sum(mats))
    if n >= m:
        u, s, v = _top(total, k, cut)
        uc, sc, vc = np.ascontiguousarray(u[:, :c]), s[:c], np.ascontiguousarray(v[:, :c])
        qperp = None
    else:
        # Wide: the sum's left Gram is n x n, so its eigenvectors beyond the common
        # ones are an orthonormal basis of the complement, used for the residuals below.
        lam, vec = _eig_top(_syrk(total, False), n)
        s = np.sqrt(np.clip(lam, 0.0, None))
        j = min(c, int((s > cut).sum()))
        uc, sc, qperp = np.ascontiguousarray(vec[:, :j]), s[:j], np.ascontiguousarray(vec[:, j:])
        vc = (total.T @ uc) / sc
    if per == 0:
        # No task-specific part: the common block is orthonormal already (this is Iso-C
        # on the top c components of the sum).
        return torch.from_numpy(sc.mean() * (uc @ vc.T)).float() if sc.size else torch.zeros(n, m)
    us, ss, vs = [], [], []
    for t in mats:
        x = _f64(t)
        # The residual R = (I - Uc Uc^T) X is never formed.
        if qperp is None:
            # Tall: R^T R = X^T X - Y^T Y with Y = Uc^T X; R V = X V - Uc (Y V).
            y = np.ascontiguousarray(uc.T @ x)
            g = _syrk(x, True) - _syrk(y, True)
            ut, st, vt = _triplets(g, True, per, cut, lambda z, x=x, y=y: x @ z - uc @ (y @ z))
        else:
            # Wide: R = Q Z with Z = Q^T X and Q the complement basis; R R^T = Q (Z Z^T) Q^T.
            z = np.ascontiguousarray(qperp.T @ x)
            wt, st, vt = _triplets(_syrk(z, False), False, per, cut, lambda w, z=z: z.T @ w)
            ut = qperp @ wt
        us.append(ut), ss.append(st), vs.append(vt)
    u, s, v = np.concatenate(us + [uc], 1), np.concatenate(ss + [sc]), np.concatenate(vs + [vc], 1)
    if s.size == 0:
        return torch.zeros(n, m)
    return _product(_polar(u), np.full(s.size, s.mean()), _polar(v))


def _cart_matrix(mats: list[torch.Tensor], rank: float, lam: float) -> torch.Tensor:
    n, m = mats[0].shape
    T, k = len(mats), min(n, m)
    mean = _task_sum(mats).div_(T)
    cut = RTOL * _scale(mats)
    r = min(k, max(1, int(rank * k)))
    parts = [_top(_f64(x - mean), r, cut) for x in mats]
    us = np.concatenate([p[0] * p[1] for p in parts], 1)
    vs = np.concatenate([p[2] for p in parts], 1)
    if us.shape[1] == 0:
        return mean
    return (torch.from_numpy(mean.numpy().astype(np.float64) + lam * (us @ vs.T))).float()


# --------------------------------------------------------------------------- drivers

def _run(n: int, fn: Callable[[int], None], workers: int) -> None:
    """``fn(0) .. fn(n - 1)`` on ``workers`` threads taking items from a shared counter."""
    counter, errors = itertools.count(), []

    def worker() -> None:
        try:
            while not errors:
                j = next(counter)          # atomic under the GIL
                if j >= n:
                    return
                fn(j)
        except BaseException as exc:       # re-raised in the calling thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, name=f"svd-merge-{w}", daemon=True) for w in range(max(1, min(workers, n)))]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _one_thread_per_op():
    """Run torch (and MKL) ops single-threaded inside, restoring the thread count after.

    The matrices are spread over ``torch.get_num_threads()`` worker threads instead
    (``ops.THREADS`` when set): on a shared machine a multi-threaded ``eigh`` waits at
    its barriers for a descheduled partner thread, while independent matrices never
    wait for each other. Other torch work in this process runs single-threaded until
    the merge returns.
    """
    import scipy.linalg  # noqa: F401 - load scipy's BLAS first, or threadpool_limits cannot reach it
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):       # scipy's OpenBLAS
            yield before
    finally:
        torch.set_num_threads(before)


def _merge(vectors, layout, conv: str, name: str, per_matrix: Callable[[list[torch.Tensor]], torch.Tensor]):
    vs = _check_vectors(vectors)
    _check_layout(layout, vs[0].numel())
    if conv not in CONV:
        raise ValueError(f"conv={conv!r} is not supported; valid: {', '.join(CONV)}")
    T, d = len(vs), vs[0].numel()
    out = torch.empty(d, dtype=torch.float32)
    t0 = time.perf_counter()
    items = []
    for i, (_, off, n, shape) in enumerate(matrix_entries(layout, conv)):
        if n == 0:
            continue
        if shape is None:
            out[off:off + n].copy_(_task_sum([v[off:off + n] for v in vs])).div_(T)
        else:
            items.append((i, off, n, shape))
    # Largest matrices first, so that the workers finish together.
    items.sort(key=lambda it: -it[2] * min(it[3]))

    def work(j: int) -> None:
        i, off, n, shape = items[j]
        res = per_matrix([v[off:off + n].view(shape) for v in vs])
        out[off:off + n].view(shape).copy_(res)

    with _one_thread_per_op() as threads:
        _run(len(items), work, int(ops.THREADS) if ops.THREADS else threads)
    log.debug("%s of %d tasks, d=%d, %d matrices: %.3f s", name, T, d, len(items), time.perf_counter() - t0)
    return out


def _check_fraction(name: str, x: float, low_open: bool = False) -> None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and (0.0 < x if low_open else 0.0 <= x) \
        and x <= 1.0
    if not ok:
        raise ValueError(f"{name}={x!r} is out of range; valid: {'0 < ' if low_open else '0 <= '}{name} <= 1")


@torch.no_grad()
def merge_tsv(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, Sequence[int]]], share: float = 0.0,
              conv: str = "matrix") -> torch.Tensor:
    """TSV-M (Gargiulo et al., CVPR 2025): per matrix, each task's top components, decorrelated.

    Per matrix of rank bound k: take each task's top ``r = tsv_rank(k, T, share)``
    singular triplets (dropping zero ones), concatenate them into ``U = [U_1 .. U_T]``,
    ``s``, ``V = [V_1 .. V_T]``, replace U and V by their polar factors and return
    ``polar(U) diag(s) polar(V)^T``. Tasks with mutually orthogonal row and column
    spaces, each of rank at most r, give exactly their sum; T identical tasks give that
    task back. Non-matrix tensors: the mean.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    layout : sequence of (str, tuple of int)
        ``(name, shape)`` of the tensors in flatten order, covering d entries.
    share : float, default 0.0
        Fraction of each matrix's rank kept per task, ``0 <= share <= 1``; 0 means 1/T
        (the paper).
    conv : {"matrix", "mean"}, default "matrix"
        Whether conv kernels are matrices (:func:`matrix_shape`).

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    _check_fraction("share", share)
    return _merge(vectors, layout, conv, "TSV-M", lambda mats: _tsv_matrix(mats, share))


@torch.no_grad()
def merge_iso_c(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, Sequence[int]]],
                conv: str = "matrix") -> torch.Tensor:
    """Iso-C (Marczak et al., ICML 2025): the summed matrix with a flat spectrum.

    Per matrix: ``S = sum_t M_t = U diag(s) V^T``; return ``mean(s) U V^T`` over the
    components above the zero cut-off. Non-matrix tensors: the mean.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    layout : sequence of (str, tuple of int)
        ``(name, shape)`` of the tensors in flatten order, covering d entries.
    conv : {"matrix", "mean"}, default "matrix"
        Whether conv kernels are matrices (:func:`matrix_shape`).

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    return _merge(vectors, layout, conv, "Iso-C", _iso_c_matrix)


@torch.no_grad()
def merge_iso_cts(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, Sequence[int]]], common: float = 0.8,
                  conv: str = "matrix") -> torch.Tensor:
    """Iso-CTS (Marczak et al., ICML 2025): common and task-specific subspaces, flat spectrum.

    Per matrix of rank bound k, with ``(c, s) = iso_cts_split(k, T, common)``: the top
    c components of the sum S form the common subspace (U_c, V_c); each task's matrix
    with the common left subspace projected out, ``(I - U_c U_c^T) M_t``, gives its top
    s components. All of them are concatenated (U, V and their singular values), U and
    V are replaced by their polar factors, and every singular value by their mean.
    With ``s = 0`` (``common = 1``, or small matrices) this is Iso-C on the top c
    components. Non-matrix tensors: the mean.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    layout : sequence of (str, tuple of int)
        ``(name, shape)`` of the tensors in flatten order, covering d entries.
    common : float, default 0.8
        Share of each matrix's rank given to the common subspace, ``0 <= common <= 1``
        (the paper's default).
    conv : {"matrix", "mean"}, default "matrix"
        Whether conv kernels are matrices (:func:`matrix_shape`).

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    _check_fraction("common", common)
    return _merge(vectors, layout, conv, "Iso-CTS", lambda mats: _iso_cts_matrix(mats, common))


@torch.no_grad()
def merge_cart(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, Sequence[int]]], rank: float = 0.12,
               lam: float = 2.0, conv: str = "matrix") -> torch.Tensor:
    """CART (Choi et al., 2024): the mean plus low-rank approximations of the centred tasks.

    Per matrix of rank bound k: ``mean + lam * sum_t LR_r(M_t - mean)`` where LR_r keeps
    the top ``r = max(1, int(rank * k))`` components. Non-matrix tensors: the mean
    (centred vectors sum to zero). The result is on the scale of the mean.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    layout : sequence of (str, tuple of int)
        ``(name, shape)`` of the tensors in flatten order, covering d entries.
    rank : float, default 0.12
        Fraction of each matrix's rank kept per centred task, ``0 < rank <= 1``.
    lam : float, default 2.0
        Weight of the low-rank sum (the authors' "prior").
    conv : {"matrix", "mean"}, default "matrix"
        Whether conv kernels are matrices (:func:`matrix_shape`).

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    _check_fraction("rank", rank, low_open=True)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lam={lam!r} is not valid; valid: a finite number")
    return _merge(vectors, layout, conv, "CART", lambda mats: _cart_matrix(mats, rank, lam))
