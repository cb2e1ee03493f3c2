"""``trimmed-mean``: per coordinate, drop the largest and smallest values, average the rest (FedTrimmedAvg)."""

from atm_fl.merge.robust import merge_trimmed_mean
from atm_fl.plugins import MergeMethod, Param

trimmed_mean = MergeMethod(
    "trimmed-mean", lambda vectors, ctx, beta: merge_trimmed_mean(vectors, beta=beta),
    (Param("beta", 0.2, "Fraction of the tasks trimmed at each end per coordinate (floor(beta T), at least one "
                        "value kept).", check=lambda x: 0.0 <= x < 0.5, expect="a number in [0, 0.5)"),),
    "Coordinate-wise trimmed mean: bounds what up to floor(beta T) sites can do to each coordinate. alpha as for "
    "mean.")
