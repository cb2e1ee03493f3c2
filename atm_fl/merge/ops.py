"""Fast merge operators on flattened task vectors (CPU, chunked, bit-identical to the reference).

Every operator takes ``T >= 1`` one-dimensional float32 tensors of equal length ``d``
and returns a new float32 tensor of length ``d``; inputs are never modified. The
semantics are those of docs/merging.md; :mod:`atm_fl.merge.reference` spells them out
in the most direct way, and every function here returns exactly (bit for bit, up to
the sign of zero) what its reference twin returns.

How the speed is obtained (docs/performance.md, "Merge operators", has the numbers):

* Work runs over ``CHUNK``-sized slices of ``d`` so temporaries stay small and in
  cache; peak extra memory is the output plus a few chunk buffers (DARE-TIES adds
  one byte per entry and task for its masks).
* The TIES trim uses ``hardshrink`` with ``lambda = nextafter(threshold, 0)``: for
  float32, ``|x| > nextafter(t, 0)`` is exactly ``|x| >= t``, so the trim is one
  fused op. The threshold itself (the k-th largest magnitude) is found by sampling
  a bracket, one scan that counts entries above it and collects the few inside it,
  and ``kthvalue`` on those; it equals ``torch.kthvalue`` on the whole vector.
* Breadcrumbs row thresholds come from two ``np.partition`` calls on the magnitude
  bits (vectorised, release the GIL), run for several tasks at once in threads.
* DARE draws its uniforms chunk by chunk from one ``torch.Generator`` per task; the
  CPU generator yields the same stream whether drawn at once or in pieces, so the
  mask equals the reference's full-length draw. Tasks draw in parallel threads.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK",
    "merge_mean",
    "merge_sum",
    "ties_threshold",
    "ties_trim_mask",
    "ties_trim",
    "merge_ties",
    "merge_breadcrumbs",
    "dare_drop",
    "merge_dare",
]

#: Elements per slice of ``d`` (4 MiB of float32). Tests lower it to cross boundaries.
CHUNK = 1 << 20
#: Vectors up to this length get the TIES threshold from ``kthvalue`` directly.
SMALL = 1 << 21
#: Sample size used to bracket the TIES threshold on long vectors.
SAMPLE = 1 << 16

_THEN = ("mean", "ties")


# --------------------------------------------------------------------------- validation

def _check_vectors(vectors: Sequence[torch.Tensor], name: str = "vectors") -> list[torch.Tensor]:
    """Return ``vectors`` as a list of detached tensors after checking T >= 1, 1-D
    float32 CPU tensors and equal lengths (finite values are the caller's job)."""
    vs = list(vectors)
    if len(vs) < 1:
        raise ValueError(f"{name}: need at least one task vector (T >= 1), got T=0")
    d = None
    for i, v in enumerate(vs):
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{name}[{i}]: expected a torch.Tensor, got {type(v).__name__}")
        if v.dim() != 1 or v.dtype != torch.float32:
            raise ValueError(f"{name}[{i}]: expected a 1-D float32 tensor, got shape "
                             f"{tuple(v.shape)} dtype {v.dtype}")
        if v.device.type != "cpu":
            raise ValueError(f"{name}[{i}]: expected a CPU tensor, got device {v.device}")
        if d is None:
            d = v.numel()
        elif v.numel() != d:
            raise ValueError(f"{name}[{i}]: length {v.numel()} differs from {name}[0] length {d}")
    return [v.detach() for v in vs]


def _check_density(density: float) -> None:
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise ValueError(f"density={density!r} is out of range; valid: 0 < density <= 1")


def _check_band(lower: float, upper: float) -> None:
    if not (isinstance(lower, (int, float)) and isinstance(upper, (int, float))
            and 0.0 <= lower < upper <= 1.0):
        raise ValueError(f"lower={lower!r}, upper={upper!r} are out of range; "
                         "valid: 0 <= lower < upper <= 1")


def _check_p(p: float) -> None:
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"p={p!r} is out of range; valid: 0 <= p <= 1")


def _check_dare(p: float, then: str, density: float, seeds: Sequence[int] | None, T: int) -> list[int]:
    """Validate DARE arguments; return the per-task seeds (``0..T-1`` when ``None``)."""
    _check_p(p)
    if then not in _THEN:
        raise ValueError(f"then={then!r} is not supported; valid: {', '.join(_THEN)}")
    _check_density(density)
    if seeds is None:
        return list(range(T))
    seeds = [int(s) for s in seeds]
    if len(seeds) != T:
        raise ValueError(f"seeds: need one seed per task (T={T}), got {len(seeds)}")
    return seeds


