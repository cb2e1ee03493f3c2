"""Issue 14's questions, answered from a sweep of ``experiments/grids/image-atm-study.toml``.

    python -m experiments.study runs/sweeps/image-atm-study --out docs/results/image-atm-study

For each ATM variant (method label and rounds k) against today's headline (``atm-mean``,
k = 4) and joint training, paired by seed:

* the share of the ATM→joint gap closed: (variant − headline) / (joint − headline) per seed,
  then mean ± std over seeds;
* win / tie / loss against joint training and against the best tuned one-shot merge
  (the one with the highest mean test accuracy over seeds, which favours the baseline),
  a tie being a difference under ``TIE_POINTS``;
* the per-round curve's lowest round against round 0 (does the run dip?);
* communication, measured: rounds × (bytes sent + received) per round, from results.json.

Writes ``study.json``, ``study.md`` and ``curves.png`` (per-round average, one line per
variant and seed) into ``--out``.

Seeds added later (``--only s3``) can go in a fresh sweep directory and be joined with a
published study: ``--rows-from docs/results/<study>/results.csv`` adds its rows and
``--curves-from docs/results/<study>/study.json`` its per-round curves, for every cell the
sweep directory does not hold itself. Check first that one cell both ran gives the same
numbers on this CPU (text does; images differ by CPU).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analyses import method_label
from experiments.report import TIE_POINTS

HEADLINE = ("atm-mean", 4)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """(mean, sample std); the std is NaN for one value (no spread to report)."""
    return (float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan) if xs else (math.nan, math.nan)


def _verdict(diff_points: float) -> str:
    return "tie" if abs(diff_points) < TIE_POINTS else ("win" if diff_points > 0 else "loss")


def averages(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[int, float]]:
    """{(method, rounds): {seed: average test accuracy}} from the sweep's final rows."""
    acc: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["method"], int(r["rounds"]), int(r["seed"]))].append(r["accuracy"])
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for (m, k, s), xs in acc.items():
        out[(m, k)][s] = float(np.mean(xs))
    return out


