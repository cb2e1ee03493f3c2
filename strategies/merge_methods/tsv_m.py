"""``tsv-m``: Task Singular Vectors merge (Gargiulo et al., CVPR 2025), per weight matrix."""

from atm_fl.merge import merge_tsv
from atm_fl.plugins import MergeMethod, Param

# Shared by the SVD-based methods (iso-c, iso-cts, cart import it).
CONV = Param("conv", "matrix", "Conv kernels [out, in, kh, kw]: 'matrix' (read as [out, in*kh*kw]) or 'mean' "
             "(the authors' code, which only decomposes 2-D tensors).", choices=("matrix", "mean"))

tsv_m = MergeMethod(
    "tsv-m",
    lambda vectors, ctx, share, conv: merge_tsv(vectors, ctx.layout.entries, share=share, conv=conv),
    (Param("share", 0.0, "Fraction of each matrix's rank kept per task; 0 means 1/T (the paper).",
           check=lambda x: 0.0 <= x <= 1.0, expect="a number in [0, 1]"),
     CONV),
    "TSV-M: per matrix, each task's top 1/T singular components, decorrelated by polar factors; "
    "other tensors: mean. Matrices come out near the scale of the sum: start at alpha 1, tune as for sum.")