def _check_layout(layout: Sequence[tuple[str, tuple[int, ...]]], d: int) -> list[tuple[tuple[int, ...], int]]:
    """Return ``[(shape, numel)]`` after checking the layout covers exactly ``d`` entries."""
    out, total = [], 0
    for item in layout:
        try:
            name, shape = item
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise ValueError(f"layout: expected (name, shape) pairs, got {item!r}") from None
        if any(s < 0 for s in shape):
            raise ValueError(f"layout: tensor {name!r} has a negative dimension in {shape}")
        n = math.prod(shape)
        out.append((shape, n))
        total += n
    if total != d:
        raise ValueError(f"layout: shapes cover {total} entries but the vectors have d={d}")
    return out


# --------------------------------------------------------------------------- helpers

def _trim_k(d: int, density: float) -> int:
    """Number of entries the TIES trim keeps (before ties): ``int(d * density)``."""
    return int(d * density)


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a Python float (exactly representable in float32)."""
    return float(np.float32(x))


def _below(t: float) -> float:
    """Largest float32 below ``t`` (> -inf); ``|x| > _below(t)`` iff ``|x| >= t`` for float32 ``x``."""
    return float(np.nextafter(np.float32(t), np.float32(-np.inf)))


def _bits(x: float) -> int:
    """int32 bit pattern of float32 ``x`` (monotone in ``x`` for ``x >= 0``)."""
    return int(np.array(x, dtype=np.float32).view(np.int32))


def _dare_keep_threshold(p: float) -> float:
    """An entry is kept iff its uniform draw ``u >= float32(p)``."""
    return _f32(p)


def _dare_scale(p: float) -> float:
    """Rescale factor of survivors, ``float32(1 / (1 - p))``; 1 when ``p == 1``."""
    return 1.0 if p >= 1.0 else _f32(1.0 / (1.0 - p))


def _spans(d: int, chunk: int | None = None) -> Iterator[tuple[int, int]]:
    step = max(1, chunk or CHUNK)
    for lo in range(0, d, step):
        yield lo, min(d, lo + step)


def _workers(T: int) -> int:
    """Threads for per-task work: one per core torch uses, at most one per task."""
    return max(1, min(T, torch.get_num_threads()))


def _map(pool: ThreadPoolExecutor | None, fn: Callable[[int], object], n: int) -> list:
    return [fn(i) for i in range(n)] if pool is None else list(pool.map(fn, range(n)))


def _pool(T: int) -> ThreadPoolExecutor | None:
    w = _workers(T)
    return ThreadPoolExecutor(max_workers=w, thread_name_prefix="merge") if w > 1 else None


# --------------------------------------------------------------------------- mean / sum

@torch.no_grad()
def merge_sum(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Task arithmetic sum ``sum_t tau_t`` (in task order).

    Parameters
    ----------
    vectors : sequence of 1-D float32 tensors, all of length d (T >= 1)

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    d = vs[0].numel()
    out = torch.empty(d, dtype=torch.float32)
    for lo, hi in _spans(d):
        o = out[lo:hi]
        if len(vs) == 1:
            o.copy_(vs[0][lo:hi])
            continue
        # Accumulate in a cache-sized slice: one read of each input, one write of out.
        torch.add(vs[0][lo:hi], vs[1][lo:hi], out=o)
        for v in vs[2:]:
            o.add_(v[lo:hi])
    return out


@torch.no_grad()
def merge_mean(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """ATM's merge, the mean ``(1/T) sum_t tau_t`` (task-order sum, then divide by T).

    Parameters
    ----------
    vectors : sequence of 1-D float32 tensors, all of length d (T >= 1)

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    d = vs[0].numel()
    out = torch.empty(d, dtype=torch.float32)
    for lo, hi in _spans(d):
        o = out[lo:hi]
        if len(vs) == 1:
            o.copy_(vs[0][lo:hi])
        else:
            torch.add(vs[0][lo:hi], vs[1][lo:hi], out=o)
            for v in vs[2:]:
                o.add_(v[lo:hi])
        o.div_(len(vs))
    return out


# --------------------------------------------------------------------------- TIES

class _Plain:
    """A task vector read as is."""

    def __init__(self, v: torch.Tensor):
        self.v = v

    def chunk(self, lo: int, hi: int, buf: torch.Tensor) -> torch.Tensor:
        return self.v[lo:hi]

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return self.v[idx]


