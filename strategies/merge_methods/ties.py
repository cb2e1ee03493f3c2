"""``ties``: TIES-merging (Yadav et al.): trim each task vector, elect signs, disjoint mean."""

from atm_fl.merge import merge_ties
from atm_fl.plugins import MergeMethod, Param

DENSITY = Param("density", 0.2, "Fraction of each task vector's entries kept by the TIES trim (paper: 0.15-0.2).",
                check=lambda x: 0.0 < x <= 1.0, expect="a number in (0, 1]")

ties = MergeMethod("ties", lambda vectors, ctx, density: merge_ties(vectors, density=density), (DENSITY,),
                   "TIES: trim per task over the whole vector, elect signs, disjoint mean.")
