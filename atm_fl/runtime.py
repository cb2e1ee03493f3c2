"""One task's working set on a client: data tensors, the backbone to fine-tune, the frozen head.

Built once per process and task (``get_task_runtime``) and reused across rounds: in
simulation a Ray actor serves many messages, and a partition is not pinned to an
actor, so the cache is keyed by task (and by everything that shapes data or model).
"""

from __future__ import annotations

import logging
import time

import torch

from atm_fl.config import RunConfig
from atm_fl.models import get_family
from atm_fl.models.base import Batch, subset_indices
from atm_fl.seeds import derive_seed
from atm_fl.task_vector import mergeable_keys, task_vector
from atm_fl.tasks import load_task
from atm_fl.train import FinetuneSettings, evaluate, finetune

log = logging.getLogger(__name__)

# Keys that shape the cached data/model; everything else may change between runs
# that share a process (sweeps) without rebuilding.
_CACHE_KEYS = ("model-family", "model-name", "model-pretrained", "image-size", "max-seq-length",
               "max-train-examples", "max-eval-examples", "train-split", "seed", "device")


class TaskRuntime:
    def __init__(self, cfg: RunConfig, task_name: str, data_dir: str | None = None):
        t0 = time.perf_counter()
        self.cfg = cfg
        self.name = task_name
        self.family = get_family(cfg)
        self.splits = load_task(task_name, data_dir=data_dir, seed=cfg.seed)
        from atm_fl.tasks import get_task

        self.metric_names = get_task(task_name).metrics
        fit_split = self.splits.val if cfg.train_split == "val" else self.splits.train
        self.train = self._encode(fit_split, cfg.max_train_examples, salt=1)
        self.val = self._encode(self.splits.val, cfg.max_eval_examples, salt=2)
        self.test = self._encode(self.splits.test, cfg.max_eval_examples, salt=3)
        self.settings = FinetuneSettings.from_config(cfg)
        if self.settings.device == "cpu":
            # Same seed, same results on the CPU (tests/test_determinism.py). On CUDA some
            # kernels stay non-deterministic; warn_only keeps such runs going.
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.backbone = self.family.build_backbone()
        self.keys = mergeable_keys(self.backbone)
        # The head comes from the *pretrained* backbone, so every process builds the same one.
        self.head = self.family.build_head(self.backbone, self.splits, self.train)
        for p in self.head.parameters():
            p.requires_grad_(False)
        self.pretrained = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        log.info("task %s ready in %.1fs: %d train / %d val / %d test examples", task_name,
                 time.perf_counter() - t0, len(self.train["labels"]), len(self.val["labels"]), len(self.test["labels"]))

    def _encode(self, split, cap: int, salt: int) -> Batch:
        idx = subset_indices(len(split), cap, seed=self.cfg.seed * 1000 + salt)
        return self.family.encode(split.select(idx), self.splits)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Load a broadcast backbone state; every key must match (no silent partial load)."""
        self.backbone.load_state_dict(state, strict=True)

    def train_round(self, base: dict[str, torch.Tensor], server_round: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Fine-tune from ``base`` and return (task vector over mergeable keys, metrics)."""
        # load_state_dict copies into the backbone's own parameters, so ``base`` stays
        # the round's starting point without another copy.
        self.load(base)
        # Whatever draws from torch's global RNG during fine-tuning (dropout, stochastic
        # depth) starts from (seed, task, global round): a round gives the same update in
        # any process, after any history, and after a resume.
        torch.manual_seed(derive_seed("finetune", self.cfg.seed, self.name, server_round))
        metrics = finetune(self.backbone, self.head, self.train, self.settings, round_index=server_round,
                           seed=self.cfg.seed, progress_label=f"[{self.name} r{server_round}]")
        tv = task_vector({k: v.cpu() for k, v in self.backbone.state_dict().items()}, base, self.keys)
        metrics["update-norm"] = float(torch.sqrt(sum((t.double() ** 2).sum() for t in tv.values())))
        return tv, metrics

    def evaluate(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, float]:
        self.load(state)
        data = {"test": self.test, "val": self.val, "train": self.train}[split]
        return evaluate(self.backbone, self.head, data, self.cfg.batch_size * 2, self.settings.device,
                        self.metric_names, precision=self.settings.precision)


_RUNTIMES: dict[tuple, TaskRuntime] = {}


def get_task_runtime(cfg: RunConfig, task_name: str, data_dir: str | None = None) -> TaskRuntime:
    """The per-process TaskRuntime for ``task_name`` under ``cfg`` (built on first use)."""
    key = (task_name, data_dir) + tuple(cfg.values[k] for k in _CACHE_KEYS)
    rt = _RUNTIMES.get(key)
    if rt is None:
        rt = _RUNTIMES[key] = TaskRuntime(cfg, task_name, data_dir)
    elif rt.cfg != cfg:
        # Same data/model, other training knobs (e.g. lr in a sweep): refresh them.
        rt.cfg = cfg
        rt.settings = FinetuneSettings.from_config(cfg)
    return rt
