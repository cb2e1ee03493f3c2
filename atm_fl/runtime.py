"""One task's working set on a client: the backbone to fine-tune, the frozen head, the data pipelines.

A client process holds **at most one task's working set at a time** (``get_task_runtime``).
In simulation a Ray actor serves many messages, and Flower hands each message to
whichever actor is free, so an actor serves different tasks over the rounds; keeping
every task it has seen would let one actor hold several tasks' models and data. So
a request for another task evicts the current one first (docs/data.md, "Client memory").
What survives a task switch is small and listed in ``process_caches()``: the task's
frozen head (classes x features floats; rebuilding a prototype head costs a forward pass
over the training subset), and handles to the task's Arrow data (memory-mapped files or
the offline loaders' tables, no decoded examples).

Splits are built on first use (an evaluate-only message never reads the training data)
and are held in memory or streamed per batch by ``atm_fl.data.make_split``'s rule.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import time
import weakref
from collections import OrderedDict

import numpy as np
import torch

from atm_fl.config import RunConfig
from atm_fl.data import make_split
from atm_fl.data.splits import InMemorySplit
from atm_fl.models import get_family
from atm_fl.models.base import PrototypeHead, extract_features, label_tensor, subset_indices
from atm_fl.seeds import derive_seed
from atm_fl.task_vector import mergeable_keys, task_vector
from atm_fl.tasks import get_task, load_task
from atm_fl.train import FinetuneSettings, evaluate, finetune

log = logging.getLogger(__name__)

# Keys that shape a task's frozen head (what it is built from); a cached head is reused
# only when they all match.
_HEAD_KEYS = ("model-family", "model-name", "model-pretrained", "image-size", "max-seq-length",
              "max-train-examples", "max-head-examples", "train-split", "seed", "device")
# Keys that shape the runtime's data or model; everything else may change between runs
# that share a process (sweeps) without rebuilding.
_CACHE_KEYS = _HEAD_KEYS + ("max-eval-examples", "data-in-memory-mb", "data-workers", "head-center",
                             "head-center-examples")
# Seed salts of the subsets, so each split's subset is drawn independently.
_SALT = {"train": 1, "val": 2, "test": 3, "head": 4, "center": 5}
HEAD_CACHE_SIZE = 32
SPLITS_CACHE_SIZE = 8


@functools.lru_cache(maxsize=SPLITS_CACHE_SIZE)
def task_splits(task_name: str, data_dir: str | None, seed: int):
    """``load_task`` cached per process: the splits are handles to Arrow data, not decoded examples."""
    return load_task(task_name, data_dir=data_dir, seed=seed)


def balanced_subset(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """``cap`` indices (sorted), dealt over the classes in turn from a seeded shuffle.

    Every class present gets ``cap // classes`` examples or all it has, so a prototype
    head built from the subset sees each class whenever ``cap`` >= the number of classes.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    ranked = labels[order]
    # Rank of each shuffled example within its class: 0 for the first of its class, 1 for the next...
    rank = np.empty(len(order), dtype=np.int64)
    for c in np.unique(ranked):
        where = np.flatnonzero(ranked == c)
        rank[where] = np.arange(len(where))
    take = order[np.lexsort((np.arange(len(order)), rank))[:cap]]
    return np.sort(take)


_HEADS: "OrderedDict[tuple, torch.nn.Module]" = OrderedDict()
# head-center = site: (the head's center, the pretrained mean features of its center subset) per
# head and subset size, so a runtime rebuilt on a task switch skips that forward pass.
_CENTER_ORIGINS: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_LIVE: "weakref.WeakSet[TaskRuntime]" = weakref.WeakSet()


