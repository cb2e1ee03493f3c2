"""``mean``: the average of the task vectors (ATM, eq. 7 of the paper)."""

from atm_fl.merge import merge_mean
from atm_fl.plugins import MergeMethod

mean = MergeMethod("mean", lambda vectors, ctx: merge_mean(vectors), (),
                   "Average of the task vectors (ATM, eq. 7). The paper steps with alpha 1; the run-config default is 4 (docs/merging.md).")