class _Dropped:
    """A DARE-dropped task vector, ``x * scale`` where ``keep`` else 0, computed per chunk."""

    def __init__(self, v: torch.Tensor, keep: torch.Tensor, scale: float):
        self.v, self.keep, self.scale = v, keep, scale

    def chunk(self, lo: int, hi: int, buf: torch.Tensor) -> torch.Tensor:
        out = buf[:hi - lo]
        torch.mul(self.v[lo:hi], self.scale, out=out)
        return out.mul_(self.keep[lo:hi])

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.v[idx] * self.scale).mul_(self.keep[idx])


def _kth_largest_abs(src, d: int, k: int) -> float:
    """Exact k-th largest ``|x|`` of a source of length d, for ``1 <= k <= d``.

    A uniform sample brackets the answer in ``[lo, hi]``; one chunked scan counts the
    entries above ``hi`` and collects the nonzero ones inside the bracket, and a
    selection among those gives the answer. The scan works on the float32 bit
    patterns: for ``x >= 0`` their int32 order is the float order, so ``|x|`` is one
    ``& 0x7fffffff`` and the bracket test one unsigned compare (numpy, which releases
    the GIL, so tasks scan in parallel threads). If the bracket misses (about 5
    standard deviations of the sample rank on either side) the whole vector goes
    through ``kthvalue``; the result is the same either way.
    """
    if d <= SMALL:
        a = src.chunk(0, d, torch.empty(d)).abs()
        return float(torch.kthvalue(a, d - k + 1).values)
    gen = torch.Generator().manual_seed(0)
    s = min(SAMPLE, d)
    sample = src.take(torch.randint(0, d, (s,), generator=gen).sort().values).abs()
    sample = sample.sort(descending=True).values
    q = k / d
    mid, margin = q * s, 5.0 * math.sqrt(s * q * (1.0 - q)) + 2.0
    r_hi, r_lo = math.floor(mid - margin), math.ceil(mid + margin)   # 1-based ranks from the top
    hi = float(sample[r_hi - 1]) if r_hi >= 1 else math.inf
    lo = float(sample[r_lo - 1]) if r_lo <= s else 0.0
    # Zeros are never collected (lo_b >= 1, the smallest subnormal); when lo == 0 the
    # bracket's zeros are accounted for by counting below.
    lo_b, hi_b = max(_bits(lo), 1), _bits(hi)
    width = np.uint32(max(hi_b - lo_b, 0)) if hi_b >= lo_b else None
    c = min(CHUNK, d)
    buf, t_buf, m_buf = torch.empty(c), np.empty(c, np.int32), np.empty(c, np.bool_)
    above, band = 0, []
    for a, b in _spans(d):
        n = b - a
        x = src.chunk(a, b, buf).numpy().view(np.int32)
        t = np.bitwise_and(x, np.int32(0x7FFFFFFF), out=t_buf[:n])      # bits of |x|
        if hi < math.inf:
            above += int(np.count_nonzero(np.greater(t, hi_b, out=m_buf[:n])))
        if width is not None:
            np.subtract(t, np.int32(lo_b), out=t)                        # in bracket iff 0 <= t <= width
            band.append(t[np.less_equal(t.view(np.uint32), width, out=m_buf[:n])])
    vals = np.concatenate(band) if band else np.empty(0, np.int32)
    j = k - above                                                   # rank inside the bracket, from the top
    if 1 <= j <= vals.size:
        kth = int(np.partition(vals, vals.size - j)[vals.size - j]) + lo_b
        return float(np.int32(kth).view(np.float32))
    if j > vals.size and lo == 0.0:
        return 0.0                                                  # the rest of the bracket is zeros
    log.debug("TIES threshold bracket missed (k=%d, above=%d, band=%d); full kthvalue", k, above, vals.size)
    a = torch.cat([src.chunk(x, y, buf).abs() for x, y in _spans(d)])
    return float(torch.kthvalue(a, d - k + 1).values)


def _trim_lambda(src, d: int, density: float) -> float:
    """``lam`` with ``hardshrink(x, lam)`` == the TIES trim of the source."""
    k = _trim_k(d, density)
    if k == 0:
        return math.inf                                             # keep nothing
    if k == d:
        return 0.0                                                  # keep all (zeros stay 0)
    thr = _kth_largest_abs(src, d, k)
    return _below(thr) if thr > 0 else 0.0


