"""What a task is: a named classification problem with train/validation/test splits.

Every split is a ``datasets.Dataset`` with a ``label`` column (int class index) and
one input column:

* ``image``: an image (``PIL.Image`` or a uint8 numpy array, HxW or HxWx3), or
* ``text`` (and, for sentence-pair tasks, ``text_pair``).

Model families turn a split into tensors; loaders never preprocess for a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import datasets

log = logging.getLogger(__name__)

# task_vectors lineage: 10% of train, at most 5,000 examples, fixed seed.
VAL_FRACTION = 0.10
VAL_MAX = 5000


@dataclass(frozen=True)
class TaskSplits:
    """The three splits of one task, plus its class names."""

    name: str
    classes: tuple[str, ...]
    train: datasets.Dataset
    val: datasets.Dataset
    test: datasets.Dataset
    modality: str = "image"  # "image" | "text"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    Parameters
    ----------
    name : str
        Registry key, kebab-case (``"mnist"``, ``"cahn-hilliard"``).
    modality : str
        ``"image"`` or ``"text"``.
    load : callable
        ``load(data_dir: str | None) -> datasets.DatasetDict`` with ``"train"`` and
        ``"test"`` splits (``"validation"`` optional) and a ``ClassLabel`` or int
        ``label`` column. ``data_dir`` is the site's local copy, when given.
    classes : callable
        ``classes() -> tuple[str, ...]``, the class names in label order.
    source : str
        Where the data comes from (package, file, hub id).
    license : str
        The data licence as far as it is known.
    metrics : tuple[str, ...]
        Metrics reported on evaluation; ``"accuracy"`` always first.
    templates : tuple[str, ...]
        Prompt templates for zero-shot heads (``"a photo of a {}."``); optional.
    offline : bool
        True when the data ships with an installed package; False for hub tasks
        (``datasets.load_dataset`` downloads them on first use).
    num_classes : int or None
        The class count, for tasks whose ``classes()`` needs the data (hub tasks take
        their names from the downloaded data); used to check a site's local data
        without a download. None means ``len(classes())``.
    """

    name: str
    modality: str
    load: Callable[[str | None], datasets.DatasetDict]
    classes: Callable[[], tuple[str, ...]]
    source: str
    license: str
    metrics: tuple[str, ...] = ("accuracy",)
    templates: tuple[str, ...] = field(default=("a photo of a {}.",))
    offline: bool = True
    num_classes: int | None = None


def carve_validation(train: datasets.Dataset, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``train`` into (train, val): val is 10% of train, at most 5,000 rows, fixed seed."""
    n_val = min(VAL_MAX, max(1, int(round(len(train) * VAL_FRACTION))))
    if len(train) < 2:
        raise ValueError(f"a task needs at least 2 training examples to carve a validation split; got {len(train)}")
    parts = train.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
