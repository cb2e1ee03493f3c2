"""The deployment guide on one machine: real SuperLink + SuperNodes on 127.0.0.1, TLS, node authentication.

Everything goes through the scripts in deploy/ that docs/deployment.md tells an operator
to run: certificates, site keys, SuperLink, federation entry, key registration, one
SuperNode per site, and `atm-fl run . <federation>`. The optdigits site serves its own
local data directory (written here) when ``atm_fl.tasks.local`` is available; mnist uses
the built-in offline data. A third SuperNode whose key was never registered must be
refused. Every process started here is stopped by its PID; FLWR_HOME and the dataset
cache are temporary.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SITES = ("mnist", "optdigits")
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Deployment:
    tmp: Path
    env: dict
    port: int
    node_ids: dict = field(default_factory=dict)  # site -> node id from registration
    procs: dict = field(default_factory=dict)  # name -> Popen
    logs: dict = field(default_factory=dict)  # name -> log path
    local_data: bool = False

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs[name], self.logs[name] = proc, log
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process started here by PID, then SIGKILL what is left after 15 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def sh(self, *args: str, timeout: int = 60) -> str:
        out = subprocess.run([str(a) for a in args], env=self.env, cwd=self.tmp, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def atm_fl_run(self, run_config: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "atm_fl.cli", "run", ".", "sites", "--run-config", run_config],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def write_site_data(root: Path) -> None:
    """A small image-folder copy of optdigits: the site's own data directory."""
    import numpy as np
    from PIL import Image

    from atm_fl.tasks import load_task

    full = load_task("optdigits")
    for split, data, per_class in (("train", full.train, 6), ("test", full.test, 3)):
        labels = np.asarray(data["label"])
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:per_class]:
                Image.fromarray(np.asarray(data[int(i)]["image"], dtype=np.uint8)).save(folder / f"{i}.png")


