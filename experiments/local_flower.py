"""Flower on this machine for tests and experiments: a private simulation SuperLink, and a real deployment.

``FlowerEnv``: the environment for ``atm-fl run`` simulations with their own FLWR_HOME
and local SuperLink ports (sweeps, end-to-end tests), stopped by PID.

``local_deployment``: a real deployment on 127.0.0.1, built with the scripts of deploy/
exactly as docs/deployment.md says.

Certificates, site keys, a SuperLink with TLS and SuperNode authentication, the CLI's
federation entry, each site's key registered, one SuperNode per site (optionally
serving its own data directory), and optionally a SuperNode whose key nobody
registered. Every process started here is stopped by its PID. Used by
tests/test_deploy.py and experiments/bench_deploy.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from atm_fl.cli import free_port, superlink_pids

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INTRUDER = "intruder"


class FlowerEnv:
    """A private FLWR_HOME, local-SuperLink ports and Ray temp dir for ``atm-fl run`` simulations.

    Runs started with ``env`` use their own local simulation SuperLink (started by
    ``flwr run`` on ``port``), not the user's; ``close`` stops it by PID.
    """

    def __init__(self, out: Path):
        self.port, self.control = free_port(), free_port()
        self.ray_tmp = tempfile.mkdtemp(prefix="ray-sw", dir="/tmp")  # short: Ray's socket paths are limited
        self.env = {**os.environ, "FLWR_HOME": str(out / ".flwr"),
                    "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(self.control), "RAY_TMPDIR": self.ray_tmp,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}

    def close(self) -> None:
        """Stop the local SuperLink this sweep caused to start (by PID, on its own port)."""
        for pid in superlink_pids(str(self.port).encode()):
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while superlink_pids(str(self.port).encode()) and time.time() < deadline:
            time.sleep(0.2)
        for pid in superlink_pids(str(self.port).encode()):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Deployment:
    tmp: Path
    env: dict
    port: int
    sites: tuple[str, ...] = ()
    node_ids: dict = field(default_factory=dict)  # site -> node id from registration
    procs: dict = field(default_factory=dict)  # name -> Popen
    logs: dict = field(default_factory=dict)  # name -> log path

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

    def sh(self, *args, timeout: int = 60) -> str:
        out = subprocess.run([str(a) for a in args], env=self.env, cwd=self.tmp, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args}: {out.stdout}\n{out.stderr}")
        return out.stdout

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def atm_fl_run(self, run_config: str, timeout: int = 300) -> subprocess.CompletedProcess:
        """``atm-fl run . sites --run-config ...`` against this deployment (the documented command)."""
        return subprocess.run([sys.executable, "-m", "atm_fl.cli", "run", ".", "sites", "--run-config", run_config],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def wait_online(self, n: int, timeout: float = 90) -> list[dict]:
        """The SuperLink's node list once ``n`` nodes are online (each flwr call costs ~1 s of CPU: poll gently)."""
        deadline = time.time() + timeout
        nodes: list[dict] = []
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if name != INTRUDER and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
            if sum("SuperNode ID:" in self.log(site) for site in self.sites) < n:
                time.sleep(0.5)
                continue
            out = subprocess.run(["flwr", "supernode", "ls", "sites", "--format", "json"], env=self.env,
                                 cwd=self.tmp, capture_output=True, text=True)
            try:
                nodes = json.loads(out.stdout[out.stdout.index("{"):])["nodes"]
            except ValueError:
                nodes = []
            if sum(nd["status"] == "online" for nd in nodes) >= n:
                return nodes
            time.sleep(2)
        raise RuntimeError(f"fewer than {n} SuperNodes online after {timeout}s: {nodes}")


@contextmanager
def local_deployment(tmp: Path, sites: Sequence[str], data_dirs: Mapping[str, Path] | None = None,
                     intruder: bool = False) -> Iterator[Deployment]:
    """A SuperLink and one SuperNode per site on 127.0.0.1 (TLS, node auth), stopped on exit.

    ``data_dirs`` maps a site to its local data directory (``--data-dir``); ``intruder``
    adds a SuperNode named ``intruder`` with a key that was never registered.
    """
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "FLWR_HOME": str(tmp / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "PYTHONUNBUFFERED": "1"}
    dep = Deployment(tmp=tmp, env=env, port=free_port(), sites=tuple(sites))
    data_dirs = dict(data_dirs or {})
    try:
        # 1. certificates and site keys
        dep.sh(DEPLOY / "make-certs.sh", tmp / "certs", "127.0.0.1")
        dep.sh(DEPLOY / "make-node-keys.sh", tmp / "keys", *sites, *([INTRUDER] if intruder else []))
        # 2. the SuperLink, TLS + node authentication, on loopback
        link = dep.start("superlink", [str(DEPLOY / "start-superlink.sh"), "--host", "127.0.0.1", "--port",
                                       str(dep.port), "--certs", str(tmp / "certs"), "--state", str(tmp / "state")])
        deadline = time.time() + 60
        while not port_open(dep.port):
            if link.poll() is not None or time.time() > deadline:
                raise RuntimeError(dep.log("superlink")[-3000:])
            time.sleep(0.3)
        # 3. the CLI's federation entry, and each site's key registered
        dep.sh(DEPLOY / "add-federation.sh", "sites", f"127.0.0.1:{dep.port}", tmp / "certs" / "ca.crt")
        for site in sites:
            out = dep.sh(DEPLOY / "register-site.sh", "sites", tmp / "keys" / f"{site}.pub", site)
            dep.node_ids[site] = int(out.split("as node ")[1].split()[0])
        def supernode(name: str, task: str, *extra: str) -> None:
            dep.start(name, [str(DEPLOY / "start-supernode.sh"), "--superlink", f"127.0.0.1:{dep.port}",
                             "--ca", str(tmp / "certs" / "ca.crt"), "--key", str(tmp / "keys" / name),
                             "--task", task, "--port", str(free_port()), *extra])

        # 4. one SuperNode per site, each with its local data directory if it has one
        for site in sites:
            supernode(site, site, *(["--data-dir", str(data_dirs[site])] if site in data_dirs else []))
        # 5. a SuperNode whose key nobody registered (it gives up after two refused tries)
        if intruder:
            supernode(INTRUDER, sites[0], "--", "--max-retries", "2", "--max-wait-time", "20")
        dep.wait_online(len(sites))
        yield dep
    finally:
        dep.stop_all()
