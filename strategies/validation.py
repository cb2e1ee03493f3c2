"""Checks every task vector must pass before it reaches a merge.

A refused update is logged with its task and reason and counted in the results; the
round merges the remaining ones (or stops, see ``min-task-fraction``). Nothing here
repairs an update: a vector with a NaN is refused, not cleaned.
"""

from __future__ import annotations

import math
import statistics

import torch

from atm_fl.task_vector import Layout


def check_record(record, layout: Layout) -> str | None:
    """The reason a dense upload cannot be merged (missing or extra tensors, wrong shape or
    dtype), read from the Flower ``ArrayRecord``'s metadata before any array is decoded, or None.

    Finiteness is checked afterwards on the flat vector (``non_finite``).
    """
    expected = dict(layout.entries)
    keys = list(record.keys())
    missing = [k for k in expected if k not in keys]
    extra = [k for k in keys if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s) e.g. {extra[0]!r}")
        return "; ".join(parts)
    for name, shape in layout.entries:
        arr = record[name]
        if tuple(arr.shape) != tuple(shape):
            return f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}"
        if arr.dtype not in ("float32", "float16"):
            return f"tensor {name!r} has dtype {arr.dtype}, expected float32 or float16"
    return None


def non_finite(flat: torch.Tensor, layout: Layout) -> str | None:
    """The reason a flat task vector is refused for NaN/Inf entries (naming the first tensor), or None."""
    if bool(torch.isfinite(flat).all()):
        return None
    offset = 0
    for name, shape in layout.entries:
        n = math.prod(shape)
        if not bool(torch.isfinite(flat[offset:offset + n]).all()):
            return f"tensor {name!r} has NaN or Inf entries"
        offset += n
    return "NaN or Inf entries"


def norm_outliers(norms: dict[str, float], max_ratio: float) -> dict[str, str]:
    """Tasks whose update norm exceeds ``max_ratio`` x the round's median norm (0 disables).

    Needs at least 3 updates: with 2 the median is pulled halfway to the outlier.
    """
    if max_ratio <= 0 or len(norms) < 3:
        return {}
    median = statistics.median(norms.values())
    if median <= 0:
        return {}
    return {t: f"update L2 norm {n:.4g} is {n / median:.1f}x the round median {median:.4g} "
               f"(limit max-norm-ratio={max_ratio:g})"
            for t, n in norms.items() if n > max_ratio * median}
