"""Task vectors: which tensors are merged, and the exact flatten/unflatten round-trip.

The rule (docs/merging.md): a task-vector entry is a floating-point *parameter* of the
shared backbone that fine-tuning trains (``requires_grad``). Task heads live outside
the backbone and are never sent; buffers (BatchNorm running statistics, which stay
frozen because BatchNorm runs in eval mode, and integer step counters) never are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn


def mergeable_keys(backbone: nn.Module) -> list[str]:
    """Names of the backbone tensors that form a task vector, in state-dict order."""
    return [n for n, p in backbone.named_parameters() if p.requires_grad and p.is_floating_point()]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the merged tensors, in flatten order."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor], keys: Sequence[str]) -> "Layout":
        return cls(tuple((k, tuple(tensors[k].shape)) for k in keys))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    @property
    def numel(self) -> int:
        return int(sum(int(np.prod(s)) for _, s in self.entries))


def task_vector(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """tau = finetuned - base over ``keys``, float32."""
    return {k: (finetuned[k].detach().float() - base[k].detach().float()).contiguous() for k in keys}


def flatten(tensors: Mapping[str, torch.Tensor], layout: Layout, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate the layout's tensors into one 1-D float32 tensor (one copy)."""
    if out is None:
        out = torch.empty(layout.numel, dtype=torch.float32)
    offset = 0
    for name, shape in layout.entries:
        t = tensors[name]
        n = t.numel()
        out[offset:offset + n].copy_(t.reshape(-1))
        offset += n
    return out


def _npy_view(data: bytes) -> np.ndarray:
    """Zero-copy view of the array in a ``.npy`` byte string (Flower's Array encoding)."""
    import io

    header = io.BytesIO(data)
    version = np.lib.format.read_magic(header)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(header)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not supported")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header.tell()).reshape(shape)


def record_views(record) -> dict[str, torch.Tensor]:
    """Read-only torch views of every array in a Flower ``ArrayRecord`` (no copy).

    ``record.to_torch_state_dict()`` copies each array out of the message bytes
    (``np.load``); a consumer that only reads them (``load_state_dict`` copies into the
    model anyway; a task vector subtracts) can use these views, which stay valid while
    the record lives. Writing to them is undefined: torch warns that the buffer is not
    writable, which is silenced here because nothing writes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(_npy_view(record[name].data)) for name in record}


def unflatten(flat: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Views of ``flat`` shaped as the layout's tensors (no copy)."""
    if flat.dim() != 1 or flat.numel() != layout.numel:
        raise ValueError(f"flat vector has shape {tuple(flat.shape)}; the layout needs ({layout.numel},)")
    out, offset = {}, 0
    for name, shape in layout.entries:
        n = int(np.prod(shape))
        out[name] = flat[offset:offset + n].view(shape)
        offset += n
    return out


def apply_update(base: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """base + alpha * update on the updated keys; every other tensor is carried over unchanged."""
    new = dict(base)
    for k, u in update.items():
        b = base[k]
        new[k] = (b.float() + alpha * u).to(b.dtype)
    return new
