"""``dare``: DARE (Yu et al.): seeded random drop with rescale, then mean or TIES."""

import numpy as np

from atm_fl.merge import merge_dare
from atm_fl.plugins import MergeMethod, Param
from strategies.merge_methods.ties import DENSITY


def _p_below_one(p: float) -> bool:
    # p = 1 drops everything (the model would not change); a p that rounds to 1.0 in
    # float32, the precision of the drop test, is the same thing.
    return 0.0 <= p < 1.0 and float(np.float32(p)) < 1.0


dare = MergeMethod(
    "dare",
    lambda vectors, ctx, p, then, density: merge_dare(vectors, p=p, then=then, density=density,
                                                      seeds=ctx.task_seeds()),
    (Param("p", 0.9, "Drop probability per entry; survivors are scaled by 1/(1-p).",
           check=_p_below_one, expect="a number in [0, 1) that stays below 1 in float32"),
     Param("then", "mean", "Merge after the drop: 'mean' (DARE-mean) or 'ties' (DARE-TIES).",
           choices=("mean", "ties")),
     DENSITY),
    "DARE: seeded random drop with rescale (per round and task), then mean or TIES.")
