"""``scaled-mean``: an example atm-fl merge method, registered by entry point (docs/plugins.md).

m = scale * mean_t(limit(tau_t)), where ``limit`` either rescales each task vector to unit
L2 norm (``normalize=true``) or shrinks it to norm at most ``clip`` (``clip > 0``); with
the defaults it is the plain mean. ``scale=0.5`` with ``alpha=1`` gives the same update as
``mean`` with ``alpha=0.5``: the test of this package relies on that.

It imports only the public plugin API, ``atm_fl.plugins``, and torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from atm_fl.plugins import MergeContext, MergeMethod, Param

__all__ = ["scaled_mean"]


def _scaled_mean(vectors: Sequence[torch.Tensor], ctx: MergeContext, scale: float, clip: float,
                 normalize: bool) -> torch.Tensor:
    # The contract: never modify the vectors in place; return a new 1-D float32 vector.
    out = torch.zeros_like(vectors[0])
    for v in vectors:
        norm = float(torch.linalg.vector_norm(v))
        if normalize and norm > 0:
            factor = 1.0 / norm
        elif clip > 0 and norm > clip:
            factor = clip / norm
        else:
            factor = 1.0
        out.add_(v, alpha=factor)
    return out.mul_(scale / len(vectors))


def _one_limit(params: Mapping[str, Any]) -> str | None:
    # A cross-parameter check: runs (in `atm-fl run` and in the ServerApp) before any training.
    if params["normalize"] and params["clip"] > 0:
        return "normalize=true and clip > 0 both limit each vector's norm; set only one of them"
    return None


scaled_mean = MergeMethod(
    "scaled-mean",
    _scaled_mean,
    (Param("scale", 1.0, "Factor on the mean.", check=lambda x: 0.0 < x <= 10.0, expect="a number in (0, 10]"),
     Param("clip", 0.0, "Shrink each task vector to L2 norm <= clip first; 0 = off.",
           check=lambda x: x >= 0.0, expect="a number >= 0"),
     Param("normalize", False, "Rescale each task vector to unit L2 norm first.")),
    "Example plugin: scale * mean of the task vectors, optionally clipped or normalised first.",
    check=_one_limit,
)
