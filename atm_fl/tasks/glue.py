"""GLUE tasks (CoLA, SST-2, MRPC, QQP, MNLI, QNLI, RTE) from the Hugging Face hub (``nyu-mll/glue``).

Nothing is downloaded at import; ``datasets.load_dataset("nyu-mll/glue", <config>)``
runs the first time a task is loaded in a process.

Splits. GLUE's own test labels are hidden (-1), so, as is usual in the
model-merging literature, our **test split is GLUE's validation split**
(``validation_matched`` for MNLI) and **our validation split is carved from GLUE's
train split** (10%, at most 5,000 examples, fixed seed; ``carve_validation``). The
numbers a run reports on "test" are therefore GLUE dev-set numbers.

Columns become ``text`` (and ``text_pair`` for the sentence-pair tasks) and
``label``. Metrics: accuracy everywhere, plus Matthews correlation for CoLA and F1
(positive class 1: acceptable / equivalent / duplicate) for MRPC and QQP.

Licences: GLUE redistributes each task under its source's terms; see the
``nyu-mll/glue`` dataset card before redistributing anything.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import datasets

from atm_fl.tasks.base import TaskSpec
from atm_fl.tasks.registry import register_task

log = logging.getLogger(__name__)

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    name: str
    config: str
    columns: tuple[str, ...]  # one column, or a sentence pair
    classes: tuple[str, ...]
    metrics: tuple[str, ...] = ("accuracy",)
    test_split: str = "validation"
    license: str = "see the nyu-mll/glue dataset card"


GLUE = (
    GlueTask("cola", "cola", ("sentence",), ("unacceptable", "acceptable"), ("accuracy", "mcc"),
             license="CoLA (Warstadt et al. 2019): see the nyu-mll/glue dataset card"),
    GlueTask("sst2", "sst2", ("sentence",), ("negative", "positive"),
             license="SST-2 (Socher et al. 2013): see the nyu-mll/glue dataset card"),
    GlueTask("mrpc", "mrpc", ("sentence1", "sentence2"), ("not equivalent", "equivalent"), ("accuracy", "f1"),
             license="MRPC (Dolan & Brockett 2005), Microsoft Research data licence; see the dataset card"),
    GlueTask("qqp", "qqp", ("question1", "question2"), ("not duplicate", "duplicate"), ("accuracy", "f1"),
             license="QQP: Quora's terms of use (non-commercial); see the nyu-mll/glue dataset card"),
    GlueTask("mnli", "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             test_split="validation_matched",
             license="MultiNLI (Williams et al. 2018): mostly OANC / CC BY 3.0 sources; see the dataset card"),
    GlueTask("qnli", "qnli", ("question", "sentence"), ("entailment", "not entailment"),
             license="QNLI, derived from SQuAD (CC BY-SA 4.0); see the nyu-mll/glue dataset card"),
    GlueTask("rte", "rte", ("sentence1", "sentence2"), ("entailment", "not entailment"),
             license="RTE (PASCAL RTE challenges): see the nyu-mll/glue dataset card"),
)


def _to_ours(ds: datasets.Dataset, task: GlueTask) -> datasets.Dataset:
    names = dict(zip(task.columns, ("text", "text_pair")))
    ds = ds.select_columns([*task.columns, "label"]).rename_columns(names)
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel) and len(feature.names) != len(task.classes):
        raise RuntimeError(f"GLUE {task.config}: {len(feature.names)} classes on the hub, expected {len(task.classes)}")
    return ds.cast_column("label", datasets.ClassLabel(names=list(task.classes)))


@functools.lru_cache(maxsize=None)
def load_glue(task: GlueTask) -> datasets.DatasetDict:
    log.info("loading %s/%s (downloads on first use)", HUB_ID, task.config)
    try:
        raw = datasets.load_dataset(HUB_ID, task.config)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"task {task.name!r}: could not load {HUB_ID} config {task.config!r} ({type(exc).__name__}: {exc}). "
            "This machine needs Hugging Face hub access (or a filled datasets cache); a site without it serves "
            f"its own copy with --node-config \"task={task.name} data-dir=<path>\" (docs/data.md).") from exc
    return datasets.DatasetDict({"train": _to_ours(raw["train"], task), "test": _to_ours(raw[task.test_split], task)})


for _task in GLUE:
    register_task(TaskSpec(
        name=_task.name, modality="text", load=lambda data_dir=None, t=_task: load_glue(t),
        classes=lambda t=_task: t.classes,
        source=f"Hugging Face hub dataset {HUB_ID} (config {_task.config}); test = GLUE {_task.test_split}",
        license=_task.license, metrics=_task.metrics, offline=False, num_classes=len(_task.classes),
        templates=("{}",),
    ))