def round_curves(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ATM cell: its per-round average test accuracy and measured bytes."""
    from experiments.analyses import atm_method

    out = {}
    for cid, res in cells.items():
        cfg = res.get("config", {})
        if res.get("status") != "finished" or res.get("kind") == "baselines" or cfg.get("evaluate-split", "test") != "test":
            continue
        rounds = sorted(res["rounds"], key=lambda r: r["round"])
        curve = [float(np.mean([m["accuracy"] for m in r["eval"].values()])) for r in rounds if r.get("eval")]
        out[cid] = {"method": atm_method(cid, cfg), "rounds": int(cfg["num-server-rounds"]), "seed": int(cfg["seed"]),
                    "curve": curve,
                    "bytes": int(sum(int(r.get("bytes_sent", 0)) + int(r.get("bytes_received", 0)) for r in rounds))}
    return out


def load_results(sweep_dir: Path, cells: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each finished cell's results.json (``<sweep>/<cell id>/results.json``)."""
    out = {}
    for cid, status in cells.items():
        path = Path(sweep_dir) / cid / "results.json"
        if status.get("status") == "finished" and path.exists():
            out[cid] = json.loads(path.read_text())
    return out


def published_rows(path: Path, skip_cells: set[str]) -> list[dict[str, Any]]:
    """A published ``results.csv``'s rows (accuracy as float), less the cells in ``skip_cells``."""
    from experiments.normalise import read_rows

    return [{**r, "accuracy": float(r["accuracy"])} for r in read_rows(path) if r["cell"] not in skip_cells]


def analyse(summary: dict[str, Any], results: dict[str, dict[str, Any]] | None = None,
            headline: dict[int, float] | None = None, extra_rows: list[dict[str, Any]] | None = None,
            extra_curves: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``summary``: experiments.sweep.collect's; ``results``: cell id -> results.json (default: summary["cells"]).

    ``headline``: {seed: accuracy} of today's ATM from another sweep (``--headline-from``);
    default: this sweep's ``atm-mean`` k = 4 cells. ``extra_rows`` / ``extra_curves``: a
    published study's rows and curves (``--rows-from`` / ``--curves-from``); the sweep's own
    cells win where both hold one.
    """
    avg = averages(summary["rows"] + (extra_rows or []))
    joint = avg.get(("joint", 0), {})
    head = headline if headline is not None else avg.get(HEADLINE, {})
    one_shot = {m: v for (m, k), v in avg.items() if m.endswith("-tuned")}
    best = max(one_shot, key=lambda m: np.mean(list(one_shot[m].values()))) if one_shot else None
    curves = {**(extra_curves or {}), **round_curves(results if results is not None else summary["cells"])}
    variants = []
    for (m, k), by_seed in sorted(avg.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if not m.startswith("atm"):
            continue
        seeds = sorted(by_seed)
        v: dict[str, Any] = {"method": m, "rounds": k, "seeds": seeds,
                             "accuracy": _mean_std([by_seed[s] for s in seeds]),
                             "per_seed": {s: by_seed[s] for s in seeds}}
        paired = [s for s in seeds if s in joint and s in head]
        gaps = [(by_seed[s] - head[s]) / (joint[s] - head[s]) for s in paired if joint[s] - head[s] > 1e-9]
        if gaps and (m, k) != HEADLINE:
            v["gap_closed"] = _mean_std(gaps)
            v["gap_closed_per_seed"] = dict(zip(paired, gaps))
            v["gap_closed_of_means"] = ((np.mean([by_seed[s] for s in paired]) - np.mean([head[s] for s in paired]))
                                        / (np.mean([joint[s] for s in paired]) - np.mean([head[s] for s in paired])))
        for name, ref in (("joint", joint), (best, one_shot.get(best, {}))):
            if not name:
                continue
            common = [s for s in seeds if s in ref]
            verdicts = [_verdict(100 * (by_seed[s] - ref[s])) for s in common]
            v[f"vs_{name}"] = {"seeds": common, "diff": _mean_std([by_seed[s] - ref[s] for s in common]),
                               **{w: verdicts.count(w) for w in ("win", "tie", "loss")}}
        mine = [c for c in curves.values() if c["method"] == m and c["rounds"] == k]
        if mine:
            v["dip"] = {c["seed"]: min(c["curve"][1:]) - c["curve"][0] for c in mine if len(c["curve"]) > 1}
            v["bytes_per_run"] = float(np.mean([c["bytes"] for c in mine]))
            v["bytes_per_round"] = v["bytes_per_run"] / k
        variants.append(v)
    return {"tie_points": TIE_POINTS, "headline": list(HEADLINE), "headline_per_seed": head,
            "grid": summary.get("grid", {}).get("source", ""), "best_one_shot": best,
            "joint": {"per_seed": joint, "accuracy": _mean_std(list(joint.values()))},
            "one_shot": {m: {"per_seed": v, "accuracy": _mean_std(list(v.values()))} for m, v in one_shot.items()},
            "variants": variants, "curves": curves}


def _pct(ms) -> str:
    if ms is None or math.isnan(ms[0]):
        return "–"
    return f"{100 * ms[0]:.1f}" if math.isnan(ms[1]) else f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


def markdown(st: dict[str, Any], command: str) -> str:
    best = st["best_one_shot"]
    lines = ["# ATM against joint training: the study", "",
             f"Produced by `{command}` from the sweep of `{st.get('grid') or 'a grid'}`.",
             f"Today's ATM (mean, k = 4), the gap's lower end: {_pct(_mean_std(list(st['headline_per_seed'].values())))}"
             f" (seeds {', '.join(map(str, sorted(st['headline_per_seed'])))}).",
             f"Accuracy: average test accuracy over the tasks, %, mean ± std over seeds. A tie is a "
             f"difference under {st['tie_points']:g} point. Gap closed: (variant − ATM mean k = 4) / "
             "(joint − ATM mean k = 4), per seed, then mean ± std (and of the means). Dip: the lowest "
             "per-round average after round 0 minus round 0, per seed (negative: the run fell below "
             "its start). Bytes: measured, sent + received over the run.", "",
             f"Joint training: {_pct(st['joint']['accuracy'])} (seeds {', '.join(map(str, st['joint']['per_seed']))}).",
             "Tuned one-shot merges (α on validation): " + "; ".join(
                 f"{method_label(m)} {_pct(v['accuracy'])}" for m, v in sorted(st["one_shot"].items())) + ".", "",
             f"| variant | k | seeds | accuracy | gap closed | vs joint (W/T/L) | vs {method_label(best) if best else '–'} "
             "(W/T/L) | dip per seed (points) | MB per round | MB per run |",
             "|---|---:|---|---|---|---|---|---|---:|---:|"]
    for v in st["variants"]:
        if "gap_closed" not in v:
            gap = "–"
        elif math.isnan(v["gap_closed"][1]):
            gap = f"{100 * v['gap_closed'][0]:.0f}%"
        else:
            gap = (f"{100 * v['gap_closed'][0]:.0f} ± {100 * v['gap_closed'][1]:.0f}% "
                   f"(of means {100 * v['gap_closed_of_means']:.0f}%)")
        wtl = lambda d: f"{d['win']}/{d['tie']}/{d['loss']} ({100 * d['diff'][0]:+.1f})" if d and d["seeds"] else "–"
        dip = ", ".join(f"{100 * x:+.1f}" for _, x in sorted(v.get("dip", {}).items())) or "–"
        mb = lambda x: f"{x / 2 ** 20:.1f}" if x else "–"
        lines.append(f"| {v['method']} | {v['rounds']} | {', '.join(map(str, v['seeds']))} | {_pct(v['accuracy'])} | "
                     f"{gap} | {wtl(v.get('vs_joint'))} | {wtl(v.get('vs_' + best) if best else None)} | {dip} | "
                     f"{mb(v.get('bytes_per_round'))} | {mb(v.get('bytes_per_run'))} |")
    lines += ["", "Per-round curves: `curves.png`; every number above: `study.json`.", ""]
    return "\n".join(lines)


def plot_curves(st: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_variant: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for c in st["curves"].values():
        by_variant[(c["method"], c["rounds"])].append(c)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, ((m, k), cs) in enumerate(sorted(by_variant.items())):
        for j, c in enumerate(sorted(cs, key=lambda c: c["seed"])):
            x = np.linspace(0, 1, len(c["curve"]))  # fraction of the budget spent
            ax.plot(x, 100 * np.array(c["curve"]), color=f"C{i % 10}", alpha=0.7, lw=1,
                    label=f"{m}, k={k}" if j == 0 else None)
    j = st["joint"]["accuracy"]
    if not math.isnan(j[0]):
        ax.axhline(100 * j[0], color="k", ls="--", lw=1, label="joint training (mean)")
    ax.set_xlabel("fraction of the epoch budget spent")
    ax.set_ylabel("average test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _strict(x: Any) -> Any:
    """NaN (no spread for one seed) as null, so study.json is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    from experiments.sweep import collect

    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--headline-from", default=None, metavar="SWEEP_DIR",
                   help="take today's ATM (atm-mean, k = 4) per seed from this other sweep, e.g. the "
                        "frozen-center study when this sweep changes the heads (default: this sweep's own)")
    p.add_argument("--rows-from", action="append", default=[], metavar="RESULTS_CSV",
                   help="also take the rows of this published results.csv, for cells the sweep does not hold "
                        "(repeatable; default: none)")
    p.add_argument("--curves-from", action="append", default=[], metavar="STUDY_JSON",
                   help="also take the per-round curves of this published study.json, for cells the sweep "
                        "does not hold (repeatable; default: none)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = collect(Path(args.sweep_dir))
    headline = averages(collect(Path(args.headline_from))["rows"]).get(HEADLINE, {}) if args.headline_from else None
    own = {cid for cid, c in summary["cells"].items() if c.get("status") == "finished"}  # a killed cell hides nothing
    extra_rows = [r for f in args.rows_from for r in published_rows(Path(f), own)]
    extra_curves = {cid: c for f in args.curves_from
                    for cid, c in json.loads(Path(f).read_text()).get("curves", {}).items() if cid not in own}
    st = analyse(summary, load_results(Path(args.sweep_dir), summary["cells"]), headline, extra_rows, extra_curves)
    command = f"python -m experiments.study {args.sweep_dir} --out {args.out}" + \
        (f" --headline-from {args.headline_from}" if args.headline_from else "") + \
        "".join(f" --rows-from {f}" for f in args.rows_from) + "".join(f" --curves-from {f}" for f in args.curves_from)
    (out / "study.json").write_text(json.dumps(_strict(st), indent=1, default=str, allow_nan=False))
    (out / "study.md").write_text(markdown(st, command))
    plot_curves(st, out / "curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
