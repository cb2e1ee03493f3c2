"""End a ``flwr-clientapp`` process whose parent has died, so that a killed SuperNode leaves no orphan.

A SuperNode runs each message in a fresh ``flwr-clientapp`` process, started by its
``flower-superexec`` child. Flower's own guard in that process checks whether the parent
PID still exists. A dead parent that nobody has reaped yet still exists as a zombie,
and a container whose PID 1 does not reap keeps it that way. The ClientApp then
fine-tunes on, for a reply that nobody will receive. Checked on 127.0.0.1: after a
``kill -9`` of a SuperNode, its ClientApp went on running without a parent.

The test here is different: when the parent dies, the kernel hands the orphan to another
process (init or a subreaper), so ``os.getppid()`` changes at once, whether or not anyone
reaps the dead parent. The watchdog is a daemon thread that polls ``os.getppid()`` and
ends the process when it changes. Nothing is lost: the reply could not be delivered.

It runs only inside ``flwr-clientapp`` (a deployment). In Ray simulation and in-process
tests, the ClientApp shares a process with other work, and the function does nothing there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLIENTAPP_COMMAND = "flwr-clientapp"
EXIT_CODE = 70  # os.EX_SOFTWARE: not one of Flower's exit codes, so the log says who ended the process

_started = False
_lock = threading.Lock()


def in_clientapp_process(argv: list[str] | None = None) -> bool:
    """True when this process is a ``flwr-clientapp`` started by a SuperNode."""
    argv = sys.argv if argv is None else argv
    return bool(argv) and Path(argv[0]).name == CLIENTAPP_COMMAND


def exit_with_parent(poll: float = 1.0, *, force: bool = False) -> bool:
    """Start the watchdog, once per process, when inside ``flwr-clientapp``.

    Parameters
    ----------
    poll : float (default: 1.0)
        Seconds between checks of the parent PID.
    force : bool (default: False)
        Start it in any process (tests use this in a child process of their own).

    Returns
    -------
    bool
        True if a watchdog is running in this process after the call.
    """
    global _started
    if not (force or in_clientapp_process()):
        return False
    with _lock:
        if _started:
            return True
        parent = _parent_pid_arg(sys.argv) or os.getppid()
        threading.Thread(target=_watch, args=(parent, poll), name="parent-watch", daemon=True).start()
        _started = True
    return True


def _parent_pid_arg(argv: list[str]) -> int | None:
    """The ``--parent-pid`` Flower gave the process: it differs from ``os.getppid()`` if the parent already died."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--parent-pid" and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return None


def _watch(parent: int, poll: float) -> None:
    while True:
        now = os.getppid()
        if now != parent:
            log.error("the parent process (pid %d) of this ClientApp is gone (its SuperNode was stopped or "
                      "killed): nobody can receive the reply, so process %d exits now", parent, os.getpid())
            for handler in logging.getLogger().handlers:
                handler.flush()
            # os._exit: Flower's graceful exit would first try to push the reply to the dead
            # SuperNode and wait for it.
            os._exit(EXIT_CODE)
        time.sleep(poll)
