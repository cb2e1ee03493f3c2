"""``breadcrumbs``: Model Breadcrumbs (Davari & Belilovsky): keep each row's magnitude band, then mean."""

from atm_fl.merge import merge_breadcrumbs
from atm_fl.plugins import MergeMethod, Param


def _band(params) -> str | None:
    # Checked before training: a band with lower >= upper keeps nothing.
    if params["lower"] >= params["upper"]:
        return f"lower ({params['lower']}) must be below upper ({params['upper']}), or no entry is kept"
    return None


breadcrumbs = MergeMethod(
    "breadcrumbs",
    lambda vectors, ctx, lower, upper: merge_breadcrumbs(vectors, ctx.layout.entries, lower=lower, upper=upper),
    (Param("lower", 0.85, "Lower magnitude quantile per row; smaller entries are dropped.",
           check=lambda x: 0.0 <= x < 1.0, expect="a number in [0, 1)"),
     Param("upper", 0.993, "Upper magnitude quantile per row; larger entries are dropped.",
           check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]")),
    "Model Breadcrumbs: keep each row's magnitude band (lower, upper], then mean.",
    check=_band)
