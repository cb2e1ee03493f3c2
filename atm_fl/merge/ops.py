"""Fast merge operators on flattened task vectors (CPU, chunked, exact).

Every operator takes ``T >= 1`` one-dimensional float32 CPU tensors of equal length
``d`` and returns a new float32 tensor of length ``d``; inputs are never modified. The
semantics are those of docs/merging.md; :mod:`atm_fl.merge.reference` spells them out
in the most direct way, and every function here returns exactly what its reference
twin returns (same float32 value in every coordinate; a zero may come back as -0.0).

How the speed is obtained (docs/performance.md, "Merge operators", has the numbers):

* Work is cut into slices of ``CHUNK`` entries (row blocks of about that size for
  Breadcrumbs) that worker threads take from a shared counter, so a slow thread never
  holds the others up. The per-slice work is numpy ufuncs with ``out=`` buffers (they
  release the GIL and run single-threaded, no OpenMP barrier per operation), on
  buffers that stay in cache. Peak extra memory is the output plus a few buffers per
  thread (plus the small TIES threshold band, see below).
* Every per-entry decision is exact integer arithmetic on float32 bit patterns: for
  ``x >= 0`` the int32 order of the bits is the float order, ``|x|`` is
  ``bits & 0x7fffffff``, and ``(c - a) >> 31`` (arithmetic shift) is an all-ones or
  all-zeros mask, so "keep x iff |x| >= t" is four integer ops and no branch.
* TIES: the k-th largest magnitude is found by sampling a bracket, one scan that
  counts the entries above it and collects the few inside it, and a selection among
  those; it equals ``kthvalue`` on the whole vector. The merge itself is then one pass
  that keeps the trimmed chunks of all tasks in cache, sums them, elects the sign and
  takes the disjoint mean; coordinates whose elected sign depends on the global
  majority (trimmed sum exactly 0 with nonzero entries, rare) are redone afterwards.
* Breadcrumbs: the two order statistics of each row come from ``np.partition``
  (linear time) on the magnitude bits, not a sort.
* DARE: the uniforms come from numpy's PCG64, which can jump ahead, so every slice
  draws its own part of each task's stream independently (see :func:`dare_drop`).
  DARE-TIES keeps the keep decisions as bits (d / 8 bytes per task) between its
  threshold pass and its merge pass instead of drawing twice.

Threads: ``THREADS`` if set, else ``torch.get_num_threads()``.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import threading
import time
from typing import Callable, Sequence

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

#: Entries per work item (256 KiB of float32); used rounded down to a multiple of 8.
#: Tests lower it so that short vectors cross many slice boundaries.
CHUNK = 1 << 16
#: Vectors up to this length get the TIES threshold by one selection over the whole vector.
SMALL = 1 << 18
#: Sample size used to bracket the TIES threshold on longer vectors.
SAMPLE = 1 << 16
#: Worker threads; ``None`` means ``torch.get_num_threads()``.
THREADS: int | None = None

_THEN = ("mean", "ties")
_ABS = np.int32(0x7FFFFFFF)
_SIGN = np.int32(-(1 << 31))            # 0x80000000 as int32
_INF_BITS = 0x7F800000


# --------------------------------------------------------------------------- validation

def _check_vectors(vectors: Sequence[torch.Tensor], name: str = "vectors") -> list[torch.Tensor]:
    """Return ``vectors`` as a list of detached contiguous tensors after checking
    T >= 1, 1-D float32 CPU tensors and equal lengths (finite values are the caller's job)."""
    if isinstance(vectors, torch.Tensor):
        raise ValueError(f"{name}: expected a sequence of 1-D tensors, got one tensor of shape "
                         f"{tuple(vectors.shape)}")
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
    return [v.detach().contiguous() for v in vs]


def _is_real(x: object) -> bool:
    """A real number (Python or numpy), not a bool and not NaN."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and x == x


def _check_density(density: float) -> None:
    if not (_is_real(density) and 0.0 < density <= 1.0):
        raise ValueError(f"density={density!r} is out of range; valid: 0 < density <= 1")


def _check_band(lower: float, upper: float) -> None:
    if not (_is_real(lower) and _is_real(upper) and 0.0 <= lower < upper <= 1.0):
        raise ValueError(f"lower={lower!r}, upper={upper!r} are out of range; "
                         "valid: 0 <= lower < upper <= 1")


def _check_p(p: float) -> None:
    if not (_is_real(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"p={p!r} is out of range; valid: 0 <= p <= 1")


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"{name}={seed!r} is not valid; valid: an int >= 0")
    return int(seed)


def _check_dare(p: float, then: str, density: float, seeds: Sequence[int] | None, T: int) -> list[int]:
    """Validate DARE arguments; return the per-task seeds (``0 .. T-1`` when ``None``)."""
    _check_p(p)
    if then not in _THEN:
        raise ValueError(f"then={then!r} is not supported; valid: {', '.join(_THEN)}")
    _check_density(density)
    if seeds is None:
        return list(range(T))
    seeds = list(seeds)
    if len(seeds) != T:
        raise ValueError(f"seeds: need one seed per task (T={T}), got {len(seeds)}")
    return [_check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]


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


def _dare_keep_threshold(p: float) -> float:
    """An entry is kept iff its uniform draw ``u >= float32(p)``."""
    return _f32(p)


def _dare_scale(p: float) -> float:
    """Rescale factor of survivors, ``float32(1 / (1 - p))``; 1 when ``p == 1``."""
    return 1.0 if p >= 1.0 else _f32(1.0 / (1.0 - p))


def _chunk() -> int:
    """Slice length: ``CHUNK`` rounded down to a multiple of 8 (DARE stores 8 bits a byte)."""
    return max(8, int(CHUNK) // 8 * 8)


def _threads() -> int:
    return max(1, int(THREADS) if THREADS else torch.get_num_threads())


def _parallel(n: int, fn: Callable[[int, dict], object]) -> list:
    """``[fn(i, scratch) for i in range(n)]`` on worker threads, results in order.

    Each worker has its own ``scratch`` dict (buffers it may reuse between items) and
    takes the next item from a shared counter, so the load balances itself.
    """
    w = min(_threads(), n)
    if w <= 1:
        scratch: dict = {}
        return [fn(i, scratch) for i in range(n)]
    results: list = [None] * n
    counter = itertools.count()
    errors: list[BaseException] = []

    def worker() -> None:
        scratch: dict = {}
        try:
            while not errors:
                i = next(counter)           # atomic under the GIL
                if i >= n:
                    return
                results[i] = fn(i, scratch)
        except BaseException as e:          # re-raised in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=worker, name=f"merge-{j}", daemon=True) for j in range(w)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def _buf(scratch: dict, key: str, n: int, dtype) -> np.ndarray:
    """A reusable scratch array of at least ``n`` entries, sliced to ``n``."""
    a = scratch.get(key)
    if a is None or a.shape[-1] < n or a.dtype != dtype:
        a = scratch[key] = np.empty(max(n, _chunk()), dtype)
    return a[:n]


def _buf2(scratch: dict, key: str, rows: int, n: int, dtype) -> np.ndarray:
    a = scratch.get(key)
    if a is None or a.shape[0] < rows or a.shape[1] < n or a.dtype != dtype:
        a = scratch[key] = np.empty((rows, max(n, _chunk())), dtype)
    return a[:rows, :n]


def _np(v: torch.Tensor) -> np.ndarray:
    return v.numpy()


def _bits_of(x: float) -> int:
    """int32 bit pattern of float32 ``x`` (monotone in ``x`` for ``x >= 0``)."""
    return int(np.array(x, dtype=np.float32).view(np.int32))


def _float_of(bits: int) -> float:
    return float(np.array(bits, dtype=np.int32).view(np.float32))


# --------------------------------------------------------------------------- mean / sum

def _task_sum_into(out: np.ndarray, xs: list[np.ndarray]) -> None:
    """``out = ((x0 + x1) + x2) + ...`` (task order, the reference's order)."""
    if len(xs) == 1:
        np.copyto(out, xs[0])
        return
    np.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        np.add(out, x, out=out)


def _mean_or_sum(vs: list[torch.Tensor], divide: bool) -> torch.Tensor:
    d, c = vs[0].numel(), _chunk()
    out = torch.empty(d, dtype=torch.float32)
    o, xs, T = _np(out), [_np(v) for v in vs], np.float32(len(vs))

    def item(i: int, scratch: dict) -> None:
        lo, hi = i * c, min(d, (i + 1) * c)
        s = o[lo:hi]
        _task_sum_into(s, [x[lo:hi] for x in xs])
        if divide:
            np.divide(s, T, out=s)

    _parallel(-(-d // c), item)
    return out


@torch.no_grad()
def merge_sum(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Task arithmetic sum, ``sum_t tau_t`` taken in task order.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    return _mean_or_sum(_check_vectors(vectors), divide=False)


@torch.no_grad()
def merge_mean(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """ATM's merge, the mean ``(1/T) sum_t tau_t`` (task-order sum, then divided by T).

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    return _mean_or_sum(_check_vectors(vectors), divide=True)


# --------------------------------------------------------------------------- sources

class _Plain:
    """A task vector read as is."""

    def __init__(self, v: torch.Tensor):
        self.x = _np(v)
        self.d = self.x.size

    def chunk(self, lo: int, hi: int, scratch: dict, key: str) -> np.ndarray:
        return self.x[lo:hi]

    def sample(self, idx: np.ndarray) -> np.ndarray:
        return np.abs(self.x[idx])


class _Dropped:
    """A DARE-dropped task vector (see :func:`dare_drop`), computed slice by slice.

    Entry i uses the i-th 32-bit word ``r`` of the task's PCG64 stream; numpy's
    ``random(dtype=float32)`` maps it to ``u = (r >> 8) * 2**-24``, so
    ``u >= float32(p)`` iff ``r >= ceil(float32(p) * 2**24) << 8``, one integer
    compare. Two words come from each 64-bit draw, low half first, so a slice starting
    at an even ``lo`` jumps a copy of the stream by ``lo / 2`` draws.

    With ``record=True`` the keep decisions are also stored as bits (``d / 8`` bytes)
    the first time each slice is drawn; after :meth:`freeze` later passes read them
    back instead of drawing again (DARE-TIES reads every slice twice).
    """

    def __init__(self, v: torch.Tensor, p: float, seed: int, record: bool = False):
        self.x = _np(v)
        self.d = self.x.size
        self.p = p
        self.scale = np.float32(_dare_scale(p))
        k24 = math.ceil(_dare_keep_threshold(p) * (1 << 24))      # keep iff (r >> 8) >= k24
        assert 0 <= k24 < (1 << 24), "p == 1 is handled by the caller"
        self.r_min = np.uint32(k24 << 8)
        self.state = np.random.PCG64(seed).state
        self.packed = np.empty((self.d + 7) // 8, np.uint8) if record else None
        self.frozen = False

    def freeze(self) -> None:
        """Every slice has been drawn once: read the stored bits from now on."""
        self.frozen = self.packed is not None

    def _keep(self, lo: int, hi: int, scratch: dict) -> np.ndarray:
        """Keep decisions (bool, or 0/1 uint8) of ``[lo, hi)``; ``lo`` is a multiple of 8."""
        n = hi - lo
        if self.frozen:
            return np.unpackbits(self.packed[lo // 8:(hi + 7) // 8], count=n)
        bg = scratch.get(("pcg", id(self)))
        if bg is None:
            bg = scratch[("pcg", id(self))] = np.random.PCG64(0)
        bg.state = self.state
        if lo:
            bg.advance(lo // 2)
        r = bg.random_raw((n + 1) // 2).view(np.uint32)[:n]
        keep = np.greater_equal(r, self.r_min, out=_buf(scratch, "keep", n, np.bool_))
        if self.packed is not None:
            self.packed[lo // 8:(hi + 7) // 8] = np.packbits(keep)
        return keep

    def chunk(self, lo: int, hi: int, scratch: dict, key: str) -> np.ndarray:
        out = _buf(scratch, key, hi - lo, np.float32)
        np.multiply(self.x[lo:hi], self.scale, out=out)
        np.multiply(out, self._keep(lo, hi, scratch), out=out)
        return out

    def sample(self, idx: np.ndarray) -> np.ndarray:
        # Only the distribution matters for the bracket (the scan is exact): survivors
        # are independent of the values, so an independent draw at the sampled
        # positions has the right distribution.
        keep = np.random.Generator(np.random.PCG64(1)).random(idx.size, dtype=np.float32) >= np.float32(self.p)
        return np.abs(self.x[idx] * self.scale) * keep


# --------------------------------------------------------------------------- TIES

def _sample_positions(d: int, s: int) -> np.ndarray:
    """``s`` sorted positions in ``[0, d)``, uniform with replacement, from a fixed seed.

    Only the speed of the TIES threshold search depends on them, never its result
    (tests replace this function with a deliberately bad sample to check that).
    """
    return np.sort(np.random.Generator(np.random.PCG64(0)).integers(0, d, s))


def _kth_bits_small(src, d: int, k: int) -> int:
    """Bits of the k-th largest ``|x|`` by one selection over the whole vector."""
    x = src.chunk(0, d, {}, "all")
    ab = np.bitwise_and(x.view(np.int32), _ABS)
    # Zeros first: selection is slow on many equal values, and DARE leaves mostly zeros.
    nz = np.compress(ab != 0, ab)
    if nz.size < k:
        return 0
    return int(np.partition(nz, nz.size - k)[nz.size - k])


def _bracket(src, d: int, k: int) -> tuple[int, int]:
    """Bits ``(lo_b, hi_b)`` that very likely bracket the k-th largest magnitude.

    From a uniform sample: the sample's order statistics about 5 standard deviations
    of the sampled rank on either side of ``k / d``. ``hi_b`` may be +inf's bits (no
    upper cut), ``lo_b`` is at least 1 (zeros are never collected).
    """
    s = min(SAMPLE, d)
    sample = np.sort(src.sample(_sample_positions(d, s)))[::-1]        # descending
    q = k / d
    mid, margin = q * s, 5.0 * math.sqrt(s * q * (1.0 - q)) + 2.0
    r_hi, r_lo = math.floor(mid - margin), math.ceil(mid + margin)   # 1-based ranks from the top
    hi_b = _bits_of(sample[r_hi - 1]) if r_hi >= 1 else _INF_BITS
    lo_b = _bits_of(sample[r_lo - 1]) if r_lo <= s else 0
    return max(lo_b, 1), hi_b


def _scan_bracket(x: np.ndarray, lo_b: int, hi_b: int, scratch: dict) -> tuple[int, np.ndarray]:
    """Count of ``|x|`` bits above ``hi_b`` and the bits in ``[lo_b, hi_b]`` (offset by lo_b)."""
    n = x.size
    t = np.bitwise_and(x.view(np.int32), _ABS, out=_buf(scratch, "scan_t", n, np.int32))
    m = _buf(scratch, "scan_m", n, np.bool_)
    above = int(np.count_nonzero(np.greater(t, np.int32(hi_b), out=m))) if hi_b < _INF_BITS else 0
    if hi_b < lo_b:
        return above, np.empty(0, np.int32)
    np.subtract(t, np.int32(lo_b), out=t)            # in bracket iff 0 <= t <= width (unsigned)
    np.less_equal(t.view(np.uint32), np.uint32(hi_b - lo_b), out=m)
    return above, np.compress(m, t)


def _thresholds(sources: list, d: int, density: float) -> list[int]:
    """Per source, ``thr`` bits such that the TIES trim keeps ``x`` iff ``bits(|x|) >= thr``.

    ``thr`` is the bits of the k-th largest ``|x|``, ``k = int(d * density)``; 0 keeps
    everything; ``2**31`` (above every bit pattern) keeps nothing (``k == 0``).
    """
    k = _trim_k(d, density)
    if k == 0:
        return [1 << 31] * len(sources)
    if k == d:
        return [0] * len(sources)
    if d <= SMALL:
        return [_kth_bits_small(s, d, k) for s in sources]
    t0 = time.perf_counter()
    brackets = [_bracket(s, d, k) for s in sources]
    c = _chunk()

    def item(i: int, scratch: dict) -> list[tuple[int, np.ndarray]]:
        lo, hi = i * c, min(d, (i + 1) * c)
        return [_scan_bracket(s.chunk(lo, hi, scratch, "src"), lo_b, hi_b, scratch)
                for s, (lo_b, hi_b) in zip(sources, brackets)]

    parts = _parallel(-(-d // c), item)
    out = []
    for t, (src, (lo_b, hi_b)) in enumerate(zip(sources, brackets)):
        above = sum(p[t][0] for p in parts)
        vals = np.concatenate([p[t][1] for p in parts])
        j = k - above                                   # rank inside the bracket, from the top
        if 1 <= j <= vals.size:
            out.append(int(np.partition(vals, vals.size - j)[vals.size - j]) + lo_b)
        elif j > vals.size and lo_b == 1:
            out.append(0)                               # the rest below the bracket are zeros
        else:
            log.debug("TIES threshold bracket missed (task %d: k=%d, above=%d, band=%d); "
                      "full selection", t, k, above, vals.size)
            out.append(_kth_bits_small(src, d, k))
    log.debug("TIES thresholds of %d tasks, d=%d: %.3f s", len(sources), d, time.perf_counter() - t0)
    return out


def _trim_into(x: np.ndarray, thr: int, out: np.ndarray) -> np.ndarray:
    """``out`` = bits of ``x`` where ``bits(|x|) >= thr``, else 0 (int32 view)."""
    xi = x.view(np.int32)
    np.bitwise_and(xi, _ABS, out=out)
    # (thr - 1 - |x|) < 0 iff |x| >= thr; thr - 1 >= -1 and |x| < 2**31: no overflow.
    np.subtract(np.int32(thr - 1), out, out=out)
    np.right_shift(out, np.int32(31), out=out)
    np.bitwise_and(out, xi, out=out)
    return out


def _ties_item(sources: list, thrs: list[int], lo: int, hi: int, out: np.ndarray, scratch: dict,
               majority: int | None) -> tuple[int, bool]:
    """TIES on ``[lo, hi)``: writes ``out[lo:hi]``; returns (sign balance, needs redo).

    ``majority`` None means "not known yet": coordinates whose trimmed sum is 0 take
    +1, and the item reports whether any such coordinate had a nonzero trimmed entry
    (then it is redone once the global majority is known).
    """
    T, n = len(sources), hi - lo
    tr = _buf2(scratch, "trim", T, n, np.int32)
    s = _buf(scratch, "sum", n, np.float32)
    for t, src in enumerate(sources):
        _trim_into(src.chunk(lo, hi, scratch, "src"), thrs[t], tr[t])
        if t == 1:
            np.add(tr[0].view(np.float32), tr[1].view(np.float32), out=s)
        elif t > 1:
            np.add(s, tr[t].view(np.float32), out=s)
    if T == 1:
        np.copyto(s, tr[0].view(np.float32))
    m = _buf(scratch, "mask", n, np.bool_)
    balance = int(np.count_nonzero(np.greater(s, 0, out=m))) - int(np.count_nonzero(np.less(s, 0, out=m)))

    # g: the elected sign as a sign bit (0 for +, 0x80000000 for -).
    si = s.view(np.int32)
    g = np.bitwise_and(si, _SIGN, out=_buf(scratch, "g", n, np.int32))
    z = None
    if majority is not None and majority != 1:
        # z = -1 where the trimmed sum is +-0 (its sign is 0), else 0.
        z = np.bitwise_and(si, _ABS, out=_buf(scratch, "z", n, np.int32))
        np.subtract(z, np.int32(1), out=z)
        np.right_shift(z, np.int32(31), out=z)
        if majority == -1:
            np.bitwise_or(g, np.bitwise_and(z, _SIGN), out=g)

    # Disjoint mean: y = trimmed bits with the elected sign flipped off. Read as a
    # float, y is +|x| where the entry is nonzero and agrees with the sign, and -|x| or
    # +-0 elsewhere, so max(y, 0) is what the entry adds to the sum of magnitudes.
    # (numpy's maximum is fast array-with-array, slow array-with-scalar: hence `zero`.)
    num = _buf(scratch, "num", n, np.float32)
    cnt = _buf(scratch, "cnt", n, np.uint8 if T < 256 else np.int32)
    y = _buf(scratch, "y", n, np.int32)
    yf = y.view(np.float32)
    zero = scratch.get("zero")
    if zero is None or zero.size < n:
        zero = scratch["zero"] = np.zeros(max(n, _chunk()), np.float32)
    zero = zero[:n]
    for t in range(T):
        np.bitwise_xor(tr[t], g, out=y)
        np.maximum(yf, zero, out=yf)
        np.greater(yf, 0, out=m)
        if t == 0:
            np.copyto(num, yf)
            np.copyto(cnt, m)
        else:
            np.add(num, yf, out=num)
            np.add(cnt, m.view(np.uint8), out=cnt, casting="unsafe")
    redo = False
    if majority is None:
        # Sum exactly 0 with some agreeing (positive) entry: the sign came from the guess.
        redo = bool(np.any(np.logical_and(np.equal(s, 0, out=m), num > 0)))
    cf = _buf(scratch, "cf", n, np.float32)
    np.copyto(cf, cnt, casting="unsafe")
    np.maximum(cf, 1.0, out=cf)
    o = out[lo:hi]
    np.divide(num, cf, out=o)                           # sums of same-sign values: exact as |.|
    oi = o.view(np.int32)
    np.bitwise_or(oi, g, out=oi)
    if majority == 0:
        np.bitwise_and(oi, np.invert(z, out=z), out=oi)   # no majority: those coordinates stay 0
    return balance, redo


def _ties_core(sources: list, d: int, density: float) -> torch.Tensor:
    """TIES over slice sources (see :func:`merge_ties`)."""
    thrs = _thresholds(sources, d, density)
    if 0 < _trim_k(d, density) < d:                 # the threshold pass read every slice
        for src in sources:
            if isinstance(src, _Dropped):
                src.freeze()
    out = torch.empty(d, dtype=torch.float32)
    o, c = _np(out), _chunk()
    t0 = time.perf_counter()
    res = _parallel(-(-d // c), lambda i, sc: _ties_item(sources, thrs, i * c, min(d, (i + 1) * c), o, sc, None))
    balance = sum(b for b, _ in res)
    majority = (balance > 0) - (balance < 0)
    redo = [i for i, (_, r) in enumerate(res) if r]
    if majority != 1 and redo:
        _parallel(len(redo), lambda j, sc: _ties_item(sources, thrs, redo[j] * c, min(d, (redo[j] + 1) * c),
                                                       o, sc, majority))
    log.debug("TIES merge of %d tasks, d=%d: %.3f s (majority %+d, %d slices redone)", len(sources), d,
              time.perf_counter() - t0, majority, len(redo) if majority != 1 else 0)
    return out


@torch.no_grad()
def ties_threshold(vector: torch.Tensor, density: float = 0.2) -> float:
    """The TIES trim threshold: the k-th largest ``|x|``, ``k = int(d * density)``.

    Parameters
    ----------
    vector : torch.Tensor
        One-dimensional float32 CPU tensor of length d.
    density : float, default 0.2
        Fraction kept, ``0 < density <= 1``.

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
    if k == d:                                          # the smallest magnitude
        return _float_of(int(np.bitwise_and(_np(v).view(np.int32), _ABS).min()))
    return _float_of(_thresholds([_Plain(v)], d, density)[0])


@torch.no_grad()
def ties_trim_mask(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """Boolean mask of the TIES trim: ``|x| >= ties_threshold(x, density)``.

    Parameters
    ----------
    vector : torch.Tensor
        One-dimensional float32 CPU tensor.
    density : float, default 0.2
        Fraction kept, ``0 < density <= 1``. Entries tied with the threshold are kept,
        so the mask can hold more than ``int(d * density)`` entries; ``k == 0`` keeps none.

    Returns
    -------
    torch.Tensor
        Boolean tensor, same length.
    """
    return vector.abs() >= ties_threshold(vector, density)


@torch.no_grad()
def ties_trim(vector: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """The TIES trim of one vector: ``x`` where ``|x| >= threshold``, else 0.

    Parameters
    ----------
    vector : torch.Tensor
        One-dimensional float32 CPU tensor.
    density : float, default 0.2
        Fraction kept, ``0 < density <= 1``.

    Returns
    -------
    torch.Tensor
        New float32 tensor, same length.
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_density(density)
    d, c = v.numel(), _chunk()
    (thr,) = _thresholds([_Plain(v)], d, density)
    out = torch.empty(d, dtype=torch.float32)
    o, x = _np(out), _np(v)
    _parallel(-(-d // c), lambda i, sc: _trim_into(x[i * c:(i + 1) * c], thr, o[i * c:(i + 1) * c].view(np.int32)))
    return out


@torch.no_grad()
def merge_ties(vectors: Sequence[torch.Tensor], density: float = 0.2) -> torch.Tensor:
    """TIES merge (Yadav et al.) with the project's semantics (docs/merging.md).

    1. Trim each task over its whole vector: keep ``|x| >=`` its k-th largest
       magnitude, ``k = int(d * density)`` (ties kept; ``k == 0`` keeps nothing).
    2. Elect ``gamma = sign(sum_t trimmed_t)`` (sum in task order); where that is 0,
       use the sign of ``sum(gamma)`` over all coordinates; if that is 0 too the
       coordinate stays 0.
    3. Disjoint mean of the trimmed entries whose sign equals gamma (zeros never
       agree); a coordinate with none gets 0.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    density : float, default 0.2
        Fraction kept by the trim, ``0 < density <= 1`` (the ATM paper used 0.15).

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


def _band_rows(x: np.ndarray, i_lo: int, i_hi: int, out: np.ndarray, scratch: dict) -> None:
    """``out = x`` where kept, 0 elsewhere, for a ``[rows, n]`` float32 block.

    Works on the int32 bits of ``|x|`` (same order as the magnitudes). The two order
    statistics come from one ``np.partition`` at ``i_lo`` and a second one on the
    ``n - i_lo - 1`` entries above it, cheaper than a sort.
    """
    rows, n = x.shape
    ab = _buf(scratch, "bc_ab", rows * n, np.int32).reshape(rows, n)
    np.bitwise_and(x.view(np.int32), _ABS, out=ab)
    part = np.partition(ab, i_lo, axis=-1)
    lo = part[:, i_lo:i_lo + 1]
    kk = i_hi - 2 - i_lo                    # rank of s[i_hi - 1] among the entries above s[i_lo]
    hi = lo if kk < 0 else np.partition(part[:, i_lo + 1:], kk, axis=-1)[:, kk:kk + 1]
    # lo <= |x| <= hi  iff  0 <= |x| - lo <= hi - lo, one unsigned compare.
    np.subtract(ab, lo, out=ab)
    keep = _buf(scratch, "bc_keep", rows * n, np.bool_).reshape(rows, n)
    np.less_equal(ab.view(np.uint32), (hi - lo).view(np.uint32), out=keep)
    np.multiply(x, keep, out=out)


@torch.no_grad()
def merge_breadcrumbs(vectors: Sequence[torch.Tensor], layout: Sequence[tuple[str, tuple[int, ...]]],
                      lower: float = 0.85, upper: float = 0.993) -> torch.Tensor:
    """Breadcrumbs (Davari & Belilovsky): keep a magnitude band per row, then the mean.

    Each tensor of ``layout`` is cut into rows along its last dimension: a 2-D weight
    ``[out, in]`` has ``out`` rows of ``in`` entries, a 1-D tensor (bias, LayerNorm
    weight, embedding vector) is a single row, and a 0-dim tensor is kept whole. For a
    row of length ``n`` sorted by magnitude ascending into ``s``, with
    ``i_lo = int(n * lower)`` and ``i_hi = int(n * upper)``, an entry is kept iff
    ``s[i_lo] <= |x| <= s[i_hi - 1]``. Without ties that is exactly the ranks
    ``i_lo .. i_hi - 1`` (for n = 768 and the defaults: drop the 652 smallest and the
    6 largest, keep 110, about 14%); entries tied with either edge value are kept too.
    If ``i_hi <= i_lo`` the row keeps nothing: with the defaults that is every row of
    6 or fewer entries. The result is the task-order sum of the masked vectors
    divided by T.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    layout : sequence of (str, tuple of int)
        ``(name, shape)`` of the tensors in flatten order; their sizes must add up to d.
    lower : float, default 0.85
        Lower quantile of each row's magnitudes; smaller entries are dropped.
    upper : float, default 0.993
        Upper quantile; larger entries are dropped. ``0 <= lower < upper <= 1``.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    _check_band(lower, upper)
    shapes = _check_layout(layout, vs[0].numel())
    T, d, c = len(vs), vs[0].numel(), _chunk()
    xs = [_np(v) for v in vs]
    out = torch.empty(d, dtype=torch.float32)
    o, Tf = _np(out), np.float32(T)

    # Work items: (offset, rows, n, i_lo, i_hi); rows * n entries, about CHUNK each.
    items: list[tuple[int, int, int, int, int]] = []
    off = 0
    for shape, numel in shapes:
        if numel == 0:
            continue
        if len(shape) == 0:
            items.append((off, 1, 1, -1, -1))                 # 0-dim: kept whole
        else:
            n = shape[-1]
            i_lo, i_hi = _band_limits(n, lower, upper)
            rows = numel // n
            per = max(1, c // n)
            for r0 in range(0, rows, per):
                items.append((off + r0 * n, min(per, rows - r0), n, i_lo, i_hi))
        off += numel

    def item(i: int, scratch: dict) -> None:
        a, rows, n, i_lo, i_hi = items[i]
        b = a + rows * n
        s = o[a:b]
        if i_lo < 0:
            _task_sum_into(s, [x[a:b] for x in xs])
        elif i_hi <= i_lo:
            s.fill(0.0)
            return
        else:
            m = _buf(scratch, "bc_m", rows * n, np.float32)
            for t, x in enumerate(xs):
                dst = s if t == 0 else m
                _band_rows(x[a:b].reshape(rows, n), i_lo, i_hi, dst.reshape(rows, n), scratch)
                if t > 0:
                    np.add(s, m, out=s)
        np.divide(s, Tf, out=s)

    t0 = time.perf_counter()
    _parallel(len(items), item)
    log.debug("Breadcrumbs of %d tasks, d=%d, %d items: %.3f s", T, d, len(items), time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- DARE

@torch.no_grad()
def dare_drop(vector: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """DARE drop and rescale of one vector.

    The uniforms are ``u = numpy.random.Generator(numpy.random.PCG64(seed)).random(d,
    dtype=numpy.float32)`` (drawn here slice by slice, jumping the stream, which gives
    the same numbers); entry i is kept iff ``u[i] >= float32(p)`` and then multiplied
    by ``float32(1 / (1 - p))``. ``p == 0`` returns a copy, ``p == 1`` zeros (no rescale).

    Parameters
    ----------
    vector : torch.Tensor
        One-dimensional float32 CPU tensor.
    p : float
        Drop probability, ``0 <= p <= 1``.
    seed : int
        Seed of the task's generator, ``>= 0``.

    Returns
    -------
    torch.Tensor
        New float32 tensor, same length.
    """
    (v,) = _check_vectors([vector], name="vector")
    _check_p(p)
    seed = _check_seed(seed)
    return merge_dare([v], p=p, then="mean", seeds=[seed])


@torch.no_grad()
def merge_dare(vectors: Sequence[torch.Tensor], p: float = 0.9, then: str = "mean",
               density: float = 0.2, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """DARE (Yu et al.): drop and rescale each task vector, then merge.

    Parameters
    ----------
    vectors : sequence of torch.Tensor
        T >= 1 one-dimensional float32 CPU tensors of equal length d.
    p : float, default 0.9
        Drop probability, ``0 <= p <= 1`` (see :func:`dare_drop` for the exact mask).
    then : {"mean", "ties"}, default "mean"
        Merge of the dropped vectors: DARE-mean or DARE-TIES.
    density : float, default 0.2
        TIES density when ``then == "ties"``, ``0 < density <= 1``.
    seeds : sequence of int, optional
        One generator seed (int >= 0) per task; default ``0 .. T-1``.

    Returns
    -------
    torch.Tensor
        New float32 tensor of length d.
    """
    vs = _check_vectors(vectors)
    seeds = _check_dare(p, then, density, seeds, len(vs))
    T, d, c = len(vs), vs[0].numel(), _chunk()
    if p == 0.0:                                  # keeps everything, scale 1: no draw needed
        return merge_mean(vs) if then == "mean" else merge_ties(vs, density)
    if p == 1.0:                                  # drops everything
        return torch.zeros(d, dtype=torch.float32)
    sources = [_Dropped(v, p, s, record=then == "ties") for v, s in zip(vs, seeds)]
    if then == "ties":
        return _ties_core(sources, d, density)
    out = torch.empty(d, dtype=torch.float32)
    o, Tf = _np(out), np.float32(T)

    def item(i: int, scratch: dict) -> None:
        lo, hi = i * c, min(d, (i + 1) * c)
        s = o[lo:hi]
        for t, src in enumerate(sources):
            x = src.chunk(lo, hi, scratch, "src")
            if t == 0:
                np.copyto(s, x)
            else:
                np.add(s, x, out=s)
        np.divide(s, Tf, out=s)

    t0 = time.perf_counter()
    _parallel(-(-d // c), item)
    log.debug("DARE-mean of %d tasks, d=%d: %.3f s", T, d, time.perf_counter() - t0)
    return out
