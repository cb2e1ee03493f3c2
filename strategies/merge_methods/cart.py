"""``cart``: centred task arithmetic with low-rank approximation (Choi et al., 2024), per weight matrix."""

from atm_fl.merge import merge_cart
from atm_fl.plugins import MergeMethod, Param
from strategies.merge_methods.tsv_m import CONV

cart = MergeMethod(
    "cart",
    lambda vectors, ctx, rank, lam, conv: merge_cart(vectors, ctx.layout.entries, rank=rank, lam=lam, conv=conv),
    (Param("rank", 0.12, "Fraction of each matrix's rank kept per centred task (authors' 8-task config: 0.12).",
           check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]"),
     Param("lam", 2.0, "Weight of the summed low-rank centred tasks (the authors' 'prior'; their config: 2.0)."),
     CONV),
    "CART: per matrix, the mean plus lam times the sum of each task's low-rank deviation from the mean; "
    "other tensors: mean. On the scale of the mean (alpha 1).")