@torch.no_grad()
def ties_threshold(vector: torch.Tensor, density: float = 0.2) -> float:
    """The TIES trim threshold: the k-th largest ``|x|``, ``k = int(d * density)``.

    Parameters
    ----------
    vector : 1-D float32 tensor
    density : float, default 0.2
        Fraction kept, in (0, 1].

    Returns
    -------
    float
        Equal to ``torch.kthvalue(|x|, d - k + 1)``; ``inf`` when ``k == 0``.
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_density(density)
    d = v.numel()
    k = _trim_k(d, density)
    if k == 0:
        return math.inf
    return _kth_largest_abs(_Plain(v), d, k)


@torch.no_grad()
def ties_trim_mask(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """Boolean mask of the TIES trim: ``|x| >= ties_threshold(x, density)``.

    Parameters
    ----------
    vector : 1-D float32 tensor
    density : float, default 0.2
        Fraction kept, in (0, 1]; entries tied with the threshold are kept, so the
        mask can hold more than ``int(d * density)`` entries; ``k == 0`` keeps none.
    """
    return vector.abs() >= ties_threshold(vector, density)


@torch.no_grad()
def ties_trim(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """The TIES trim of one vector: ``x`` where ``|x| >= threshold``, else 0.

    Parameters
    ----------
    vector : 1-D float32 tensor
    density : float, default 0.2
        Fraction kept, in (0, 1].

    Returns
    -------
    torch.Tensor
        New float32 tensor, same length.
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_density(density)
    lam = _trim_lambda(_Plain(v), v.numel(), density)
    return torch.hardshrink(v, lam)


def _ties_core(sources: list, d: int, density: float) -> torch.Tensor:
    """TIES over chunk sources (see :func:`merge_ties`)."""
    T = len(sources)
    c = max(1, min(CHUNK, d))
    # Thresholds of different tasks are independent: scan them in parallel threads.
    pool = _pool(T)
    try:
        lams = _map(pool, lambda t: _trim_lambda(sources[t], d, density), T)
    finally:
        if pool is not None:
            pool.shutdown()
    log.debug("TIES lambdas %s", lams)

    out = torch.empty(d, dtype=torch.float32)
    src_buf, tmp = torch.empty(c), torch.empty(c)
    # Pass 1: out = sum_t trim_t in task order; count the signs for the global majority.
    balance = 0
    for lo, hi in _spans(d, c):
        s, b = out[lo:hi], tmp[:hi - lo]
        torch.hardshrink(sources[0].chunk(lo, hi, src_buf), lams[0], out=s)
        for t in range(1, T):
            s.add_(torch.hardshrink(sources[t].chunk(lo, hi, src_buf), lams[t], out=b))
        # Chunks are < 2**24 entries, so the float32 sum of signs is exact.
        balance += int(torch.sign(s, out=b).sum())
    majority = float((balance > 0) - (balance < 0))

    # Pass 2: disjoint mean. With y = x * gamma, an entry agrees with gamma and
    # survives the trim iff y > lam (gamma = +-1; y = 0 when gamma = 0, never > lam >= 0),
    # so threshold(y, lam, 0) gives |x| of agreeing entries and 0 elsewhere. Summing
    # |x| and restoring the sign at the end is exact (rounding is sign-symmetric).
    gamma, num, cnt = torch.empty(c), torch.empty(c), torch.empty(c)
    for lo, hi in _spans(d, c):
        n = hi - lo
        s, g, nm, ct, y = out[lo:hi], gamma[:n], num[:n], cnt[:n], tmp[:n]
        torch.sign(s, out=g)
        if majority != 0.0:
            # sign(2*g + majority) replaces the zeros of g by the majority and keeps +-1
            # (three cheap ops; masked_fill with a mostly-false mask is far slower).
            g.mul_(2.0).add_(majority).sign_()
        nm.zero_()
        ct.zero_()
        for t in range(T):
            torch.mul(sources[t].chunk(lo, hi, src_buf), g, out=y)
            torch.nn.functional.threshold_(y, lams[t], 0.0)
            nm.add_(y)
            ct.add_(torch.sign(y, out=y))
        torch.div(nm, ct.clamp_(min=1.0), out=s).mul_(g)
    return out


