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
* the run-config checked first (``atm_fl.config.app_run_config``: keys, types, ranges,
  merge plugin and its parameters, TOML syntax): a bad one exits with status 2 and one
  line naming the key, the value and the fix, and Flower is never started.

``atm-fl merges [--markdown]`` lists every installed merge method and server optimizer
with its parameters and defaults, and any clashing or broken plugin (exit status 1).
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

from atm_fl.config import ConfigError, RunConfig, app_run_config

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


def checked_run_config(app: str, run_config: list[str], federation: str | None) -> RunConfig:
    """The run-config the ServerApp will get (app defaults + ``--run-config``), with every check it runs.

    Raises ``ConfigError`` before anything is started. Against a named federation, a
    plugin that is not installed on this machine is only warned about: the
    federation's ServerApp may have it (and checks it before any message).
    """
    return app_run_config(None if app.startswith("@") else Path(app), run_config,
                          missing_plugins_ok=federation is not None)


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="atm-fl run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    p.add_argument("federation", nargs="?", default=None, help="federation / SuperLink connection name")
    p.add_argument("--run-config", "-c", action="append", default=[], help="as for flwr run; may repeat")
    p.add_argument("--federation-config", default=None, help="as for flwr run")
    args, extra = p.parse_known_args(argv)
    # Refuse a bad config here, before a SuperLink or Ray starts (ConfigError: main exits 2).
    cfg = checked_run_config(args.app, args.run_config, args.federation)
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
            n = max(1, len(cfg.task_list))
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
        return stop_interrupted_run(proc, run_id, args.federation, env)
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
    if status == "finished:stopped":
        log.error("run %s was stopped (flwr stop). The rounds it finished are kept (results.json, checkpoint/); "
                  "resume='auto' with the same run-name continues it.", run_id)
        return 1
    if status != "finished:completed":
        log.error("run %s ended with status %s (see the log above)", run_id, status)
        return 1
    return 0


def stop_interrupted_run(proc: subprocess.Popen, run_id: str | None, federation: str | None, env: dict,
                         wait: float = 60.0) -> int:
    """Ctrl-C on ``atm-fl run``: stop the run on the SuperLink, wait until it is listed as finished; returns 130.

    ``proc`` is the ``flwr run --stream`` child (only a log stream: ended here). The
    ServerApp ends the run as ``stopped`` and keeps the finished rounds. ``wait``
    (default 60 s) bounds the wait for the SuperLink's status; a second Ctrl-C skips it.
    """
    fed = [federation] if federation else []
    try:
        if proc.poll() is None:
            proc.terminate()
        try:
            rest = proc.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = ""
        # flwr may have printed the run id after the Ctrl-C reached us.
        late = re.search(r"run (\d{4,})", rest)
        run_id = run_id or (late.group(1) if late else None)
        if run_id is None:
            log.error("interrupted before flwr printed the run id: if a run was submitted, find it with "
                      "`flwr ls %s` and stop it with `flwr stop RUN_ID %s`", federation or "", federation or "")
            return 130
        log.warning("interrupted: stopping run %s on the SuperLink (press Ctrl-C again to leave without waiting)",
                    run_id)
        out = subprocess.run([flwr_executable(), "stop", run_id, *fed], env=env, capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0:
            log.error("`flwr stop %s` failed: %s", run_id, (out.stdout + out.stderr).strip()[-500:])
        deadline = time.monotonic() + wait
        status = run_status(run_id, federation)
        while not status.startswith("finished") and time.monotonic() < deadline:
            time.sleep(2)
            status = run_status(run_id, federation)
        if status.startswith("finished"):
            log.warning("run %s is %s. The rounds it finished are kept (results.json, checkpoint/); "
                        "resume='auto' with the same run-name continues it.", run_id, status)
        else:
            log.error("run %s is still '%s' %gs after the stop request: check `flwr ls %s`", run_id, status, wait,
                      federation or "")
    except KeyboardInterrupt:
        log.warning("interrupted again: not waiting for run %s to stop", run_id)
    return 130


def run_status(run_id: str, federation: str | None = None) -> str:
    """``<status>:<sub-status>`` of a run as ``flwr ls`` reports it, e.g. ``finished:completed``."""
    cmd = [flwr_executable(), "ls", *([federation] if federation else []), "--run-id", str(run_id), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **FLWR_ENV})
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def _plugin_lines(title: str, plugins: dict) -> list[str]:
    lines = [title]
    for name, plugin in sorted(plugins.items()):
        lines.append(f"  {name}: {plugin.doc}")
        for p in plugin.params:
            valid = f"one of {', '.join(map(str, p.choices))}" if p.choices else p.expect
            lines.append(f"      {p.name} = {p.default!r}  {p.doc}" + (f" [{valid}]" if valid else ""))
        if not plugin.params:
            lines.append("      (no parameters)")
    return lines


def merges(argv: list[str] | None = None) -> int:
    """``atm-fl merges``: every installed merge method and server optimizer, and broken or clashing plugins."""
    p = argparse.ArgumentParser(prog="atm-fl merges", description=merges.__doc__)
    p.add_argument("--markdown", action="store_true", help="markdown tables (for docs) instead of text")
    args = p.parse_args(argv)
    from atm_fl import plugins  # imports torch: only for this command

    methods, optimizers, problems = plugins.merge_methods(), plugins.server_optimizers(), plugins.plugin_problems()
    if args.markdown:
        out = ["## Merge methods (`merge-method`, `merge-params`)", "", plugins.plugins_markdown(methods)]
        if optimizers:
            out += ["## Server optimizers (`server-optimizer`, `server-params`)", "",
                    plugins.plugins_markdown(optimizers)]
        if problems:
            out += ["## Plugins that cannot be used", "", "| entry-point group | name | problem |", "|---|---|---|",
                    *(f"| `{g}` | `{n}` | {why} |" for g, probs in problems.items() for n, why in probs.items()), ""]
    else:
        out = _plugin_lines(f"merge methods (run-config merge-method; parameters: merge-params='name=value,...'; "
                            f"entry-point group {plugins.MERGE_GROUP}):", methods)
        if optimizers:
            out += ["", *_plugin_lines("server optimizers (run-config server-optimizer; parameters: server-params; "
                                       f"entry-point group {plugins.OPTIMIZER_GROUP}):", optimizers)]
        if problems:
            out += ["", "plugins that cannot be used (refused when selected):",
                    *(f"  {n} ({g}): {why}" for g, probs in problems.items() for n, why in sorted(probs.items()))]
    print("\n".join(out).rstrip("\n"))
    return 1 if problems else 0


USAGE = """usage: atm-fl run [APP] [FEDERATION] [--run-config ...] [--federation-config ...]
       atm-fl merges [--markdown]"""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="atm-fl: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    commands = {"run": run, "merges": merges}
    if argv[0] not in commands:
        print(f"atm-fl: unknown command {argv[0]!r}; try one of: {', '.join(commands)}", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except ConfigError as err:
        # One line that names the key, the value and the fix; nothing has been started.
        print(f"atm-fl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
