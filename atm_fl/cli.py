"""``atm-fl run``: ``flwr run <app> --stream`` with the settings this project needs, and an honest exit code.

What it adds to a bare ``flwr run``:

* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (otherwise the local SuperLink
  builds a fresh environment per run with uv, ignoring the installed torch), telemetry
  and update checks off. The detached local SuperLink keeps the environment of the
  ``flwr run`` that started it, so one started without these settings is restarted.
* ``num-supernodes`` = the number of tasks (one simulated node per task) and one CPU
  per client, unless ``--federation-config`` is given.
* exit status 1 when the run failed: ``flwr run --stream`` exits 0 either way, so the
  run's status is read back with ``flwr ls`` from the same SuperLink, the local one or
  the named federation (``atm-fl run . sites``; docs/deployment.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("atm_fl.cli")

FLWR_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_DEDUP_LOGS": "0",
}


def flwr_executable() -> str:
    """The ``flwr`` CLI of this interpreter's environment (an un-activated venv has it beside python)."""
    import shutil

    beside = Path(sys.executable).with_name("flwr")
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


def superlink_pids(*in_cmdline: bytes) -> list[int]:
    """PIDs of running ``flower-superlink`` processes whose command line has every one of ``in_cmdline``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"flower-superlink") for c in cmd[:2]) and all(a in cmd for a in in_cmdline):
            pids.append(int(proc.name))
    return pids


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a private SuperLink)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def ensure_superlink_env() -> None:
    """Stop a local simulation SuperLink that runs without this project's environment settings."""
    for pid in superlink_pids(b"--simulation"):
        env = _env_of(pid)
        if all(env.get(k) == v for k, v in FLWR_ENV.items() if k.startswith("FLWR_DISABLE_RUNTIME")):
            continue
        log.warning("restarting the local SuperLink (pid %d): it was started without "
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1", pid)
        os.kill(pid, 15)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


def _tasks_from(app: Path, run_config: list[str]) -> list[str]:
    """The task list the run will see: pyproject default, then --run-config overrides."""
    import tomllib

    from flwr.common.config import parse_config_args

    defaults = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    tasks = str(defaults.get("tasks", ""))
    for item in run_config:
        overrides = parse_config_args([item])
        tasks = str(overrides.get("tasks", tasks))
    return [t for t in tasks.split(",") if t.strip()]


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="atm-fl run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    p.add_argument("federation", nargs="?", default=None, help="federation / SuperLink connection name")
    p.add_argument("--run-config", action="append", default=[], help="as for flwr run; may repeat")
    p.add_argument("--federation-config", default=None, help="as for flwr run")
    args, extra = p.parse_known_args(argv)
    env = {**os.environ, **FLWR_ENV}
    # flwr starts flower-superlink (and Ray its workers) by name: put this environment first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    os.environ.update(FLWR_ENV)
    cmd = [flwr_executable(), "run", args.app]
    if args.federation:
        cmd.append(args.federation)
    for rc in args.run_config:
        cmd += ["--run-config", rc]
    if args.federation is None:
        ensure_superlink_env()
        fed = args.federation_config
        if fed is None:
            n = max(1, len(_tasks_from(Path(args.app), args.run_config)))
            fed = f"num-supernodes={n} client-resources-num-cpus=1"
        cmd += ["--federation-config", fed]
    cmd += ["--stream", *extra]
    log.info("%s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    run_id = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            m = re.search(r"run (\d{4,})", line)
            if run_id is None and m:
                run_id = m.group(1)
    except KeyboardInterrupt:
        # The run lives on the SuperLink: stop it there too, or it keeps the federation busy.
        if run_id is not None:
            log.warning("interrupted: stopping run %s", run_id)
            subprocess.run([flwr_executable(), "stop", run_id, *([args.federation] if args.federation else [])],
                           env=env, check=False)
        proc.terminate()
        return 130
    code = proc.wait()
    if code != 0:
        return code
    if run_id is None:
        log.error("could not find the run id in flwr's output; cannot tell whether the run succeeded")
        return 2
    status = run_status(run_id, args.federation)
    deadline = time.monotonic() + 30  # the log stream can end a moment before the status is final
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1)
        status = run_status(run_id, args.federation)
    if status != "finished:completed":
        log.error("run %s ended with status %s (see the log above)", run_id, status)
        return 1
    return 0


def run_status(run_id: str, federation: str | None = None) -> str:
    """``<status>:<sub-status>`` of a run as ``flwr ls`` reports it, e.g. ``finished:completed``."""
    cmd = [flwr_executable(), "ls", *([federation] if federation else []), "--run-id", str(run_id), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **FLWR_ENV})
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="atm-fl: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: atm-fl run [APP] [FEDERATION] [--run-config ...] [--federation-config ...]")
        return 0
    if argv[0] == "run":
        return run(argv[1:])
    print(f"atm-fl: unknown command {argv[0]!r}; try 'atm-fl run'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
