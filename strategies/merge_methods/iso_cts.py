"""``iso-cts``: isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025)."""

from atm_fl.merge import merge_iso_cts
from atm_fl.plugins import MergeMethod, Param
from strategies.merge_methods.tsv_m import CONV

iso_cts = MergeMethod(
    "iso-cts",
    lambda vectors, ctx, common, conv: merge_iso_cts(vectors, ctx.layout.entries, common=common, conv=conv),
    (Param("common", 0.8, "Share of each matrix's rank given to the common subspace of the sum (paper: 0.8); "
           "the rest is split equally among the tasks. 1 gives Iso-C.",
           check=lambda x: 0.0 <= x <= 1.0, expect="a number in [0, 1]"),
     CONV),
    "Iso-CTS: per matrix, the sum's top components plus each task's top components outside them, "
    "orthogonalised, flat spectrum; other tensors: mean. Scale of the sum; tune alpha.")
