"""Run a grid of ATM cells (real Flower simulations) and baseline cells, resumably, and collect the results.

    python -m experiments.sweep --grid experiments/grids/image-default.toml --out sweeps/image-default

Each cell writes ``<out>/<cell id>/results.json``; a cell whose results.json says
``"status": "finished"`` is skipped, so re-running the same command resumes.

* ATM cells run ``atm-fl run <repo> --run-config <out>/<id>/run-config.toml`` (a real
  ``flwr run`` simulation, one node per task) with ``run-name`` = the cell id,
  ``output-dir`` = the sweep directory and ``local-epochs`` = budget / rounds. The
  sweep gives Flower its own home (``<out>/.flwr``) and local SuperLink ports, so it
  never touches another local SuperLink, and stops the SuperLink it started (by PID).
* Baseline cells (one per seed) run ``python -m experiments.baselines`` in a subprocess.

After every cell the collected tables are rewritten: ``<out>/sweep.json`` (grid,
machine, per-cell status and wall time, every result row) and ``<out>/results.csv``
(one row per cell × method × task). Progress goes to the log with ``cell i/N`` and an ETA.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments.grid import ROOT, AtmCell, Grid, load_grid
from experiments.local_flower import FlowerEnv
from experiments.machine import code_version, machine_info

log = logging.getLogger("experiments.sweep")

# Seconds a cell gets to end after the sweep passes it a Ctrl-C: `atm-fl run` waits up to 60 s
# for its stopped run to be listed as finished on the SuperLink.
INTERRUPT_GRACE = 90.0


def is_finished(cell_dir: Path) -> bool:
    """True when ``cell_dir/results.json`` says ``status: finished`` and, for an ATM run, its last
    round was evaluated on every task (a run whose evaluations all failed still ends "finished")."""
    try:
        res = json.loads((cell_dir / "results.json").read_text())
    except (OSError, ValueError):
        return False
    if res.get("status") != "finished":
        return False
    if res.get("kind") == "baselines":
        return True
    rounds = res.get("rounds") or []
    return bool(rounds) and set(rounds[-1].get("eval") or {}) >= set(res.get("tasks") or [])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)


def write_run_config(path: Path, rc: dict[str, Any]) -> None:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in rc.items()))


def _run_logged(cmd: list[str], log_path: Path, env: dict[str, str], timeout: float) -> int:
    with open(log_path, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            fh.write(f"\n[sweep] killed after {timeout:g}s (cell-timeout)\n")
            return 124
        except KeyboardInterrupt:
            # The cell runs in a session of its own (a cell-timeout ends its whole group), so a
            # Ctrl-C at the terminal reaches only the sweep: pass it on, as if the cell had the
            # terminal. `atm-fl run` then stops its run on the SuperLink and exits.
            _interrupt(proc, fh)
            raise


def _interrupt(proc: subprocess.Popen, fh) -> None:
    """SIGINT to the cell's process group; SIGTERM if it has not ended after ``INTERRUPT_GRACE`` s, SIGKILL 10 s later."""
    for sig, wait in ((signal.SIGINT, INTERRUPT_GRACE), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
            continue
    fh.write(f"\n[sweep] interrupted (Ctrl-C); the cell exited {proc.poll()}\n")


def run_cell(cell, grid: Grid, out: Path, flower: FlowerEnv | None) -> int:
    cdir = out / cell.id
    cdir.mkdir(parents=True, exist_ok=True)
    if isinstance(cell, AtmCell):
        assert flower is not None
        rc = cell.run_config(grid.run_config, out.resolve())
        write_run_config(cdir / "run-config.toml", rc)
        cmd = [sys.executable, "-m", "atm_fl.cli", "run", ".", "--run-config", str((cdir / "run-config.toml").resolve())]
        if grid.federation_config:
            cmd += ["--federation-config", grid.federation_config]
        return _run_logged(cmd, cdir / "log.txt", flower.env, grid.cell_timeout)
    spec = {"run-config": cell.run_config(grid.run_config), "baselines": cell.spec()}
    if cell.reuse_alpha_from_seed is not None:
        spec["baselines"].update(reused_alphas(out / cell.id_of(cell.reuse_alpha_from_seed, cell.tag)))
    (cdir / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, "-m", "experiments.baselines", "--spec", str(cdir / "spec.json"), "--out", str(cdir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    # One torch thread, like each Flower client (Ray sets it from client-resources-num-cpus=1):
    # on a busy shared machine intra-op threads wait on each other and run several times slower.
    env.setdefault("OMP_NUM_THREADS", str(grid.baseline_threads))
    return _run_logged(cmd, cdir / "log.txt", env, grid.cell_timeout)


def reused_alphas(source: Path) -> dict[str, Any]:
    """The α each tuned merge chose in a finished baselines cell, as spec keys; {} if it is not finished."""
    if not is_finished(source):
        log.warning("%s is not finished: this seed tunes its own alphas", source.name)
        return {}
    res = json.loads((source / "results.json").read_text())
    fixed = {f"{r['method'][:-len('-tuned')]} b{float(r['budget']):g}": float(r["alpha"])
             for r in res["rows"] if r["method"].endswith("-tuned")}
    return {"alpha-fixed": fixed, "alpha-from-seed": res.get("seed")}


def _cost(cell) -> float:
    """A rough relative cost for the ETA (epochs of fine-tuning per task, plus evaluation)."""
    if isinstance(cell, AtmCell):
        return cell.budget + 0.25 * (cell.rounds + 1) + 0.5
    replay = (cell.replay or {}).get("budget", 0) if cell.replay else 0
    n_merges = sum(len(m) for m in cell.merges.values())
    return max(cell.budgets) * (2 if cell.joint else 1) + replay + 0.6 * n_merges + 0.5 * len(cell.budgets) + 1


def selected(cells: list, only: str | list[str] | None) -> list:
    """The cells whose id contains any of ``only`` (a text or a list of texts; none: every cell).

    A text ending in ``$`` must end the id: ``atm-mean-b4-k16-s0$`` picks that cell and not
    ``atm-mean-b4-k16-s0-carry-warm``.
    """
    if not only:
        return list(cells)
    texts = [only] if isinstance(only, str) else list(only)

    def hit(text: str, cid: str) -> bool:
        return cid.endswith(text[:-1]) if text.endswith("$") else text in cid

    return [c for c in cells if any(hit(t, c.id) for t in texts)]


def run_sweep(grid: Grid, out: Path, only: str | list[str] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cells = selected(grid.cells, only)
    n = len(cells)
    meta_path = out / "sweep-meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"sessions": []}
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": shlex.join([sys.executable, "-m",
               "experiments.sweep", *sys.argv[1:]]) if sys.argv and "sweep" in sys.argv[0] else "",
               "machine": machine_info(), "code": code_version(), "cells": {}}
    meta["sessions"].append(session)
    meta["grid"] = {"name": grid.name, "description": grid.description, "source": grid.source,
                    "text": Path(grid.source).read_text() if grid.source and Path(grid.source).exists() else "",
                    "run_config": grid.run_config, "cells": [c.id for c in grid.cells]}
    todo = [c for c in cells if not is_finished(out / c.id)]
    log.info("sweep %s: %d cells, %d finished already, %d to run -> %s", grid.name, n, n - len(todo), len(todo), out)
    flower = FlowerEnv(out) if any(isinstance(c, AtmCell) for c in todo) else None
    t_sweep = time.time()
    done_cost = done_time = 0.0
    remaining_cost = sum(_cost(c) for c in todo)
    failed = []
    try:
        for i, cell in enumerate(cells, start=1):
            if is_finished(out / cell.id):
                log.info("cell %d/%d %s: finished already, skipped", i, n, cell.id)
                continue
            log.info("cell %d/%d %s: running (%s)", i, n, cell.id, "flwr run" if cell.kind == "atm" else "in-process")
            t0 = time.time()
            code = run_cell(cell, grid, out, flower)
            dt = time.time() - t0
            ok = code == 0 and is_finished(out / cell.id)
            session["cells"][cell.id] = {"seconds": dt, "exit": code, "ok": ok}
            done_cost += _cost(cell)
            done_time += dt
            remaining_cost -= _cost(cell)
            eta = remaining_cost * done_time / max(done_cost, 1e-9)
            if ok:
                log.info("cell %d/%d %s: done in %.0fs; ETA %.0f min for the rest", i, n, cell.id, dt, eta / 60)
            else:
                failed.append(cell.id)
                log.error("cell %d/%d %s: FAILED (exit %d) after %.0fs; see %s; ETA %.0f min", i, n, cell.id, code,
                          dt, out / cell.id / "log.txt", eta / 60)
            session["wall_seconds"] = time.time() - t_sweep
            session["load_average_end"] = list(os.getloadavg())  # how busy the machine was, for the report
            meta_path.write_text(json.dumps(meta, indent=1))
            collect(out, grid)
    finally:
        if flower is not None:
            flower.close()
        session["wall_seconds"] = time.time() - t_sweep
        session["failed"] = failed
        meta_path.write_text(json.dumps(meta, indent=1))
    summary = collect(out, grid)
    log.info("sweep %s: %d cells run in %.0f min, %d failed%s", grid.name, len(todo), (time.time() - t_sweep) / 60,
             len(failed), f" ({', '.join(failed)})" if failed else "")
    return summary


# --- collection ------------------------------------------------------------------------------------

def collect(out: Path, grid: Grid | None = None) -> dict[str, Any]:
    """Gather every finished cell under ``out`` into ``sweep.json`` and ``results.csv``.

    Rows (long form): cell, source ('flwr' | 'in-process'), method, budget, rounds,
    seed, alpha, task, accuracy, normalized (÷ the same seed's fine-tuned-alone accuracy
    at the same budget, NaN when that baseline was not run).
    """
    from experiments.analyses import collect_rows

    cells = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            res = json.loads((d / "results.json").read_text())
        except (OSError, ValueError):
            continue
        cells[d.name] = res
    rows, rounds = collect_rows(cells)
    meta_path = out / "sweep-meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    summary = {"grid": meta.get("grid", {"name": grid.name if grid else out.name}),
               "sessions": meta.get("sessions", []),
               "cells": {k: {"status": v.get("status"), "kind": v.get("kind", "atm"),
                             "wall_seconds": v.get("wall_seconds"), "error": v.get("error", "")}
                         for k, v in cells.items()},
               "rows": rows, "atm_rounds": rounds,
               "analyses": {k: {key: v.get(key) for key in ("grad_norm", "cosine", "pca", "replay", "alpha_search",
                                                            "timings", "merged_parameters")}
                            for k, v in cells.items() if v.get("kind") == "baselines"}}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1, default=float))
    import csv

    cols = ["cell", "source", "method", "budget", "rounds", "seed", "alpha", "task", "accuracy", "normalized"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="grid TOML file (docs/experiments.md)")
    p.add_argument("--out", required=True, help="sweep directory (cells go in sub-directories)")
    p.add_argument("--only", action="append", default=None,
                   help="run only cells whose id contains this text (ending in $: ends with it); repeat it to "
                        "run cells matching any of them")
    p.add_argument("--list", action="store_true", help="list the cells and whether they are finished, then exit")
    p.add_argument("--collect", action="store_true", help="only rebuild sweep.json/results.csv from finished cells")
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    out = Path(args.out)
    if args.list:
        cells = selected(grid.cells, args.only)
        for i, c in enumerate(cells, start=1):
            done = "finished" if is_finished(out / c.id) else "to run"
            log.info("cell %d/%d %s: %s", i, len(cells), c.id, done)
        return 0
    if args.collect:
        collect(out, grid)
        return 0
    try:
        summary = run_sweep(grid, out, args.only)
    except KeyboardInterrupt:
        log.error("sweep %s interrupted: the running cell is left unfinished; finished cells are kept. "
                  "Run the same command again to continue.", grid.name)
        return 130
    bad = [k for k, v in summary["cells"].items() if v["status"] != "finished"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
