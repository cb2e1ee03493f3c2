"""Which well-formed task vectors are too large to merge: three norm rules that also work for 2 tasks.

A vector reaches these rules only after ``strategies.replies`` found it well formed and
finite. Each rule compares its L2 norm with a yardstick the attacker does not control
on its own:

1. **the base** (``max-update-ratio``, any number of tasks, from round 1): refuse
   ``||tau|| > ratio * ||base||`` over the merged tensors. Fine-tuning moves a
   pretrained model by a few percent of its norm; a vector as large as the model
   itself is not an update. This is the only rule that holds in round 1 with 2 tasks,
   or when most of the round's vectors are outliers.
2. **the previous round** (``max-norm-ratio``, from round 2): refuse
   ``||tau|| > ratio * median of the norms accepted in the previous round``. A site
   cannot use the round's own median, which it may dominate, and a drift of at most
   ``ratio`` per round is allowed (norms shrink or grow slowly as training settles).
3. **this round's median** (``max-norm-ratio``, 3 or more vectors): refuse
   ``||tau|| > ratio * median``. With 2 vectors the median sits halfway to the outlier,
   so this rule needs 3.

What these rules cannot catch (docs/robustness.md): a vector within the bounds that
points the wrong way (a sign flip, a targeted nudge), a slow ramp that stays within
``ratio`` of the previous round, and a site that is large from round 1 while staying
under ``max-update-ratio``. Robust merges (``median``, ``trimmed-mean``) bound what
such vectors can do to the merge.
"""

from __future__ import annotations

import statistics


def norm_outliers(norms: dict[str, float], *, base_norm: float, max_update_ratio: float,
                  previous_median: float | None, max_norm_ratio: float) -> dict[str, str]:
    """Task -> reason for every vector one of the three rules refuses (a ratio of 0 disables its rules).

    Parameters
    ----------
    norms : dict of str to float
        L2 norm of each task's (well-formed) vector this round.
    base_norm : float
        L2 norm of the round's base over the merged tensors.
    max_update_ratio : float
        Rule 1's bound; 0 disables rule 1.
    previous_median : float or None
        Median norm of the vectors accepted in the previous round (None in the first).
    max_norm_ratio : float
        Rules 2 and 3's bound; 0 disables both.
    """
    out: dict[str, str] = {}
    if max_update_ratio > 0 and base_norm > 0:
        limit = max_update_ratio * base_norm
        for t, n in norms.items():
            if n > limit:
                out[t] = (f"update L2 norm {n:.4g} is {n / base_norm:.3g}x the base model's norm {base_norm:.4g} "
                          f"(limit max-update-ratio={max_update_ratio:g})")
    if max_norm_ratio > 0 and previous_median is not None and previous_median > 0:
        for t, n in norms.items():
            if t not in out and n > max_norm_ratio * previous_median:
                out[t] = (f"update L2 norm {n:.4g} is {n / previous_median:.1f}x the previous round's median "
                          f"{previous_median:.4g} (limit max-norm-ratio={max_norm_ratio:g})")
    if max_norm_ratio > 0 and len(norms) >= 3:
        median = statistics.median(norms.values())
        if median > 0:
            for t, n in norms.items():
                if t not in out and n > max_norm_ratio * median:
                    out[t] = (f"update L2 norm {n:.4g} is {n / median:.1f}x the round median {median:.4g} "
                              f"(limit max-norm-ratio={max_norm_ratio:g})")
    return out
