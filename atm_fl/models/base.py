"""What a model family provides: a pretrained backbone, input encoding, and a frozen task head.

A family splits a classifier into a *shared backbone* (inputs -> features; this is
what ATM fine-tunes and merges) and a *task head* (features -> logits) that stays
with the task and is frozen. Frozen heads keep the task vector a pure backbone
quantity, as with CLIP's zero-shot heads in the paper; families without a text
tower use class prototypes of the pretrained features (see ``fit_prototype_head``).
Because a frozen head is a deterministic function of the pretrained weights, the
task data and the seed, it persists across rounds by being rebuilt identically
(cached per process), never by being sent.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
import torch
from torch import nn

from atm_fl.config import RunConfig
from atm_fl.tasks.base import TaskSplits

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class LinearHead(nn.Module):
    """logits = scale * (features @ weight.T) + bias; frozen after construction."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.scale * features @ self.weight.T
        return logits if self.bias is None else logits + self.bias


class PrototypeHead(nn.Module):
    """logits = scale * cos(features - center, prototype_c); frozen after construction.

    The offline analogue of CLIP's zero-shot head: one unit-norm embedding per class
    and a fixed logit scale, with no fitted weights that could overfit the train split.
    """

    def __init__(self, prototypes: torch.Tensor, center: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.register_buffer("prototypes", nn.functional.normalize(prototypes.detach().float(), dim=-1))
        self.register_buffer("center", center.detach().float().clone())
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(features.float() - self.center, dim=-1)
        return self.scale * z @ self.prototypes.T


def fit_prototype_head(backbone: nn.Module, train, num_classes: int, *, batch_size: int = 64,
                       scale: float = 10.0, device: str = "cpu") -> PrototypeHead:
    """Class-mean head on pretrained features: center, normalise, average per class.

    ``train`` is a split (``atm_fl.data``; in memory or streamed) or a plain ``Batch``.
    The features of every example are kept while the head is built (N x feature
    size floats); ``max-head-examples`` bounds N for large splits.
    Raises ``ValueError`` naming the classes with no training example.
    """
    from atm_fl.data import as_split

    train = as_split(train)
    feats = extract_features(backbone, train, batch_size, device)
    labels = train.labels.long()
    center = feats.mean(0)
    z = nn.functional.normalize(feats - center, dim=-1)
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        raise ValueError(f"no training example of class(es) {missing}: the head needs at least one per class; "
                         "raise max-train-examples (or max-head-examples) or fix the task's data")
    protos = torch.zeros(num_classes, z.shape[1]).index_add_(0, labels, z) / counts[:, None]
    head = PrototypeHead(protos, center, scale)
    acc = float((head(feats).argmax(1) == labels).float().mean())
    log.info("prototype head: %d classes, %d features, %d examples, train acc %.3f", num_classes, z.shape[1],
             len(labels), acc)
    return head


class ModelFamily(ABC):
    """A model family: subclasses set ``name`` and implement the abstract methods."""

    name: str = ""
    # Whether ``build_head`` reads the training examples (prototype heads); False lets a
    # client build the head without touching its data.
    head_reads_data: bool = True

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    @abstractmethod
    def build_backbone(self) -> nn.Module:
        """The pretrained backbone, ``forward(**inputs) -> features``, trainable params flagged."""

    @abstractmethod
    def encode(self, split, task: TaskSplits) -> Batch:
        """Turn a ``datasets.Dataset`` split into tensors; must include ``labels``.

        It is called on a whole split (data held in memory) and on one batch of rows at
        a time (streamed data, ``atm_fl.data``), so it must treat every example on its
        own: the same example gives the same tensor either way.
        """

    def build_head(self, backbone: nn.Module, task: TaskSplits, train) -> nn.Module:
        """The task's frozen head; default: class prototypes of pretrained features.

        ``train`` is the split the head is built from (``atm_fl.data``: in memory or streamed).
        """
        return fit_prototype_head(backbone, train, task.num_classes, batch_size=self.cfg.batch_size,
                                  device=self.device)

    @property
    def device(self) -> str:
        """The client device of run-config ``device`` ('auto' -> cuda when visible)."""
        from atm_fl.train import resolve_device  # atm_fl.train imports this module

        return resolve_device(self.cfg.device)

    def describe(self) -> dict:
        """Provenance for results and README: model name, source, licence."""
        return {"family": self.name}


def iterate(batch: Batch, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
    """Mini-batches of an encoded split, in ``order`` when given."""
    # Walk the whole of ``order``: with more than one epoch it is longer than the split.
    idx = order if order is not None else torch.arange(len(batch["labels"]))
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        yield {k: v[sel] for k, v in batch.items()}


def inputs_of(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def extract_features(backbone: nn.Module, data, batch_size: int, device: str = "cpu") -> torch.Tensor:
    """Features of every example of ``data`` (a split or a ``Batch``), in order, as float32 on the CPU."""
    from atm_fl.data import as_split

    backbone.to(device).eval()
    feats = [backbone(**{k: v.to(device) for k, v in inputs_of(b).items()}).float().cpu()
             for b in as_split(data).batches(batch_size)]
    return torch.cat(feats)


def label_tensor(split) -> torch.Tensor:
    """The ``label`` column of a ``datasets.Dataset`` as int64, read through Arrow (no per-row Python)."""
    col = split.select_columns(["label"]).with_format("arrow")[:]["label"]
    return torch.from_numpy(col.to_numpy().astype(np.int64))


def subset_indices(n: int, cap: int, seed: int) -> np.ndarray:
    """A seeded subset of ``cap`` indices out of ``n`` (all of them, shuffled, when cap is 0 or >= n)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    return np.sort(idx[:cap]) if 0 < cap < n else np.sort(idx)
