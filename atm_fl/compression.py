"""Client-side compression of task-vector uploads, and the server's checked decoding.

Encodings (run-config ``upload-compression``):

* ``none``: the task vector as float32 tensors, one per merged backbone tensor;
* ``fp16``: the same tensors in float16 (half the bytes; the server merges in float32);
* ``topk`` / ``ties-trim`` / ``dare``: the task vector flattened in layout order, then
  sparsified at the client; only the kept entries travel, as two arrays ``indices``
  (int32, strictly increasing) and ``values`` (float32 or float16, ``upload-values``):

  - ``topk`` keeps the ``ceil(density * d)`` largest magnitudes;
  - ``ties-trim`` keeps what TIES' trim step keeps at ``density`` (the same function
    the server's TIES uses, so ``ties`` on trimmed uploads equals ``ties`` on dense ones);
  - ``dare`` drops each entry with probability ``1 - density`` and rescales the kept
    ones by ``1 / density`` (seeded per run seed, round and task).

The server decodes a sparse upload into the dense flat vector the merge needs anyway
(one float32 vector per task, as for dense uploads), after checking it: integer indices
in range and strictly increasing, as many values as indices, finite values.
"""

from __future__ import annotations

import math

import torch

from atm_fl.merge import dare_drop, ties_trim_mask
from atm_fl.seeds import derive_seed
from atm_fl.task_vector import Layout, flatten

SPARSE = ("topk", "ties-trim", "dare")
ENCODINGS = ("none", "fp16", *SPARSE)


def sparsify(flat: torch.Tensor, method: str, density: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept (indices, values) of a flat float32 vector under ``method`` at ``density``."""
    if method == "topk":
        k = min(flat.numel(), max(1, math.ceil(density * flat.numel())))
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        return idx, flat[idx]
    if method == "ties-trim":
        idx = torch.nonzero(ties_trim_mask(flat, density)).flatten()
        return idx, flat[idx]
    if method == "dare":
        dropped = dare_drop(flat, 1.0 - density, seed)
        idx = torch.nonzero(dropped).flatten()
        return idx, dropped[idx]
    raise ValueError(f"unknown sparsifier {method!r}; valid: {', '.join(SPARSE)} (run-config 'upload-compression')")


def encode_upload(tv: dict[str, torch.Tensor], layout: Layout, method: str = "none", density: float = 0.1,
                  values: str = "fp32", seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """The arrays a client sends for task vector ``tv`` and the encoding name for the server.

    Parameters
    ----------
    tv : dict of str to torch.Tensor
        The task vector over ``layout``'s tensors (float32).
    layout : Layout
        Flatten order, shared with the server.
    method : str, default "none"
        One of ``ENCODINGS``.
    density : float, default 0.1
        Fraction kept by the sparsifiers.
    values : str, default "fp32"
        Value type of sparse uploads, "fp32" or "fp16".
    seed : int, default 0
        DARE's mask seed (derive it per run seed, round and task).
    """
    if method == "none":
        return tv, "dense"
    if method == "fp16":
        return {k: v.half() for k, v in tv.items()}, "dense"
    idx, vals = sparsify(flatten(tv, layout), method, density, seed)
    if layout.numel >= 2**31:
        raise ValueError(f"sparse uploads use int32 indices; {layout.numel} entries need int64")
    vals = vals.half() if values == "fp16" else vals.float()
    return {"indices": idx.to(torch.int32), "values": vals}, "sparse"


def upload_seed(run_seed: int, server_round: int, task: str) -> int:
    """DARE upload masks: distinct per round and task, repeatable for a run seed."""
    return derive_seed("upload", run_seed, server_round, task)


def decode_sparse(arrays: dict[str, torch.Tensor], layout: Layout) -> tuple[torch.Tensor | None, str | None]:
    """(dense flat float32 vector, None), or (None, reason) when the sparse upload is malformed."""
    extra = sorted(set(arrays) - {"indices", "values"})
    if extra or "indices" not in arrays or "values" not in arrays:
        return None, f"sparse upload needs exactly 'indices' and 'values', got {sorted(arrays)}"
    idx, vals = arrays["indices"], arrays["values"]
    if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1:
        return None, f"sparse indices must be a 1-D int32/int64 array, got {idx.dtype} {tuple(idx.shape)}"
    if vals.dtype not in (torch.float32, torch.float16) or tuple(vals.shape) != tuple(idx.shape):
        return None, (f"sparse values must be float32/float16 with one per index, got {vals.dtype} "
                      f"{tuple(vals.shape)} for {idx.numel()} indices")
    d = layout.numel
    if idx.numel():
        idx = idx.long()
        if int(idx.min()) < 0 or int(idx.max()) >= d:
            return None, f"sparse indices must lie in [0, {d}), got [{int(idx.min())}, {int(idx.max())}]"
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            return None, "sparse indices must be strictly increasing (no duplicates)"
    if not bool(torch.isfinite(vals).all()):
        return None, "sparse values have NaN or Inf entries"
    flat = torch.zeros(d, dtype=torch.float32)
    flat[idx.long()] = vals.float()
    return flat, None
