"""Task registry: name -> TaskSpec, and the one function that loads a task's splits."""

from __future__ import annotations

import logging

from atm_fl.tasks.base import TaskSpec, TaskSplits, carve_validation

log = logging.getLogger(__name__)

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is registered twice")
    _TASKS[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    # Import for the side effect of registering; kept lazy so importing the
    # registry stays cheap.
    import atm_fl.tasks.offline_vision  # noqa: F401
    import atm_fl.tasks.offline_text  # noqa: F401

    try:
        import atm_fl.tasks.hub_vision  # noqa: F401
        import atm_fl.tasks.glue  # noqa: F401
    except ImportError:  # pragma: no cover - optional modules
        pass


def task_names() -> list[str]:
    _ensure_builtin()
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    """Return the spec of ``name``, or raise with the list of valid names."""
    _ensure_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}. "
            "Fix the run-config key 'tasks' (or the node-config key 'task')."
        ) from None


def load_task(name: str, data_dir: str | None = None, seed: int = 0) -> TaskSplits:
    """Load train/val/test of ``name``; val is carved from train unless the source has one.

    Raises ``ValueError`` naming the task when a split is empty.
    """
    spec = get_task(name)
    if data_dir:
        from atm_fl.tasks.local import load_local

        dd = load_local(data_dir, modality=spec.modality)
    else:
        dd = spec.load(None)
    if "train" not in dd or "test" not in dd:
        raise ValueError(f"task {name!r}: data must have 'train' and 'test' splits, found {list(dd)}")
    train = dd["train"]
    if "validation" in dd:
        val = dd["validation"]
    else:
        train, val = carve_validation(train, seed=seed)
    for split_name, split in (("train", train), ("validation", val), ("test", dd["test"])):
        if len(split) == 0:
            raise ValueError(
                f"task {name!r} has no {split_name} data"
                + (f" in data-dir={data_dir!r}" if data_dir else "")
                + "; give the site a non-empty split (see docs/data.md)."
            )
    classes = _local_classes(spec, train, data_dir) if data_dir else spec.classes()
    return TaskSplits(name=name, classes=tuple(classes), train=train, val=val, test=dd["test"], modality=spec.modality)


def _local_classes(spec: TaskSpec, train, data_dir: str) -> tuple[str, ...]:
    """Class names of a site's local data, checked against the task's class count.

    Named classes (folders, string labels, classes.txt) come from the data; integer
    labels without names take the task's built-in names.
    """
    import datasets

    expected = spec.num_classes if spec.num_classes is not None else len(spec.classes())
    feature = train.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(feature.names)
        if len(names) != expected:
            raise ValueError(
                f"task {spec.name!r}: data-dir={data_dir!r} has {len(names)} classes ({', '.join(names[:8])}"
                f"{', ...' if len(names) > 8 else ''}) but the task has {expected}. Serve the task's full class "
                "set (every class needs a training example; tables may list all names in classes.txt), or "
                "register a new task for this data (atm_fl.tasks.register_task; see docs/data.md).")
        return names
    labels = train["label"]
    if labels and (min(labels) < 0 or max(labels) >= expected):
        raise ValueError(
            f"task {spec.name!r}: data-dir={data_dir!r} has integer labels {min(labels)}..{max(labels)}, but the "
            f"task has {expected} classes (labels 0..{expected - 1}); fix the labels or add a classes.txt "
            "(see docs/data.md).")
    if spec.num_classes is not None and not spec.offline:
        raise ValueError(
            f"task {spec.name!r}: data-dir={data_dir!r} has integer labels but no class names, and this task "
            "takes its names from the hub data; name the classes (class folders, string labels or classes.txt; "
            "see docs/data.md).")
    return tuple(spec.classes())
