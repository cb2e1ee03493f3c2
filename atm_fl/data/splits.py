"""A task split as the fine-tune and evaluate loops read it: held in memory, or streamed per batch.

Both kinds give the loops the same interface: ``labels`` (int64, every example, in
order), ``num_examples`` and ``batches(batch_size, order)``. Given the same ``order``
they yield the same tensors: a streamed batch is the family's ``encode`` applied to
that batch's rows, and ``encode`` treats every example on its own (``ModelFamily.encode``).

* :class:`InMemorySplit`: the split encoded once into tensors (a ``dict``, so
  ``split["labels"]`` and ``split.items()`` work as on a plain ``Batch``).
* :class:`StreamingSplit`: a ``torch.utils.data.DataLoader`` over the rows of a
  ``datasets.Dataset`` (hub data, a site's folder / CSV / parquet, the offline tables).
  Each batch's rows are read, decoded and transformed when the batch is needed, in
  ``data-workers`` worker processes (0: in the client process). Only the rows' labels
  and an index mapping stay in memory, so the client's memory does not grow with the split.

Which one a split becomes is :func:`make_split`'s rule (docs/data.md, "Streaming").
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from atm_fl.models.base import Batch, iterate, label_tensor

log = logging.getLogger(__name__)


class InMemorySplit(dict):
    """A whole split encoded into tensors, keyed like a ``Batch`` (must include ``labels``)."""

    in_memory = True

    @property
    def labels(self) -> torch.Tensor:
        return self["labels"]

    @property
    def num_examples(self) -> int:
        return len(self["labels"])

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
        """Mini-batches in ``order`` (a 1-D index tensor, may repeat indices), else in split order."""
        return iterate(self, batch_size, order)


class _EncodedRows(Dataset):
    """``rows[indices]`` encoded as one batch; the DataLoader asks for whole batches of indices."""

    def __init__(self, rows, encode: Callable[..., Batch]):
        self.rows, self.encode = rows, encode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: list[int]) -> Batch:
        return self.encode(self.rows.select(indices))


def _whole_batch(batch: Batch) -> Batch:
    # The dataset returns finished batches; no collation (module-level so workers can pickle it).
    return batch


class StreamingSplit:
    """The rows of a ``datasets.Dataset``, encoded batch by batch through a ``DataLoader``.

    Parameters
    ----------
    rows : datasets.Dataset
        The split's examples, already subset (``max-train-examples`` / ``max-eval-examples``).
    encode : callable
        ``encode(rows) -> Batch``: the model family's per-example transform (decode,
        resize/normalise, tokenise), applied to one batch of rows.
    workers : int, default 0
        DataLoader worker processes (run-config ``data-workers``); 0 encodes in this process.
    pin_memory : bool, default False
        Page-locked batches, for faster copies to a CUDA device.
    """

    in_memory = False

    def __init__(self, rows, encode: Callable[..., Batch], *, workers: int = 0, pin_memory: bool = False):
        self.rows, self.encode = rows, encode
        self.workers, self.pin_memory = int(workers), bool(pin_memory)
        self.labels = label_tensor(rows)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "labels":
            return self.labels
        raise KeyError(f"{key!r}: a streamed split has no whole-split tensors, only 'labels'; read it with "
                       ".batches(), or hold it in memory by raising run-config key 'data-in-memory-mb'")

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
        """Mini-batches in ``order`` (a 1-D index tensor, may repeat indices), else in split order.

        The order is fixed here, in this process (the DataLoader's sampler is the list of
        batches), so worker processes change how fast batches come, never which.
        """
        idx = torch.arange(self.num_examples) if order is None else order
        plan = [idx[s:s + batch_size].tolist() for s in range(0, len(idx), batch_size)]
        # A generator of its own: a DataLoader otherwise draws its workers' base seed from torch's
        # global RNG, which fine-tuning reseeds per round for dropout; streamed and in-memory
        # data then leave that RNG alike. The transforms draw no random numbers.
        loader = DataLoader(_EncodedRows(self.rows, self.encode), sampler=plan, batch_size=None,
                            num_workers=self.workers, collate_fn=_whole_batch, pin_memory=self.pin_memory,
                            generator=torch.Generator())
        yield from loader


def as_split(data) -> InMemorySplit | StreamingSplit:
    """``data`` as a split: splits pass through, a plain ``Batch`` dict is held in memory."""
    if isinstance(data, (InMemorySplit, StreamingSplit)):
        return data
    if isinstance(data, dict) and "labels" in data:
        return InMemorySplit(data)
    raise TypeError(f"expected a split (atm_fl.data) or a Batch dict with 'labels'; got {type(data).__name__}")


def encoded_bytes(batch: Batch) -> int:
    return sum(v.element_size() * v.numel() for v in batch.values())


def make_split(rows, encode: Callable[..., Batch], *, in_memory_mb: float, workers: int = 0,
               pin_memory: bool = False, what: str = "split") -> InMemorySplit | StreamingSplit:
    """Hold ``rows`` in memory when their encoded tensors fit in ``in_memory_mb`` MiB, else stream them.

    The size is the first example's encoded bytes times the number of rows (every
    family encodes examples to one fixed shape). ``in_memory_mb = 0`` streams every split.

    Raises ``ValueError`` naming ``what`` when ``rows`` is empty.
    """
    n = len(rows)
    if n == 0:
        raise ValueError(f"{what}: no examples")
    size_mb = encoded_bytes(encode(rows.select([0]))) * n / 2**20
    if in_memory_mb > 0 and size_mb <= in_memory_mb:
        log.info("%s: %d examples, %.1f MiB encoded: held in memory", what, n, size_mb)
        return InMemorySplit(encode(rows))
    log.info("%s: %d examples, %.1f MiB if encoded (> data-in-memory-mb = %g): streamed, %d data worker(s)",
             what, n, size_mb, in_memory_mb, workers)
    return StreamingSplit(rows, encode, workers=workers, pin_memory=pin_memory)