class TaskRuntime:
    """Backbone, frozen head and splits of one task under one run-config.

    ``train``, ``val`` and ``test`` are ``atm_fl.data`` splits (``labels``,
    ``num_examples``, ``batches()``; in memory or streamed), built on first use.
    """

    def __init__(self, cfg: RunConfig, task_name: str, data_dir: str | None = None):
        t0 = time.perf_counter()
        self.cfg = cfg
        self.name = task_name
        self.data_dir = data_dir
        self.family = get_family(cfg)
        self.splits = task_splits(task_name, data_dir, cfg.seed)
        self.metric_names = get_task(task_name).metrics
        self.settings = FinetuneSettings.from_config(cfg)
        if self.settings.device == "cpu":
            # Same seed, same results on the CPU (tests/test_determinism.py). On CUDA some
            # kernels stay non-deterministic; warn_only keeps such runs going.
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._data: dict[str, object] = {}
        self._centered_on: dict | None = None  # the state the head's center was last estimated on
        self._center_split = None  # head-center = site: the examples the center is estimated on
        self._center_origin: tuple[torch.Tensor, torch.Tensor] | None = None  # (head's center, their pretrained mean)
        self.backbone = self.family.build_backbone()
        self.keys = mergeable_keys(self.backbone)
        self.head = self._head()
        if self.recenters:
            # The cached head is shared with other runtimes of the process: re-centre a copy.
            self.head = copy.deepcopy(self.head)
            # The backbone is still the pretrained one: the center subset's mean features now are
            # the reference its later means are compared with.
            key = (self.name, self.data_dir, self.cfg.values.get("head-center-examples", 0)) + \
                tuple(self.cfg.values[k] for k in _HEAD_KEYS)
            if key not in _CENTER_ORIGINS:
                _CENTER_ORIGINS[key] = (self.head.center.clone(), self._center_features_mean(self.backbone))
                while len(_CENTER_ORIGINS) > HEAD_CACHE_SIZE:
                    _CENTER_ORIGINS.popitem(last=False)
            self._center_origin = _CENTER_ORIGINS[key]
        _LIVE.add(self)
        log.info("task %s ready in %.1fs", task_name, time.perf_counter() - t0)

    # ----------------------------------------------------------------------------- data
    def _rows(self, which: str):
        """The seeded subset of rows of split ``which`` ('train' is the fine-tuning split)."""
        if which == "train":
            split = self.splits.val if self.cfg.train_split == "val" else self.splits.train
            cap = self.cfg.max_train_examples
        else:
            split, cap = getattr(self.splits, which), self.cfg.max_eval_examples
        return split.select(subset_indices(len(split), cap, seed=self.cfg.seed * 1000 + _SALT[which]))

    def _make(self, rows, what: str):
        return make_split(rows, functools.partial(self.family.encode, task=self.splits),
                          in_memory_mb=self.cfg.data_in_memory_mb, workers=self.cfg.data_workers,
                          pin_memory=str(self.settings.device).startswith("cuda"), what=f"{self.name} {what}")

    def split_data(self, which: str):
        """Split ``which`` ('train', 'val' or 'test'), built on first use."""
        if which not in self._data:
            if which not in _SALT or which in ("head", "center"):
                raise ValueError(f"unknown split {which!r}; use 'train', 'val' or 'test'")
            self._data[which] = self._make(self._rows(which), which)
        return self._data[which]

    train = property(lambda self: self.split_data("train"), lambda self, v: self._data.__setitem__("train", v))
    val = property(lambda self: self.split_data("val"), lambda self, v: self._data.__setitem__("val", v))
    test = property(lambda self: self.split_data("test"), lambda self, v: self._data.__setitem__("test", v))

    def _head(self) -> torch.nn.Module:
        """The task's frozen head, from the process's head cache or built from the pretrained backbone."""
        key = (self.name, self.data_dir) + tuple(self.cfg.values[k] for k in _HEAD_KEYS)
        if key in _HEADS:
            _HEADS.move_to_end(key)
            return _HEADS[key]
        data = self._head_data() if self.family.head_reads_data else None
        # The head comes from the *pretrained* backbone, so every process builds the same one.
        head = self.family.build_head(self.backbone, self.splits, data)
        for p in head.parameters():
            p.requires_grad_(False)
        _HEADS[key] = head
        while len(_HEADS) > HEAD_CACHE_SIZE:
            _HEADS.popitem(last=False)
        return head

    def _head_data(self):
        """The training subset, or its seeded, class-balanced ``max-head-examples`` subset, for a head from examples."""
        cap = self.cfg.max_head_examples
        rows = self._rows("train")
        if 0 < cap < len(rows):
            idx = balanced_subset(label_tensor(rows).numpy(), cap, seed=self.cfg.seed * 1000 + _SALT["head"])
            return self._make(rows.select(idx), "head examples")
        return self.train

    def _center_data(self):
        """The examples a re-estimated head center is the features' mean of (``head-center-examples``).

        A seeded uniform subset of the head examples, the same every round (uniform, not
        class-balanced: the head's own center is the mean over the head examples' natural class
        mix, and this estimates the same mean); all of them when the cap is 0 or not below their number.
        """
        if self._center_split is None:
            cap = int(self.cfg.values.get("head-center-examples", 0))
            rows = self._rows("train")
            if 0 < self.cfg.max_head_examples < len(rows):
                rows = rows.select(balanced_subset(label_tensor(rows).numpy(), self.cfg.max_head_examples,
                                                   seed=self.cfg.seed * 1000 + _SALT["head"]))
            if 0 < cap < len(rows):
                idx = subset_indices(len(rows), cap, seed=self.cfg.seed * 1000 + _SALT["center"])
                head = self._head_data()
                if isinstance(head, InMemorySplit):
                    # Already encoded (the common case): index it rather than decode the rows again.
                    self._center_split = InMemorySplit({k: v[torch.as_tensor(idx)] for k, v in head.items()})
                else:
                    self._center_split = self._make(rows.select(idx), "head-center examples")
            else:
                self._center_split = self._head_data()
        return self._center_split

    @property
    def recenters(self) -> bool:
        """Whether this task's head re-estimates its center from the current backbone (``head-center = site``)."""
        return self.cfg.values.get("head-center", "pretrained") == "site" and isinstance(self.head, PrototypeHead)

    def _recenter_on(self, state: dict[str, torch.Tensor]) -> None:
        """Re-centre for ``state`` (just loaded), unless the center was last estimated on this very object.

        A client that scores the received base before fine-tuning it (evaluate-in-train) passes
        the same object twice; the second estimate would repeat the first. The reference is
        dropped after fine-tuning, so no broadcast model outlives its round here.
        """
        if self._centered_on is state:
            return
        self.recenter()
        self._centered_on = state if self.recenters else None

    def _center_features_mean(self, backbone: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return extract_features(backbone, self._center_data(), self.cfg.batch_size * 2,
                                    self.settings.device).double().mean(0)

    def recenter(self, backbone: torch.nn.Module | None = None) -> None:
        """Move the prototype head's center with the features' mean under the loaded backbone.

        A frozen center drifts away from the features' mean as the backbone moves, which biases
        every example towards the same class (docs/merging.md, "The head's center"). The new
        center is c0 + (mean of f over S now − mean of f over S pretrained): c0 is the head's own
        center and S the ``head-center-examples`` subset. The difference of two means over the same
        examples is a far less noisy estimate of the drift than a fresh mean over a small S, and it
        is zero for the pretrained model, which keeps its head exactly. The prototypes stay as
        built. A no-op unless ``head-center = site``. ``backbone``: read the features from another
        backbone (joint training shares one).
        """
        self._centered_on = None
        if not self.recenters:
            return
        c0, origin = self._center_origin
        drift = self._center_features_mean(backbone or self.backbone) - origin
        self.head.center.copy_((c0.double() + drift.to(c0.device)).float())

    @functools.cached_property
    def pretrained(self) -> dict[str, torch.Tensor]:
        """The pretrained backbone's state (rebuilt on first use: no resident copy during normal rounds)."""
        return {k: v.detach() for k, v in self.family.build_backbone().state_dict().items()}

    # ----------------------------------------------------------------------------- rounds
    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Load a broadcast backbone state; every key must match (no silent partial load)."""
        self.backbone.load_state_dict(state, strict=True)

    def train_round(self, base: dict[str, torch.Tensor], server_round: int,
                    optimizer_state: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """Fine-tune from ``base`` and return (task vector over mergeable keys, metrics).

        ``optimizer_state``: the client's carried optimiser state (``atm_fl.train.finetune``).
        """
        # load_state_dict copies into the backbone's own parameters, so ``base`` stays
        # the round's starting point without another copy.
        self.load(base)
        self._recenter_on(base)
        # Whatever draws from torch's global RNG during fine-tuning (dropout, stochastic
        # depth) starts from (seed, task, global round): a round gives the same update in
        # any process, after any history, and after a resume.
        torch.manual_seed(derive_seed("finetune", self.cfg.seed, self.name, server_round))
        metrics = finetune(self.backbone, self.head, self.train, self.settings, round_index=server_round,
                           seed=self.cfg.seed, progress_label=f"[{self.name} r{server_round}]",
                           optimizer_state=optimizer_state)
        tv = task_vector({k: v.cpu() for k, v in self.backbone.state_dict().items()}, base, self.keys)
        metrics["update-norm"] = float(torch.sqrt(sum((t.double() ** 2).sum() for t in tv.values())))
        self._centered_on = None
        return tv, metrics

    def evaluate(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, float]:
        self.load(state)
        self._recenter_on(state)
        return evaluate(self.backbone, self.head, self.split_data(split), self.cfg.batch_size * 2,
                        self.settings.device, self.metric_names, precision=self.settings.precision)


_RUNTIMES: dict[tuple, TaskRuntime] = {}


def get_task_runtime(cfg: RunConfig, task_name: str, data_dir: str | None = None) -> TaskRuntime:
    """The process's TaskRuntime for ``task_name`` under ``cfg``; another task's is evicted first.

    A caller that keeps a reference to an evicted runtime keeps it alive (in-process
    experiments that hold every task do so on purpose); the client never does.
    """
    key = (task_name, data_dir) + tuple(cfg.values[k] for k in _CACHE_KEYS)
    rt = _RUNTIMES.get(key)
    if rt is None:
        release_runtimes()
        rt = _RUNTIMES[key] = TaskRuntime(cfg, task_name, data_dir)
    elif rt.cfg != cfg:
        # Same data/model, other training knobs (e.g. lr in a sweep): refresh them.
        rt.cfg = cfg
        rt.settings = FinetuneSettings.from_config(cfg)
    return rt


def release_runtimes() -> None:
    """Drop the cached runtime (model, data pipelines) and return its memory before another is built."""
    if not _RUNTIMES:
        return
    log.info("releasing task runtime(s) %s", ", ".join(k[0] for k in _RUNTIMES))
    _RUNTIMES.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def live_runtimes() -> list[str]:
    """Tasks of the TaskRuntime objects alive in this process (for tests and memory checks)."""
    gc.collect()
    return [rt.name for rt in _LIVE]


def process_caches() -> dict[str, int]:
    """How many entries each per-process cache holds that outlives a task switch (docs/data.md)."""
    return {"runtimes": len(_RUNTIMES), "heads": len(_HEADS), "task_splits": task_splits.cache_info().currsize}