@torch.no_grad()
def merge_ties(vectors: Sequence[torch.Tensor], density: float = 0.2) -> torch.Tensor:
    """TIES merge (Yadav et al.) with the project's semantics (docs/merging.md).

    1. Trim each task over its whole vector: keep ``|x| >= `` its k-th largest
       magnitude, ``k = int(d * density)`` (ties kept; ``k == 0`` keeps nothing).
    2. Elect ``gamma = sign(sum_t trimmed_t)``; where that is 0, use the sign of
       ``sum(gamma)`` over all coordinates; if that is 0 too the coordinate stays 0.
    3. Disjoint mean of the trimmed entries whose sign equals gamma (zeros never
       agree); a coordinate with none gets 0.

    Parameters
    ----------
    vectors : sequence of 1-D float32 tensors, all of length d (T >= 1)
    density : float, default 0.2
        Fraction kept by the trim, in (0, 1].

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    _check_density(density)
    return _ties_core([_Plain(v) for v in vs], vs[0].numel(), density)


# --------------------------------------------------------------------------- Breadcrumbs

def _band_limits(n: int, lower: float, upper: float) -> tuple[int, int]:
    """Rank limits ``(i_lo, i_hi) = (int(n * lower), int(n * upper))`` of a row of length n."""
    return int(n * lower), int(n * upper)


def _band_rows(x: np.ndarray, i_lo: int, i_hi: int, out: np.ndarray) -> None:
    """``out = x * keep`` for a [rows, n] float32 block, keep as in :func:`merge_breadcrumbs`.

    Works on the int32 bits of ``|x|`` (same order as the magnitudes). The two order
    statistics come from one ``np.partition`` at ``i_lo`` and a second one on the
    ``n - i_lo - 1`` entries above it, cheaper than a sort. numpy releases the GIL
    here, so several tasks run in parallel threads.
    """
    ab = np.bitwise_and(x.view(np.int32), np.int32(0x7FFFFFFF))
    part = np.partition(ab, i_lo, axis=-1)
    lo = part[:, i_lo:i_lo + 1]
    kk = i_hi - 2 - i_lo                    # rank of s[i_hi - 1] among the entries above s[i_lo]
    hi = lo if kk < 0 else np.partition(part[:, i_lo + 1:], kk, axis=-1)[:, kk:kk + 1]
    # lo <= |x| <= hi  iff  0 <= |x| - lo <= hi - lo, one unsigned compare.
    np.subtract(ab, lo, out=ab)
    keep = np.less_equal(ab.view(np.uint32), (hi - lo).view(np.uint32))
    np.multiply(x, keep, out=out)


@torch.no_grad()
def merge_breadcrumbs(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, tuple[int, ...]]],
                      lower: float = 0.85, upper: float = 0.993) -> torch.Tensor:
    """Breadcrumbs (Davari & Belilovsky): keep a magnitude band per row, then the mean.

    Each tensor of ``layout`` is cut into rows along its last dimension (a 1-D tensor
    is one row; a 0-dim tensor is kept whole). For a row of length ``n`` sorted by
    magnitude ascending into ``s``, with ``i_lo = int(n * lower)`` and
    ``i_hi = int(n * upper)``, an entry is kept iff ``s[i_lo] <= |x| <= s[i_hi - 1]``.
    Without ties that is exactly the ranks ``i_lo .. i_hi - 1`` (for n = 768 and the
    defaults: drop the 652 smallest and the 6 largest, keep 110); entries tied with
    either edge value are kept too; if ``i_hi <= i_lo`` the row keeps nothing. The
    result is the task-order sum of the masked vectors divided by T.

    Parameters
    ----------
    vectors : sequence of 1-D float32 tensors, all of length d (T >= 1)
    layout : sequence of (name, shape)
        The tensors in flatten order; their sizes must add up to d.
    lower : float, default 0.85
    upper : float, default 0.993
        Quantiles, ``0 <= lower < upper <= 1``.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    _check_band(lower, upper)
    shapes = _check_layout(layout, vs[0].numel())
    T = len(vs)
    out = torch.empty(vs[0].numel(), dtype=torch.float32)
    masked = torch.empty(T, max(1, CHUNK))
    pool = _pool(T)
    try:
        off = 0
        for shape, numel in shapes:
            if numel == 0:
                continue
            if len(shape) == 0:                       # 0-dim: kept whole
                out[off:off + 1] = merge_mean([v[off:off + 1] for v in vs])
                off += 1
                continue
            n = shape[-1]
            i_lo, i_hi = _band_limits(n, lower, upper)
            if i_hi <= i_lo:
                out[off:off + numel] = 0.0
                off += numel
                continue
            rows_per = max(1, CHUNK // n)
            for r0 in range(0, numel // n, rows_per):
                r1 = min(numel // n, r0 + rows_per)
                a, b = off + r0 * n, off + r1 * n
                m = masked[:, :b - a] if b - a <= masked.shape[1] else torch.empty(T, b - a)

                def mask_task(t: int, a=a, b=b, m=m, rows=r1 - r0) -> None:
                    x = vs[t][a:b].reshape(rows, n).numpy()
                    _band_rows(x, i_lo, i_hi, out=m[t].numpy().reshape(rows, n))

                _map(pool, mask_task, T)
                o = out[a:b]
                o.copy_(m[0])
                for t in range(1, T):
                    o.add_(m[t])
                o.div_(T)
            off += numel
    finally:
        if pool is not None:
            pool.shutdown()
    return out


# --------------------------------------------------------------------------- DARE

def _draw(gens: list[torch.Generator], n: int, U: torch.Tensor, pool: ThreadPoolExecutor | None) -> None:
    """Draw the next ``n`` uniforms of every task into ``U[t, :n]`` (tasks in parallel)."""
    def draw(t: int) -> None:
        torch.rand(n, generator=gens[t], out=U[t, :n])
    _map(pool, draw, len(gens))


@torch.no_grad()
def dare_drop(vector: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """DARE drop and rescale of one vector.

    The draw is ``u = torch.rand(d, generator=torch.Generator().manual_seed(seed))``
    (taken here in chunks, which gives the same stream); entry i is kept iff
    ``u[i] >= float32(p)`` and then multiplied by ``float32(1 / (1 - p))``. ``p == 0``
    returns a copy, ``p == 1`` returns zeros (no rescale).

    Parameters
    ----------
    vector : 1-D float32 tensor
    p : float
        Drop probability in [0, 1].
    seed : int
        Seed of the task's generator.
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_p(p)
    return merge_dare([v], p=p, then="mean", seeds=[seed])


@torch.no_grad()
def merge_dare(vectors: Sequence[torch.Tensor], p: float = 0.9, then: str = "mean",
               density: float = 0.2, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """DARE (Yu et al.): drop and rescale each task vector, then merge.

    Parameters
    ----------
    vectors : sequence of 1-D float32 tensors, all of length d (T >= 1)
    p : float, default 0.9
        Drop probability in [0, 1] (see :func:`dare_drop` for the exact mask).
    then : {"mean", "ties"}, default "mean"
        Merge of the dropped vectors.
    density : float, default 0.2
        TIES density when ``then == "ties"``.
    seeds : sequence of int, optional
        One generator seed per task; default ``0 .. T-1``.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    seeds = _check_dare(p, then, density, seeds, len(vs))
    T, d = len(vs), vs[0].numel()
    if p == 0.0:                                  # keeps everything, scale 1: no draw needed
        return merge_mean(vs) if then == "mean" else merge_ties(vs, density)
    if p == 1.0:                                  # drops everything
        return torch.zeros(d, dtype=torch.float32)
    keep_at, scale = _dare_keep_threshold(p), _dare_scale(p)
    keep_lam = _below(keep_at)                    # u > keep_lam  iff  u >= keep_at (> 0)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    c = max(1, min(CHUNK, d))
    U = torch.empty(T, c)
    pool = _pool(T)
    try:
        if then == "ties":
            # One byte per entry and task for the masks, so the three TIES passes see
            # the same drop without redrawing.
            keep = torch.empty(T, d, dtype=torch.bool)
            for lo, hi in _spans(d, c):
                _draw(gens, hi - lo, U, pool)
                torch.ge(U[:, :hi - lo], keep_at, out=keep[:, lo:hi])
            del U
        else:
            out = torch.empty(d, dtype=torch.float32)
            buf = torch.empty(c)
            for lo, hi in _spans(d, c):
                n = hi - lo
                _draw(gens, n, U, pool)
                o = out[lo:hi]
                for t in range(T):
                    # threshold+sign turns u into the 0/1 keep factor (u >= p > 0 when kept).
                    k = torch.nn.functional.threshold_(U[t, :n], keep_lam, 0.0).sign_()
                    xs = torch.mul(vs[t][lo:hi], scale, out=buf[:n])
                    if t == 0:
                        torch.mul(xs, k, out=o)
                    else:
                        o.addcmul_(xs, k)
                o.div_(T)
            return out
    finally:
        if pool is not None:
            pool.shutdown()
    return _ties_core([_Dropped(v, keep[t], scale) for t, v in enumerate(vs)], d, density)
