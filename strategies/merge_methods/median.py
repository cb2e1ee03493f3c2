"""``median``: coordinate-wise median of the task vectors (FedMedian on task vectors; Byzantine-robust)."""

from atm_fl.merge.robust import merge_median
from atm_fl.plugins import MergeMethod

median = MergeMethod("median", lambda vectors, ctx: merge_median(vectors), (),
                     "Coordinate-wise median: a minority of sites cannot move a coordinate outside the honest "
                     "values. alpha as for mean.")
