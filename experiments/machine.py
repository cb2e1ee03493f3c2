"""What a measurement ran on: CPU model, cores, load, library versions (recorded beside every benchmark)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
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


def blas_kernels() -> list[str]:
    """The BLAS libraries numpy and scipy load, with the CPU kernels each picked at run time.

    The SVD merges run on these (LAPACK through numpy and scipy), and OpenBLAS picks its
    kernels from the CPU it finds: the same merge gives other last bits under another kernel
    (docs/results/README.md, "The SVD merges and the CPU"). Two "AMD EPYC" VMs can differ here.
    """
    try:
        import numpy  # noqa: F401 - loads numpy's OpenBLAS
        import scipy.linalg  # noqa: F401 - loads scipy's
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    return sorted({f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                   for i in threadpool_info() if i.get("user_api") == "blas"})


def machine_info() -> dict[str, Any]:
    """CPU, cores, 1/5/15-minute load average now, Python, torch (threads, CPU kernels), BLAS kernels, flwr, OS."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    except ImportError:  # pragma: no cover
        pass
    info["blas"] = blas_kernels()
    try:
        import flwr

        info["flwr"] = flwr.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return info


CODE_PATHS = ("atm_fl", "clients", "strategies", "experiments", "pyproject.toml")


def code_version() -> str:
    """The checkout's commit, with "+ uncommitted changes" when its code differs from it ("unknown" outside git).

    Only the code counts (the packages and pyproject.toml): a sweep rewrites docs/results/ itself.
    """
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes" if dirty else "")


def _process_label(pid: str) -> str:
    """A short name for a process: Ray's title, the console script, or ``python -m module``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    if comm.startswith("ray::") or not argv:
        return comm
    first = os.path.basename(argv[0])
    if not first.startswith("python"):
        return first
    args = iter(argv[1:])
    for a in args:  # skip interpreter flags such as -u
        if a == "-m":
            return f"python -m {next(args, '')}"
        if not a.startswith("-"):
            return os.path.basename(a)
    return first


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(pid)] = (_process_label(pid), (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return out


def cpu_by_process(proc, interval: float = 0.5) -> dict[str, float]:
    """Wait for ``proc`` (a Popen) and return the CPU seconds every process used meanwhile, by label.

    Samples /proc every ``interval`` seconds: a process that starts and ends between two
    samples is missed, and one alive at the start counts only what it used after it.
    Linux only; the whole machine is counted, so run it on a quiet machine.
    """
    start, last = _cpu_seconds(), {}
    while proc.poll() is None:
        last.update(_cpu_seconds())
        time.sleep(interval)
    totals: dict[str, float] = {}
    for pid, (label, secs) in last.items():
        used = secs - (start[pid][1] if pid in start else 0.0)
        if used > 0:
            totals[label] = totals.get(label, 0.0) + used
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def publish(report: dict[str, Any], out: Path) -> None:
    """Write a benchmark's report as indented JSON to ``out`` and echo it on stdout."""
    text = json.dumps(report, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text + "\n")
