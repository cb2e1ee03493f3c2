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


def check_task_vector(tv: dict[str, torch.Tensor], layout: Layout) -> str | None:
    """The reason ``tv`` cannot be merged, or None when it is well-formed and finite."""
    expected = dict(layout.entries)
    missing = [k for k in expected if k not in tv]
    extra = [k for k in tv if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s) e.g. {extra[0]!r}")
        return "; ".join(parts)
    for name, shape in layout.entries:
        t = tv[name]
        if tuple(t.shape) != tuple(shape):
            return f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}"
        if t.dtype not in (torch.float32, torch.float16):
            return f"tensor {name!r} has dtype {t.dtype}, expected float32 or float16"
        if not bool(torch.isfinite(t).all()):
            return f"tensor {name!r} has NaN or Inf entries"
    return None


def l2_norm(tv: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tv.values()))


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
