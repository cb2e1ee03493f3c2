"""Merge operators on flattened task vectors (semantics: docs/merging.md).

The functions exported here are the fast, chunked implementations from
:mod:`atm_fl.merge.ops`; :mod:`atm_fl.merge.reference` holds the direct formulations
they are tested against (bit-identical results). The SVD-based merges (TSV-M, Iso-C,
Iso-CTS, CART) come from :mod:`atm_fl.merge.svd`, with their direct formulations in
:mod:`atm_fl.merge.svd_reference` (equal to float rounding, not bit for bit).
"""

from .ops import (
    dare_drop,
    merge_breadcrumbs,
    merge_dare,
    merge_mean,
    merge_sum,
    merge_ties,
    ties_threshold,
    ties_trim,
    ties_trim_mask,
)
from .svd import merge_cart, merge_iso_c, merge_iso_cts, merge_tsv

__all__ = [
    "merge_mean",
    "merge_sum",
    "merge_ties",
    "merge_breadcrumbs",
    "merge_dare",
    "dare_drop",
    "ties_trim_mask",
    "ties_trim",
    "ties_threshold",
    "merge_tsv",
    "merge_iso_c",
    "merge_iso_cts",
    "merge_cart",
]
