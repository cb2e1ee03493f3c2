"""Flower on this machine for tests and experiments: a private simulation SuperLink, and a real deployment.

``FlowerEnv``: the environment for ``atm-fl run`` simulations with their own FLWR_HOME
and local SuperLink ports (sweeps, end-to-end tests), stopped by PID.

``local_deployment``: a real deployment on 127.0.0.1, built with the scripts of deploy/
exactly as docs/deployment.md says.

Certificates, site keys, a SuperLink with TLS and SuperNode authentication, the CLI's
federation entry, each site's key registered, one SuperNode per site (optionally
serving its own data directory), and optionally a SuperNode whose key nobody
registered. Every process started here is stopped by its PID. Used by
tests/test_deploy.py, tests/test_deploy_faults.py and experiments/bench_deploy.py.

``descendants`` / ``alive``: the process tree under a PID, read from /proc, for the
checks that a killed SuperNode or ServerApp leaves no process behind.
"""

from __future__ import annotations

import contextlib
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


def _sigint_as_in_a_terminal() -> None:
    # A shell without job control starts background jobs (`cmd &`, nohup, CI runners) with
    # SIGINT ignored, and an ignored signal stays ignored across exec: Ctrl-C would then never
    # reach `atm-fl run`. A terminal's foreground job always has the default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Popen keyword arguments for a process that a test stops with Ctrl-C
# (``os.killpg(proc.pid, signal.SIGINT)``): a session of its own, SIGINT not ignored.
FOREGROUND_JOB = {"start_new_session": True, "preexec_fn": _sigint_as_in_a_terminal}
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


def _proc_table() -> dict[int, tuple[str, int, str]]:
    """pid -> (state, parent pid, command line) of every process, from /proc."""
    table = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and ')'
        table[int(proc.name)] = (fields[0], int(fields[1]), cmd)
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every living (not zombie) process below ``pid``: pid -> command line."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if table[child][0] != "Z":
                out[child] = table[child][2]
    return out


def is_command(cmdline: str, name: str) -> bool:
    """True if ``cmdline`` runs the program ``name`` (directly, or as a script given to python)."""
    return any(Path(part).name == name for part in cmdline.split()[:2])


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process nobody has reaped yet)."""
    state = _proc_table().get(pid)
    return state is not None and state[0] != "Z"


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
    runs: dict = field(default_factory=dict)  # name -> Popen of a background ``atm-fl run``
    stopped: set = field(default_factory=set)  # names of processes a test stopped or killed on purpose

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs[name], self.logs[name] = proc, log
        return proc

    def stop_all(self) -> None:
        """SIGTERM every process started here by PID, then SIGKILL what is left after 15 s."""
        # A background run is a session of its own (atm-fl and its flwr child): signal the group.
        kills = [(proc, os.killpg) for proc in self.runs.values()] + [(proc, os.kill) for proc in self.procs.values()]
        for proc, kill in kills:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    kill(proc.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for proc, kill in kills:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def sh(self, *args, timeout: int = 60) -> str:
        out = subprocess.run([str(a) for a in args], env=self.env, cwd=self.tmp, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args}: {out.stdout}\n{out.stderr}")
        return out.stdout

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def start_supernode(self, name: str, task: str, *extra: str, key: str | None = None) -> subprocess.Popen:
        """``deploy/start-supernode.sh`` for ``task`` with site key ``key`` (default: ``name``), logged as ``name``.

        The process is the script's supervisor: ``flower-supernode`` is its child.
        """
        return self.start(name, [str(DEPLOY / "start-supernode.sh"), "--superlink", f"127.0.0.1:{self.port}",
                                 "--ca", str(self.tmp / "certs" / "ca.crt"),
                                 "--key", str(self.tmp / "keys" / (key or name)),
                                 "--task", task, "--port", str(free_port()), *extra])

    def supernode_pid(self, name: str, timeout: float = 30) -> int:
        """The PID of the ``flower-supernode`` process under the supervisor logged as ``name``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for pid, cmd in descendants(self.procs[name].pid).items():
                if is_command(cmd, "flower-supernode"):
                    return pid
            time.sleep(0.2)
        raise RuntimeError(f"no flower-supernode process under {name}:\n{self.log(name)[-2000:]}")

    def atm_fl_run(self, run_config: str, timeout: int = 300) -> subprocess.CompletedProcess:
        """``atm-fl run . sites --run-config ...`` against this deployment (the documented command)."""
        return subprocess.run([sys.executable, "-m", "atm_fl.cli", "run", ".", "sites", "--run-config", run_config],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def start_run(self, name: str, run_config: str) -> subprocess.Popen:
        """``atm-fl run . sites`` in the background, output in ``run-NAME.log``.

        It runs in a session of its own, like the foreground job of a terminal, so a test
        can press Ctrl-C with ``os.killpg(proc.pid, signal.SIGINT)``.
        """
        log = self.tmp / f"run-{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "atm_fl.cli", "run", ".", "sites", "--run-config",
                                     run_config], env=self.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    **FOREGROUND_JOB)
        self.runs[name], self.logs[f"run-{name}"] = proc, log
        return proc

    def run_id(self, name: str) -> str | None:
        """The run id that ``flwr run`` printed for the background run ``name``, once it has."""
        for line in self.log(f"run-{name}").splitlines():
            if "Successfully started run " in line:
                return line.rsplit(" ", 1)[1].strip()
        return None

    def run_status(self, run_id: str) -> str:
        """``<status>:<sub-status>`` of a run on this deployment's SuperLink, as ``flwr ls`` reports it."""
        out = subprocess.run(["flwr", "ls", "sites", "--run-id", str(run_id), "--format", "json"], env=self.env,
                             cwd=self.tmp, capture_output=True, text=True)
        try:
            runs = json.loads(out.stdout[out.stdout.index("{"):]).get("runs", [])
        except ValueError:
            return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def wait_online(self, n: int, timeout: float = 90) -> list[dict]:
        """The SuperLink's node list once ``n`` nodes are online (each flwr call costs ~1 s of CPU: poll gently)."""
        deadline = time.time() + timeout
        nodes: list[dict] = []
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if name != INTRUDER and name not in self.stopped and proc.poll() is not None:
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
        # 4. one SuperNode per site, each with its local data directory if it has one
        for site in sites:
            dep.start_supernode(site, site, *(["--data-dir", str(data_dirs[site])] if site in data_dirs else []))
        # 5. a SuperNode whose key nobody registered (it gives up at the first refusal)
        if intruder:
            dep.start_supernode(INTRUDER, sites[0], "--rejoin-wait", "0", "--", "--max-retries", "2",
                                "--max-wait-time", "20")
        dep.wait_online(len(sites))
        yield dep
    finally:
        dep.stop_all()
