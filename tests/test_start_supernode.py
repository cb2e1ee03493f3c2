"""deploy/start-supernode.sh as a supervisor, with a stand-in ``flower-supernode`` (no Flower, a few seconds).

The stand-in starts a child process, as the real SuperNode starts flower-superexec and
flwr-clientapp, and reports both PIDs. In ``refuse`` mode it prints what Flower prints
when the SuperLink refuses to activate a node and exits with status 1, as Flower does.
The real SuperNode is covered by tests/test_deploy_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.local_flower import alive

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!{python}
import os, signal, subprocess, sys, time
mode = os.environ.get("STAND_IN_MODE", "serve")
print("stand-in SuperNode", os.getpid(), "args", " ".join(sys.argv[1:]), flush=True)
if mode == "refuse":
    print("ERROR :     Exit Code: 305\\nFailed to initialize the connection to the SuperLink.\\n"
          "[code: 2004] Failed to activate SuperNode.", flush=True)
    sys.exit(1)
if mode == "broken":
    print("ERROR :     something else went wrong", flush=True)
    sys.exit(1)
child = subprocess.Popen(["sleep", "300"])
open(os.environ["STAND_IN_PIDS"], "w").write(f"{{os.getpid()}} {{child.pid}}")
def stop(signum, frame):
    print("stand-in SuperNode got signal", signum, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while True:
    time.sleep(1)
"""


@pytest.fixture
def site(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "flower-supernode"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    for name in ("ca.crt", "site.key"):
        (tmp_path / name).write_text("not used by the stand-in\n")
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")]),
           "STAND_IN_PIDS": str(tmp_path / "pids")}

    def start(*extra: str, mode: str = "serve") -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{mode}-{time.monotonic_ns()}.log"
        cmd = [str(ROOT / "deploy" / "start-supernode.sh"), "--superlink", "127.0.0.1:1", "--ca",
               str(tmp_path / "ca.crt"), "--key", str(tmp_path / "site.key"), "--task", "mnist", *extra]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, env={**env, "STAND_IN_MODE": mode}, stdout=fh, stderr=subprocess.STDOUT)
        return proc, log

    def pids() -> tuple[int, int]:
        path = tmp_path / "pids"
        for _ in range(600):
            if path.exists() and path.read_text():
                supernode, child = path.read_text().split()
                path.unlink()
                return int(supernode), int(child)
            time.sleep(0.05)
        raise AssertionError("the stand-in SuperNode did not start")

    return start, pids


def gone(pid: int, polls: int = 300) -> bool:
    for _ in range(polls):
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_supernode_takes_its_process_group_with_it(site):
    start, pids = site
    proc, _ = start()
    supernode, child = pids()
    os.kill(supernode, signal.SIGKILL)
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    assert gone(child)


def test_sigterm_is_passed_on_and_the_supernodes_status_returned(site):
    start, pids = site
    proc, log = start()
    supernode, child = pids()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "got signal 15" in log.read_text()
    assert gone(supernode) and gone(child)


def test_a_killed_supervisor_stops_the_supernode(site):
    start, pids = site
    proc, log = start()
    supernode, child = pids()
    proc.kill()
    proc.wait()
    assert gone(supernode), "the SuperNode outlived its supervisor"
    assert "got signal 15" in log.read_text()
    os.kill(child, signal.SIGKILL)  # the stand-in, unlike Flower's processes, does not watch its parent


def test_a_refused_activation_is_retried_until_rejoin_wait_and_other_errors_are_not(site):
    start, _ = site
    proc, log = start("--rejoin-wait", "6", mode="refuse")
    assert proc.wait(timeout=120) == 1
    text = log.read_text()
    assert text.count("stand-in SuperNode") >= 2 and "did not activate this SuperNode" in text
    proc, log = start("--rejoin-wait", "6", mode="broken")
    assert proc.wait(timeout=60) == 1
    assert log.read_text().count("stand-in SuperNode") == 1
    proc, log = start("--rejoin-wait", "0", mode="refuse")
    assert proc.wait(timeout=60) == 1
    assert log.read_text().count("stand-in SuperNode") == 1


def test_bad_rejoin_wait_is_refused_with_the_fix(site):
    start, _ = site
    proc, log = start("--rejoin-wait", "soon")
    assert proc.wait(timeout=30) == 2
    assert "--rejoin-wait must be whole seconds, not 'soon'" in log.read_text()