def wait_online(dep: Deployment, n: int, timeout: float = 90) -> list[dict]:
    """The SuperLink's node list once ``n`` nodes are online (each flwr call costs ~1 s of CPU: poll gently)."""
    deadline = time.time() + timeout
    nodes: list[dict] = []
    while time.time() < deadline:
        for name, proc in dep.procs.items():
            assert name == "intruder" or proc.poll() is None, f"{name} exited:\n{dep.log(name)[-3000:]}"
        if sum("SuperNode ID:" in dep.log(site) for site in SITES) < n:
            time.sleep(0.5)
            continue
        out = subprocess.run(["flwr", "supernode", "ls", "sites", "--format", "json"], env=dep.env, cwd=dep.tmp,
                             capture_output=True, text=True)
        try:
            nodes = json.loads(out.stdout[out.stdout.index("{"):])["nodes"]
        except ValueError:
            nodes = []
        if sum(nd["status"] == "online" for nd in nodes) >= n:
            return nodes
        time.sleep(2)
    raise AssertionError(f"fewer than {n} SuperNodes online after {timeout}s: {nodes}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "FLWR_HOME": str(tmp / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "PYTHONUNBUFFERED": "1"}
    dep = Deployment(tmp=tmp, env=env, port=free_port())
    try:
        # 1. certificates and site keys
        dep.sh(DEPLOY / "make-certs.sh", tmp / "certs", "127.0.0.1")
        dep.sh(DEPLOY / "make-node-keys.sh", tmp / "keys", *SITES, "intruder")
        # 2. the SuperLink, TLS + node authentication, on loopback
        link = dep.start("superlink", [str(DEPLOY / "start-superlink.sh"), "--host", "127.0.0.1", "--port",
                                       str(dep.port), "--certs", str(tmp / "certs"), "--state", str(tmp / "state")])
        deadline = time.time() + 60
        while not port_open(dep.port):
            assert link.poll() is None and time.time() < deadline, dep.log("superlink")[-3000:]
            time.sleep(0.3)
        # 3. the CLI's federation entry, and each site's key registered
        dep.sh(DEPLOY / "add-federation.sh", "sites", f"127.0.0.1:{dep.port}", tmp / "certs" / "ca.crt")
        for site in SITES:
            out = dep.sh(DEPLOY / "register-site.sh", "sites", tmp / "keys" / f"{site}.pub", site)
            dep.node_ids[site] = int(out.split("as node ")[1].split()[0])
        # 4. one SuperNode per site; optdigits serves its own data directory when local data is supported
        dep.local_data = importlib.util.find_spec("atm_fl.tasks.local") is not None
        if dep.local_data:
            write_site_data(tmp / "optdigits-site")
        for site in SITES:
            extra = ["--data-dir", str(tmp / "optdigits-site")] if site == "optdigits" and dep.local_data else []
            dep.start(site, [str(DEPLOY / "start-supernode.sh"), "--superlink", f"127.0.0.1:{dep.port}",
                             "--ca", str(tmp / "certs" / "ca.crt"), "--key", str(tmp / "keys" / site),
                             "--task", site, "--port", str(free_port()), *extra])
        # 5. a SuperNode whose key nobody registered
        dep.start("intruder", [str(DEPLOY / "start-supernode.sh"), "--superlink", f"127.0.0.1:{dep.port}",
                               "--ca", str(tmp / "certs" / "ca.crt"), "--key", str(tmp / "keys" / "intruder"),
                               "--task", "mnist", "--port", str(free_port()), "--", "--max-retries", "2",
                               "--max-wait-time", "20"])
        wait_online(dep, len(SITES))
        yield dep
    finally:
        dep.stop_all()


RUN_CONFIG = ("model-family='tiny-mlp' tasks='mnist,optdigits' num-server-rounds=1 image-size=32 max-train-examples=32 "
              "max-eval-examples=32 batch-size=16 lr=0.01 discovery-timeout=60.0 round-timeout=300.0 ")


def test_atm_round_over_tls_with_authenticated_sites(deployment):
    out = deployment.tmp / "runs"
    proc = deployment.atm_fl_run(RUN_CONFIG + f"output-dir='{out}' run-name='deployed'")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    res = json.loads((out / "deployed" / "results.json").read_text())
    assert res["status"] == "finished" and [r["round"] for r in res["rounds"]] == [0, 1]
    assert all(set(r["eval"]) == set(SITES) for r in res["rounds"])
    assert set(res["rounds"][1]["train"]) == set(SITES) and res["faults"]["failed"] == 0
    assert (out / "deployed" / "model.safetensors").stat().st_size > 0
    assert (out / "deployed" / "checkpoint" / "round-0001.safetensors").exists()
    # Each task ran on the node registered for that site's key, and only there.
    assert res["task_nodes"] == deployment.node_ids
    for site in SITES:
        other = next(s for s in SITES if s != site)
        assert f"[{site} r1]" in deployment.log(site) and f"[{site} r1]" not in deployment.log(other)
    if deployment.local_data:
        # optdigits came from the site's directory (30 test images; the built-in data would give
        # max-eval-examples=32).
        line = next(ln for ln in deployment.log("optdigits").splitlines() if "task optdigits ready" in ln)
        assert "/ 30 test examples" in line, line


def test_failed_remote_run_exits_nonzero(deployment):
    proc = deployment.atm_fl_run(RUN_CONFIG + f"merge-method='avg' output-dir='{deployment.tmp / 'runs'}'")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-5000:]
    assert "not a merge method" in log and "finished:failed" in log


def test_unregistered_supernode_is_refused(deployment):
    intruder = deployment.procs["intruder"]
    try:
        code = intruder.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the SuperNode with an unregistered key is still running:\n" + deployment.log("intruder")[-3000:])
    assert code != 0
    assert "Failed to activate SuperNode" in deployment.log("intruder")
    assert "No SuperNode found with the given public key" in deployment.log("superlink")
    nodes = wait_online(deployment, len(SITES), timeout=5)
    assert {int(nd["node-id"]) for nd in nodes} == set(deployment.node_ids.values())
