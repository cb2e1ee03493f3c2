"""Tasks: named classification problems with train/validation/test splits.

``load_task(name, data_dir=None)`` is the one entry point; see ``docs/data.md`` for
the built-in offline tasks and the layout of a site's local data.
"""

from atm_fl.tasks.base import TaskSpec, TaskSplits
from atm_fl.tasks.registry import get_task, load_task, register_task, task_names

__all__ = ["TaskSpec", "TaskSplits", "get_task", "load_task", "register_task", "task_names"]
