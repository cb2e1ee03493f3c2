"""What a measurement ran on: CPU model, cores, load, library versions (recorded beside every benchmark)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, 1/5/15-minute load average now, Python, torch (and its threads), flwr, OS."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:  # pragma: no cover
        pass
    try:
        import flwr

        info["flwr"] = flwr.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return info
