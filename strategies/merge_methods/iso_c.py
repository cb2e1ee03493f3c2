"""``iso-c``: isotropic merging in the common subspace (Marczak et al., ICML 2025), per weight matrix."""

from atm_fl.merge import merge_iso_c
from atm_fl.plugins import MergeMethod
from strategies.merge_methods.tsv_m import CONV

iso_c = MergeMethod(
    "iso-c",
    lambda vectors, ctx, conv: merge_iso_c(vectors, ctx.layout.entries, conv=conv),
    (CONV,),
    "Iso-C: per matrix, the summed task matrix with every singular value replaced by their mean; "
    "other tensors: mean. Matrices come out on the scale of the sum; tune alpha.")
