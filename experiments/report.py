"""Turn a sweep directory into a markdown report with tables and PNG plots.

    python -m experiments.report <sweep dir> --out docs/results/<name>

Writes ``<out>/report.md``, ``<out>/results.csv`` (one row per cell × method × task),
``<out>/summary.json`` (rows, per-round ATM accuracy, the analyses' numbers) and PNGs:
``radar.png`` (one radar per method), ``accuracy_vs_budget.png``, ``budget_split.png``,
``cosine.png`` (heatmaps), ``pca.png`` (trajectory), ``grad_norm.png``, ``alpha_search.png``.
No model weights are copied.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analyses import (accuracy_vs_budget, aggregate, budget_split, headline, mean_abs_offdiag,
                                  method_label, method_order, tuning_rows)

log = logging.getLogger("experiments.report")

TIE_POINTS = 1.0  # |difference| below this many accuracy points is a tie


def _pct(ms: tuple[float, float, int] | None, std: bool = True) -> str:
    if ms is None or ms[2] == 0 or math.isnan(ms[0]):
        return "–"
    m, s, n = ms
    return f"{100 * m:.1f} ± {100 * s:.1f}" if std and n > 1 else f"{100 * m:.1f}"


def _ratio(ms, std: bool = True) -> str:
    if ms is None or ms[2] == 0 or math.isnan(ms[0]):
        return "–"
    m, s, n = ms
    return f"{m:.3f} ± {s:.3f}" if std and n > 1 else f"{m:.3f}"


# --- tables --------------------------------------------------------------------------------------

def table3(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """Paper-Table-3-shaped markdown: per budget, one row per method; per-task columns and the average."""
    agg = aggregate(rows, metric)
    tasks = sorted({r["task"] for r in rows})
    fmt = _pct if metric == "accuracy" else _ratio
    lines = []
    for budget in sorted({k[0] for k in agg}):
        if budget == 0:
            continue
        keys = sorted((k for k in agg if k[0] == budget), key=lambda k: (method_order(k[1]), k[2]))
        if metric == "accuracy":
            keys = [k for k in agg if k[0] == 0] + keys  # the pretrained model in every block
        lines += [f"**Budget {budget:g} epoch{'s' if budget != 1 else ''}**", "",
                  "| method | seeds | " + " | ".join(tasks) + " | average |",
                  "|---|---|" + "---|" * (len(tasks) + 1)]
        for k in keys:
            cell = agg[k]
            label = method_label(k[1], k[2] if k[1].startswith("atm") else None)
            lines.append(f"| {label} | {len(cell['seeds'])} | " + " | ".join(fmt(cell.get(t)) for t in tasks)
                         + f" | **{fmt(cell['average'])}** |")
        lines.append("")
    return "\n".join(lines)


def paired_difference(rows, budget, a: tuple[str, int], b: tuple[str, int]) -> dict[str, Any] | None:
    """Average accuracy of method a minus method b, paired by seed (seeds both have)."""
    per = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["budget"] == budget:
            per[(r["method"], r["rounds"])][r["seed"]].append(r["accuracy"])
    sa, sb = per.get(a, {}), per.get(b, {})
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    d = [float(np.mean(sa[s]) - np.mean(sb[s])) for s in seeds]
    mean = float(np.mean(d))
    std = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    same_sign = all(x > 0 for x in d) or all(x < 0 for x in d)
    verdict = "tie" if abs(100 * mean) < TIE_POINTS or not same_sign else ("win" if mean > 0 else "loss")
    return {"mean": mean, "std": std, "seeds": seeds, "per_seed": d, "verdict": verdict}


def verdicts(rows, budget) -> tuple[list[str], dict[str, Any]]:
    """Plain statements: ATM (mean, most rounds) against each tuned one-shot baseline and joint training."""
    atm_keys = sorted({(r["method"], r["rounds"]) for r in rows if r["budget"] == budget and r["method"] == "atm-mean"},
                      key=lambda k: k[1])
    if not atm_keys:
        return ["No ATM (mean) run at this budget."], {}
    atm = atm_keys[-1]
    lines, out = [], {}
    others = [("sum-tuned", 1), ("mean-untuned", 1), ("ties-tuned", 1), ("breadcrumbs-tuned", 1), ("dare-tuned", 1),
              ("ties-untuned", 1), ("breadcrumbs-untuned", 1), ("dare-untuned", 1), ("joint", 0),
              ("finetuned", 0), ("pretrained", 0)]
    for other in others:
        rows_b = rows if other[0] != "pretrained" else rows
        d = paired_difference([r if r["method"] != "pretrained" else {**r, "budget": budget} for r in rows_b],
                              budget, atm, other)
        if d is None:
            continue
        out[other[0]] = d
        word = {"win": "wins against", "loss": "loses to", "tie": "ties with"}[d["verdict"]]
        tstat = (f", paired t = {d['mean'] / (d['std'] / math.sqrt(len(d['seeds']))):.1f}"
                 if len(d["seeds"]) > 1 and d["std"] > 0 else "")
        lines.append(f"- ATM ({atm[1]} rounds) **{word}** {method_label(other[0])}: "
                     f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f} points{tstat} "
                     f"(seeds {', '.join(map(str, d['seeds']))}; per seed "
                     f"{', '.join(f'{100 * x:+.1f}' for x in d['per_seed'])}).")
    tuned = [k for k in ("sum-tuned", "ties-tuned", "breadcrumbs-tuned", "dare-tuned") if k in out]
    if tuned:
        best = max(tuned, key=lambda k: -out[k]["mean"])  # the strongest baseline = smallest ATM margin
        out["best_tuned"] = best
    if "joint" in out and tuned:
        acc = aggregate([r for r in rows if r["budget"] == budget])
        j = acc.get((budget, "joint", 0), {}).get("average", (math.nan,))[0]
        a = acc.get((budget, atm[0], atm[1]), {}).get("average", (math.nan,))[0]
        b = acc.get((budget, out["best_tuned"], 1), {}).get("average", (math.nan,))[0]
        if not any(map(math.isnan, (j, a, b))):
            best_txt = f"the strongest tuned one-shot merge ({method_label(out['best_tuned'])}, {100 * b:.1f}%)"
            if j - b < TIE_POINTS / 100:
                lines.append(f"- Joint training ({100 * j:.1f}%) is within {TIE_POINTS:g} point of {best_txt}: "
                             f"there is no gap for ATM to close (ATM {100 * a:.1f}%).")
            elif a <= b:
                lines.append(f"- ATM ({100 * a:.1f}%) does not close any of the gap between {best_txt} and joint "
                             f"training ({100 * j:.1f}%).")
            else:
                frac = (a - b) / (j - b)
                out["gap_closed"] = frac
                lines.append(f"- Of the {100 * (j - b):.1f}-point gap between {best_txt} and joint training "
                             f"({100 * j:.1f}%), ATM closes {100 * frac:.0f}% (ATM {100 * a:.1f}%), in means over seeds.")
    return lines, out


# --- plots ---------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, tight_box: bool = False) -> None:
    """Write one report figure as PNG (80 dpi, the size the markdown report shows) and free it."""
    if tight_box:  # a heatmap grid whose colour bars tight_layout would squeeze
        fig.savefig(path, dpi=80, bbox_inches="tight")
    else:
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    _plt().close(fig)


def plot_radar(rows, budget, path: Path) -> bool:
    plt = _plt()
    agg = aggregate([r for r in rows if r["budget"] in (budget, 0)])
    tasks = sorted({r["task"] for r in rows})
    if len(tasks) < 3:
        return False
    keys = sorted((k for k in agg if k[0] == budget and k[1] != "finetuned"), key=lambda k: (method_order(k[1]), k[2]))
    ref = agg.get((budget, "finetuned", 0))
    if not keys:
        return False
    ncol = min(4, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    angles = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False).tolist()
    fig = plt.figure(figsize=(3.2 * ncol, 3.2 * nrow))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(nrow, ncol, i + 1, polar=True)
        for cell, style, lab in ((ref, dict(color="grey", ls="--", lw=1), "fine-tuned alone"),
                                 (agg[k], dict(color="C0", lw=2), "method")):
            if cell is None:
                continue
            vals = [100 * cell[t][0] for t in tasks]
            ax.plot(angles + angles[:1], vals + vals[:1], label=lab, **style)
            if lab == "method":
                ax.fill(angles + angles[:1], vals + vals[:1], color="C0", alpha=0.15)
        ax.set_xticks(angles)
        ax.set_xticklabels(tasks, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_yticks([25, 50, 75, 100])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"{method_label(k[1], k[2] if k[1].startswith('atm') else None)}\n"
                     f"avg {100 * agg[k]['average'][0]:.1f}%", fontsize=8)
    fig.suptitle(f"Per-task test accuracy (%) at budget {budget:g}; dashed: each task fine-tuned alone", fontsize=9)
    _save(fig, path)
    return True


def plot_accuracy_vs_budget(rows, path: Path, seed: int = 0) -> bool:
    plt = _plt()
    series = accuracy_vs_budget(rows, seed)
    series = {m: s for m, s in series.items() if len(s) > 1}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in sorted(series, key=method_order):
        xs, ys = zip(*series[m])
        ax.plot(xs, [100 * y for y in ys], marker="o", label=method_label(m) + (" (k = budget)" if m.startswith("atm") else ""))
    ax.set_xlabel("budget (epochs per task)")
    ax.set_ylabel("average test accuracy (%)")
    ax.set_xticks(sorted({x for s in series.values() for x, _ in s}))
    ax.set_title(f"Accuracy vs epoch budget (seed {seed})", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_budget_split(rows, per_round, budget, path: Path, seed: int = 0) -> dict[str, Any] | None:
    plt = _plt()
    bs = budget_split(rows, per_round, budget, seed=seed)
    one_shot = [r["accuracy"] for r in rows if r["method"] == "mean-untuned" and r["budget"] == budget
                and r["seed"] == seed]
    if one_shot and 1 not in bs["final"]:
        bs["final"][1] = float(np.mean(one_shot))
        bs["k1_from"] = "in-process one-shot mean, α = 1 (identical to ATM with one round)"
    if not bs["final"]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ks = sorted(bs["final"])
    axes[0].plot(ks, [100 * bs["final"][k] for k in ks], marker="o")
    axes[0].set_xlabel("rounds k (budget split evenly)")
    axes[0].set_ylabel("final average test accuracy (%)")
    axes[0].set_xticks(ks)
    axes[0].set_title(f"ATM (mean), budget {budget:g} epochs, seed {seed}", fontsize=9)
    for name, curve in bs["curves"].items():
        xs, ys = zip(*curve)
        axes[1].plot([x * budget / int(name.split("k=")[1]) for x in xs], [100 * y for y in ys], marker=".",
                     label=name)
    axes[1].set_xlabel("epochs spent")
    axes[1].set_ylabel("average test accuracy (%)")
    axes[1].set_title("accuracy after each round", fontsize=9)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)
    return bs


def plot_cosine(analysis: dict[str, Any], path: Path) -> dict[str, float]:
    plt = _plt()
    cos = analysis.get("cosine") or {}
    if not cos:
        return {}
    names = list(cos)
    n = len(names)
    ncol = min(5, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.9 * ncol, 2.8 * nrow), squeeze=False)
    summary = {}
    for ax, name in zip(axes.flat, names):
        m = np.asarray(cos[name]["matrix"])
        tasks = cos[name]["tasks"]
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(tasks)))
        ax.set_yticks(range(len(tasks)))
        ax.set_xticklabels(tasks, rotation=60, fontsize=6)
        ax.set_yticklabels(tasks, fontsize=6)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
        summary[name] = mean_abs_offdiag(m)
        ax.set_title(f"{name}\nmean |cos| {summary[name]:.3f}", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6)
    _save(fig, path, tight_box=True)
    return summary


def plot_pca(analysis: dict[str, Any], path: Path) -> bool:
    """All points (left) and a zoom on the bulk of them (right: points far from the median are left out)."""
    plt = _plt()
    pca = analysis.get("pca")
    if not pca:
        return False
    pts = pca["points"]
    xy = np.array([p["xy"] for p in pts])
    dist = np.linalg.norm(xy - np.median(xy, 0), axis=1)
    near = dist <= 3 * max(np.median(dist), 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    markers = {"pretrained": ("k", "*", 160), "finetuned": ("grey", "s", 40), "one-shot": ("C1", "o", 50),
               "joint": ("C2", "D", 70), "atm": ("C0", "o", 50)}
    atm = [p for p in pts if p["kind"] == "atm"]
    pre = [p for p in pts if p["kind"] == "pretrained"]
    for ax, zoom in zip(axes, (False, True)):
        if atm and pre:
            path_xy = np.array([pre[0]["xy"]] + [p["xy"] for p in atm])
            ax.plot(path_xy[:, 0], path_xy[:, 1], color="C0", lw=1.5, zorder=1, label="ATM rounds")
        for i, p in enumerate(pts):
            if zoom and not near[i]:
                continue
            c, mk, sz = markers.get(p["kind"], ("C3", "x", 40))
            ax.scatter(*p["xy"], color=c, marker=mk, s=sz, zorder=2)
            if zoom or not near[i] or p["kind"] in ("pretrained", "joint"):
                ax.annotate(p["label"], p["xy"], fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.grid(alpha=0.3)
    ev = pca.get("explained_variance_ratio", [math.nan, math.nan])
    for ax in axes:
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f}%)" if len(ev) > 1 else "PC2")
    axes[0].set_title("2-D PCA of merged backbone parameters (seed 0): all points", fontsize=9)
    left_out = [p["label"] for i, p in enumerate(pts) if not near[i]]
    axes[1].set_title("zoom" + (f" (without {', '.join(left_out)})" if left_out else ""), fontsize=8)
    axes[0].legend(fontsize=7)
    _save(fig, path)
    return True


def plot_grad_norm(analysis: dict[str, Any], path: Path) -> bool:
    plt = _plt()
    gn = analysis.get("grad_norm") or {}
    if not gn:
        return False
    tasks = list(gn)
    n_ep = max(len(v["share"]) for v in gn.values())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(tasks)
    for i, t in enumerate(tasks):
        sh = gn[t]["share"]
        axes[0].bar(np.arange(1, len(sh) + 1) + (i - (len(tasks) - 1) / 2) * width, sh, width, label=t)
        axes[1].plot(range(1, len(sh) + 1), gn[t]["cosine_with_first"], marker="o", label=t)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("share of Σ‖epoch gradient‖")
    axes[0].set_xticks(range(1, n_ep + 1))
    axes[0].set_title("each epoch's share of the gradient norm (single-task FT)", fontsize=9)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("cosine with epoch 1's gradient")
    axes[1].set_xticks(range(1, n_ep + 1))
    axes[1].set_title("alignment with the first epoch", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_alpha_search(analysis: dict[str, Any], path: Path) -> bool:
    plt = _plt()
    search = analysis.get("alpha_search") or {}
    if not search:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in search.items():
        xs = [p["alpha"] for p in pts]
        ys = [p["val_normalized"] for p in pts]
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("α")
    ax.set_ylabel("mean normalised accuracy on val")
    ax.set_title("α tuning on the validation split (seed 0)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


# --- the report ------------------------------------------------------------------------------------

def _load(sessions: list[dict[str, Any]]) -> str:
    """The 1-minute load average each sweep session saw at its start and its last cell: how shared the machine was."""
    spans = []
    for s in sessions:
        start = s.get("machine", {}).get("load_average")
        if start:
            end = s.get("load_average_end")
            spans.append(f"{start[0]:.1f}" + (f" to {end[0]:.1f}" if end else ""))
    return "load average " + ", ".join(spans) if spans else "load not recorded"


def tuning_table(sweep_dir: Path, cells: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines for the tuning cells (``evaluate-split = "val"``), best first; [] if none.

    They are scored on validation, so they never enter the test tables above; this is where a
    reader checks which setting validation chose.
    """
    results = {}
    for cid in cells:
        path = sweep_dir / cid / "results.json"
        if path.is_file():
            results[cid] = json.loads(path.read_text())
    rows = tuning_rows(results)
    if not rows:
        return []
    lines = ["## Tuning cells (validation split)", "",
             "Cells run with `evaluate-split = \"val\"`: for ATM, average validation accuracy after the last "
             "round, and the lowest round's average minus round 0's (negative: the run fell below its start); for "
             "a baselines cell (k = 0), joint training's and fine-tuning alone's average validation accuracy. "
             "Test numbers are only ever reported for the settings chosen here.", "",
             "| cell | method | k | seed | α | validation accuracy (%) | lowest round minus round 0 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["val_average"]):
        curve = [a for a in r["curve"] if a is not None]
        dip = f"{100 * (min(curve[1:]) - curve[0]):+.1f}" if len(curve) > 1 else "–"
        lines.append(f"| {r['cell']} | {r['method']} | {r['rounds']} | {r['seed']} | {r['alpha']:g} | "
                     f"{100 * r['val_average']:.1f} | {dip} |")
    return lines + [""]


def build_report(sweep_dir: Path, out: Path, title: str | None = None, notes: list[str] | None = None) -> Path:
    from experiments.sweep import collect

    sweep_dir, out = Path(sweep_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = collect(sweep_dir)
    rows, per_round = summary["rows"], summary["atm_rounds"]
    grid = summary.get("grid", {})
    analyses = summary.get("analyses", {})
    a0 = analyses.get("baselines-s0") or (next(iter(analyses.values())) if analyses else {})
    budgets = sorted({r["budget"] for r in rows if r["budget"] > 0})
    seeds_per_budget = {b: len({r["seed"] for r in rows if r["budget"] == b}) for b in budgets}
    head_budget = max(budgets, key=lambda b: (seeds_per_budget[b], b)) if budgets else 0

    figs = {}
    figs["radar"] = plot_radar(rows, head_budget, out / "radar.png")
    figs["accuracy_vs_budget"] = plot_accuracy_vs_budget(rows, out / "accuracy_vs_budget.png")
    split = plot_budget_split(rows, per_round, head_budget, out / "budget_split.png")
    figs["budget_split"] = split is not None
    cos_summary = plot_cosine(a0, out / "cosine.png")
    figs["cosine"] = bool(cos_summary)
    figs["pca"] = plot_pca(a0, out / "pca.png")
    figs["grad_norm"] = plot_grad_norm(a0, out / "grad_norm.png")
    figs["alpha_search"] = plot_alpha_search(a0, out / "alpha_search.png")

    sessions = summary.get("sessions", [])
    machine = sessions[-1]["machine"] if sessions else {}
    commands = [s["command"] for s in sessions if s.get("command")]
    wall = sum(float(s.get("wall_seconds", 0)) for s in sessions)
    cells = summary["cells"]
    cell_wall = sum(float(c.get("wall_seconds") or 0) for c in cells.values())
    unfinished = [k for k in grid.get("cells", cells) if cells.get(k, {}).get("status") != "finished"]
    all_seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {title or 'Results: ' + grid.get('name', sweep_dir.name)}", ""]
    if grid.get("description"):
        lines += [grid["description"], ""]
    lines += ["## How this was produced", "",
              f"- Sweep command: `{commands[0] if commands else 'python -m experiments.sweep --grid ' + grid.get('source', '?')}`"
              + (f" (resumed {len(commands) - 1}×)" if len(commands) > 1 else ""),
              f"- Report command: `python -m experiments.report {sweep_dir} --out {out}`",
              f"- Grid file: `{grid.get('source', '?')}` (copied below); seeds: {', '.join(map(str, all_seeds))}",
              f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores ({_load(sessions)}), "
              f"Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}, flwr {machine.get('flwr', '?')}",
              f"- Wall time: {wall / 60:.0f} min for the sweep ({cell_wall / 60:.0f} min inside the {len(cells)} cells' "
              "own timers)",
              f"- Cells: {len(grid.get('cells', cells))} in the grid; not finished: {', '.join(unfinished) or 'none'}"]
    codes = [s["code"] for s in sessions if s.get("code")]
    if codes:
        lines.append(f"- Code: git {', '.join(dict.fromkeys(codes))}")
    lines += [f"- {n}" for n in notes or []] + [""]

    lines += ["## Headline", "",
              f"Budget {head_budget:g} epochs per task. Average test accuracy over the tasks and normalised accuracy "
              "(per task: accuracy ÷ that task fine-tuned alone with the same budget and seed, then averaged), "
              "mean ± sample std over seeds. One-shot merges are the same system with one round; "
              "\"tuned α\" was picked on the validation split by mean normalised accuracy, then evaluated once on test.", "",
              "| method | seeds | average accuracy (%) | normalised accuracy |", "|---|---|---|---|"]
    for h in headline(rows, head_budget):
        lines.append(f"| {h['label']} | {len(h['seeds'])} | {_pct(h['accuracy'])} | {_ratio(h['normalized'])} |")
    pre = aggregate([r for r in rows if r["method"] == "pretrained"]).get((0.0, "pretrained", 0))
    if pre:
        lines.append(f"| Pretrained (zero budget) | {len(pre['seeds'])} | {_pct(pre['average'])} | – |")
    v_lines, v = verdicts(rows, head_budget)
    lines += ["", "### Where ATM wins, ties or loses", "",
              f"Paired by seed; a difference under {TIE_POINTS:g} point, or one whose sign differs across seeds, "
              "counts as a tie. With three seeds this is a description, not a significance test (a two-sided "
              "paired t-test at 5% needs |t| > 4.3 with 2 degrees of freedom).", ""] + v_lines + [""]

    lines += ["## Tables (shaped like the paper's Table 3)", "", "Test accuracy (%), mean ± std over seeds.", "",
              table3(rows), "", "Normalised accuracy (÷ fine-tuned alone, same budget and seed), mean ± std.", "",
              table3([r for r in rows if r["method"] not in ("pretrained",)], "normalized")]

    lines += tuning_table(sweep_dir, cells)

    # Analyses.
    lines += ["## Analyses", ""]
    if figs["radar"]:
        lines += ["### Per-task accuracy per method", "", "![radar](radar.png)", ""]
    if figs["accuracy_vs_budget"]:
        series = accuracy_vs_budget(rows, 0)
        bud = sorted({b for s in series.values() for b, _ in s})
        lines += ["### Accuracy vs epoch budget (seed 0)", "",
                  "ATM uses one epoch per round (k = budget; k = 1 is the one-shot mean with α = 1). Single-task "
                  "vectors for smaller budgets are the epoch-boundary snapshots of the longest run.", "",
                  "| method | " + " | ".join(f"{b:g}" for b in bud) + " |", "|---|" + "---|" * len(bud)]
        for m in sorted(series, key=method_order):
            d = dict(series[m])
            lines.append(f"| {method_label(m)} | " + " | ".join(f"{100 * d[b]:.1f}" if b in d else "–" for b in bud)
                         + " |")
        lines += ["", "![accuracy vs budget](accuracy_vs_budget.png)", ""]
    if split:
        lines += [f"### A fixed budget of {head_budget:g} epochs split over k rounds (ATM mean, seed 0)", "",
                  "| k | " + " | ".join(str(k) for k in sorted(split["final"])) + " |",
                  "|---|" + "---|" * len(split["final"]),
                  "| average test accuracy (%) | " + " | ".join(f"{100 * split['final'][k]:.1f}"
                                                          for k in sorted(split["final"])) + " |", ""]
        if split.get("k1_from"):
            lines += [f"k = 1: {split['k1_from']}.", ""]
        lines += ["![budget split](budget_split.png)", ""]
    if cos_summary:
        lines += ["### Pairwise cosine similarity of task vectors", "",
                  "One-shot: the single-task vectors (fine-tuned from the pretrained model). ATM rounds: the "
                  "clients' task vectors in each round of an in-process replay of the ATM run (same TaskRuntime, "
                  "merge plugin and update as the Flower clients and strategy; seed 0).", "",
                  "| vectors | mean \\|cos\\| off-diagonal |", "|---|---|"]
        lines += [f"| {k} | {val:.3f} |" for k, val in cos_summary.items()]
        lines += ["", "![cosine](cosine.png)", ""]
        rep = a0.get("replay") or {}
        for label, r in rep.items():
            flwr_cell = f"{label}-s0"
            flwr_final = [row["accuracy"] for row in rows if row["cell"] == flwr_cell]
            rep_final = r["per_round"][-1]["average"] if r["per_round"] else math.nan
            if flwr_final:
                lines += [f"Replay check: the in-process replay `{label}` ends at {100 * rep_final:.1f}% average "
                          f"test accuracy; the Flower run `{flwr_cell}` at {100 * float(np.mean(flwr_final)):.1f}% "
                          "(differences come from floating-point order: the Flower clients run one torch thread "
                          "each in Ray actors).", ""]
    if figs["grad_norm"]:
        gn = a0["grad_norm"]
        n_ep = max(len(x["share"]) for x in gn.values())
        lines += ["### Each epoch's share of the gradient norm (single-task fine-tuning, seed 0)", "",
                  "Share of epoch e = ‖Σ of epoch e's step gradients‖ ÷ Σ over epochs of the same; and the cosine of "
                  "each epoch's summed gradient with the first epoch's.", "",
                  "| task | " + " | ".join(f"epoch {e + 1}" for e in range(n_ep)) + " | cos(epoch e, epoch 1) |",
                  "|---|" + "---|" * (n_ep + 1)]
        for t, x in gn.items():
            lines.append(f"| {t} | " + " | ".join(f"{s:.2f}" for s in x["share"]) + " | "
                         + ", ".join(f"{c:.2f}" for c in x["cosine_with_first"]) + " |")
        lines += ["", "![gradient norm](grad_norm.png)", ""]
    if figs["pca"]:
        ev = a0["pca"]["explained_variance_ratio"]
        lines += ["### 2-D PCA: ATM's bases along the rounds beside the one-shot merges", "",
                  f"Points: flattened merged backbone parameters (offsets from the pretrained model) of the "
                  f"pretrained model, each task fine-tuned alone, the one-shot merges (α = 1 and tuned α), joint "
                  f"training and ATM's base after each round (replay, seed 0). Exact PCA of these points "
                  f"(Gram matrix); the two components explain {100 * sum(ev):.0f}% of their variance.", "",
                  "![pca](pca.png)", ""]
    if figs["alpha_search"]:
        lines += ["### α tuning (validation split, seed 0)", "", "![alpha search](alpha_search.png)", ""]
        tuned_alpha = defaultdict(list)
        for r in rows:
            if r["method"].endswith("-tuned") and r["task"] == sorted({x["task"] for x in rows})[0]:
                tuned_alpha[(r["method"], r["budget"])].append(r["alpha"])
        if tuned_alpha:
            lines += ["| method | budget | α chosen per seed |", "|---|---|---|"]
            for (m, b), al in sorted(tuned_alpha.items()):
                lines.append(f"| {method_label(m)} | {b:g} | {', '.join(f'{a:g}' for a in al)} |")
            lines.append("")
            edge = []
            for name, pts in (a0.get("alpha_search") or {}).items():
                alphas = [q["alpha"] for q in pts]
                best = max(pts, key=lambda q: q["val_normalized"])["alpha"]
                if best in (min(alphas), max(alphas)):
                    edge.append(f"{name} (α = {best:g}, the {'smallest' if best == min(alphas) else 'largest'} "
                                "value of its grid)")
            if edge:
                low = any("smallest" in e for e in edge)
                lines += ["At the edge of the grid on seed 0: " + "; ".join(edge) + "."
                          + (" At the smallest α the validation split prefers the merge that stays closest to the "
                             "pretrained model." if low else " A wider grid might choose a larger α."), ""]
    if grid.get("text"):
        lines += ["## Grid file", "", "```toml", grid["text"].rstrip(), "```", ""]
    lines += ["## Files", "", "`results.csv` (one row per cell × method × task: accuracy and normalised accuracy), "
              "`summary.json` (the same rows, ATM's per-round accuracy, the analyses' numbers, per-cell status and "
              "wall time), and the PNGs above.", ""]
    (out / "report.md").write_text("\n".join(lines))
    shutil.copy(sweep_dir / "results.csv", out / "results.csv")
    slim = {k: summary[k] for k in ("grid", "sessions", "cells", "rows", "atm_rounds", "analyses")}
    slim["verdicts"] = v
    slim["headline_budget"] = head_budget
    (out / "summary.json").write_text(json.dumps(slim, indent=1, default=float))
    log.info("report: %s", out / "report.md")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    p.add_argument("--note", action="append", default=[], help="a provenance line added under 'How this was produced'")
    args = p.parse_args(argv)
    build_report(Path(args.sweep_dir), Path(args.out), args.title, args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
