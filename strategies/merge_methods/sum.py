"""``sum``: the sum of the task vectors (task arithmetic, Ilharco et al.); tune alpha."""

from atm_fl.merge import merge_sum
from atm_fl.plugins import MergeMethod

sum_ = MergeMethod("sum", lambda vectors, ctx: merge_sum(vectors), (),
                   "Sum of the task vectors (task arithmetic); tune alpha. mean with alpha equals sum with alpha/T.")
