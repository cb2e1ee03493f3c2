"""clients/parent_watch.py: a ClientApp process ends when its parent dies, even while the parent is an unreaped zombie.

Real processes: this test starts a stand-in parent, which starts the stand-in ClientApp
(a Python process running the watchdog). The parent is then killed with SIGKILL and
deliberately not reaped, the case in which Flower's own check (does the parent PID
exist?) keeps the ClientApp alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from clients.parent_watch import exit_with_parent, in_clientapp_process
from experiments.local_flower import alive

ROOT = Path(__file__).resolve().parents[1]


def test_only_active_inside_flwr_clientapp():
    assert in_clientapp_process(["/opt/venv/bin/flwr-clientapp", "--token", "x"])
    assert not in_clientapp_process(["/opt/venv/bin/flower-supernode"])
    assert not in_clientapp_process(["-c"]) and not in_clientapp_process([])
    assert exit_with_parent() is False  # pytest is not flwr-clientapp: no watchdog here


def test_orphaned_clientapp_exits_although_its_dead_parent_is_not_reaped(tmp_path):
    pid_file, log_file = tmp_path / "child.pid", tmp_path / "child.log"
    child = textwrap.dedent(f"""
        import logging, os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        logging.basicConfig(level=logging.INFO)
        from clients.parent_watch import exit_with_parent
        assert exit_with_parent(poll=0.05, force=True)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(120)  # a long fine-tune
        print("outlived its parent", flush=True)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child!r}], stdout=open({str(log_file)!r}, "w"),
                         stderr=subprocess.STDOUT)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        assert alive(child_pid)
        os.kill(proc.pid, signal.SIGKILL)  # not reaped until the end: a zombie, so its PID still exists
        for _ in range(400):
            if not alive(child_pid):
                break
            time.sleep(0.05)
        assert not alive(child_pid), "the orphaned child is still running"
        assert "is gone" in log_file.read_text() and "outlived" not in log_file.read_text()
    finally:
        if alive(proc.pid):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
