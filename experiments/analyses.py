"""The paper's analyses, computed from a sweep's collected results.

* ``collect_rows``: every cell's final per-task test accuracy as long-form rows, with
  normalised accuracy (÷ the same seed's fine-tuned-alone accuracy at the same budget);
* ``table3``: Table-3-shaped tables (method rows per budget; per-task and average
  columns; mean ± std over seeds);
* ``accuracy_vs_budget``: average accuracy per method and budget;
* ``budget_split``: a fixed budget split over k rounds (ATM mean, per round too);
* cosine similarity of task vectors per round and each epoch's share of the gradient
  norm: computed in ``experiments.baselines`` (single-task vectors for one-shot; an
  in-process ATM replay, same TaskRuntime and merge plugin, for the rounds) and read here;
* ``pca_2d``: exact 2-D PCA of a few dozen flattened parameter vectors via their Gram matrix.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

# Display names and the order rows appear in tables.
METHOD_LABELS = {
    "pretrained": "Pretrained",
    "finetuned": "Fine-tuned alone (per task)",
    "joint": "Joint multi-task FT",
    "sum-tuned": "Task arithmetic (sum), tuned α",
    "mean-untuned": "Mean, α=1 (paper's untuned TA)",
    "mean-tuned": "Mean, tuned α",
    "ties-untuned": "TIES, α=1",
    "ties-tuned": "TIES, tuned α",
    "breadcrumbs-untuned": "Breadcrumbs, α=1",
    "breadcrumbs-tuned": "Breadcrumbs, tuned α",
    "dare-untuned": "DARE, α=1",
    "dare-tuned": "DARE, tuned α",
    "tsv-m-tuned": "TSV-M, tuned α",
    "iso-c-tuned": "Iso-C, tuned α",
    "iso-cts-tuned": "Iso-CTS, tuned α",
    "atm-mean": "ATM (mean)",
    "atm-ties": "ATM (TIES)",
    "atm-breadcrumbs": "ATM (Breadcrumbs)",
    "atm-dare": "ATM (DARE)",
    "atm-tsv-m": "ATM (TSV-M)",
    "atm-iso-c": "ATM (Iso-C)",
    "atm-mean-valft": "valFT ATM (mean)",
}


def method_label(method: str, rounds: int | None = None) -> str:
    base = METHOD_LABELS.get(method, method)
    if method.startswith("atm") and rounds is not None:
        return f"{base}, {rounds} round{'s' if rounds != 1 else ''}"
    return base


def method_order(key: str) -> int:
    keys = list(METHOD_LABELS)
    m = key.split("|")[0]
    return keys.index(m) if m in keys else len(keys)


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


_CELL_TAIL = re.compile(r"-k\d+-s\d+(?:-valft)?(?:-a(?P<alpha>[0-9.]+(?:e[-+]?\d+)?))?(?:-(?P<tag>.+))?$")


def atm_method(cell_id: str, cfg: dict[str, Any]) -> str:
    """An ATM cell's method label: ``atm-<merge>``, ``-valft``, ``+<tag>`` (the grid block's variant), ``@a<alpha>``."""
    method = f"atm-{cfg.get('merge-method', 'mean')}" + ("-valft" if cfg.get("train-split") == "val" else "")
    m = _CELL_TAIL.search(cell_id)
    if m and m.group("tag"):
        method += f"+{m.group('tag')}"
    if m and m.group("alpha"):
        method += f"@a{float(m.group('alpha')):g}"
    return method


def baseline_method(res: dict[str, Any], method: str) -> str:
    """A baselines cell's row label: ``<method>``, or ``<method>+<tag>`` for a grid block's variant."""
    tag = (res.get("spec") or {}).get("tag", "")
    return method + (f"+{tag}" if tag else "")


def tuning_rows(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished ATM cells scored on validation (``evaluate-split = val``): method, rounds, seed, final val average."""
    out = []
    for cid, res in cells.items():
        cfg = res.get("config", {})
        if res.get("status") != "finished" or cfg.get("evaluate-split") != "val":
            continue
        if res.get("kind") == "baselines":
            # Joint training and fine-tuning alone in a tuning baselines cell (e.g. another lr).
            for r in res["rows"]:
                if r["method"] in ("joint", "finetuned"):
                    out.append({"cell": cid, "method": baseline_method(res, r["method"]), "rounds": 0,
                                "seed": int(res.get("seed", 0)), "alpha": float(r.get("alpha") or 1.0),
                                "val_average": float(np.mean(list(r["accuracy"].values()))), "curve": []})
            continue
        final = max((r for r in res["rounds"] if r.get("eval")), key=lambda r: r["round"], default=None)
        if final is None:
            continue
        accs = [m["accuracy"] for m in final["eval"].values()]
        out.append({"cell": cid, "method": atm_method(cid, cfg), "rounds": int(cfg.get("num-server-rounds", 0)),
                    "seed": int(cfg.get("seed", 0)), "alpha": float(cfg.get("alpha", 1.0)),
                    "val_average": float(np.mean(accs)), "curve": [r.get("average_accuracy") for r in res["rounds"]]})
    return sorted(out, key=lambda r: (r["method"], r["rounds"], r["seed"]))


def collect_rows(cells: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(final rows, ATM per-round rows) from ``{cell id: results.json content}`` of finished cells."""
    rows: list[dict[str, Any]] = []
    per_round: list[dict[str, Any]] = []
    reference: dict[tuple[int, float], dict[str, float]] = {}
    for cid, res in cells.items():
        if res.get("status") != "finished":
            continue
        if res.get("kind") == "baselines":
            if res.get("config", {}).get("evaluate-split", "test") != "test":
                continue  # a tuning cell, scored on validation: read by ``tuning_rows``
            # A grid block's variant (tag, with its own run-config) never serves as the normalising reference.
            tagged = bool((res.get("spec") or {}).get("tag"))
            for r in res["rows"]:
                rounds = 1 if r["method"] not in ("pretrained", "finetuned", "joint") else 0
                for task, acc in r["accuracy"].items():
                    rows.append({"cell": cid, "source": "in-process", "method": baseline_method(res, r["method"]),
                                 "budget": float(r["budget"]), "rounds": rounds, "seed": int(r["seed"]),
                                 "alpha": r.get("alpha", ""), "task": task, "accuracy": float(acc)})
                if r["method"] == "finetuned" and not tagged:
                    reference[(int(r["seed"]), float(r["budget"]))] = dict(r["accuracy"])
            for label, rep in res.get("replay", {}).items():
                for pr in rep["per_round"]:
                    for task, acc in pr["accuracy"].items():
                        per_round.append({"cell": cid, "source": "in-process", "method": f"atm-{rep['method']}",
                                          "budget": float(rep["budget"]), "rounds": int(rep["rounds"]),
                                          "seed": int(res["seed"]), "round": int(pr["round"]), "task": task,
                                          "accuracy": float(acc)})
            continue
        cfg = res.get("config", {})
        if cfg.get("evaluate-split", "test") != "test":
            continue  # a tuning cell, scored on validation: read by ``tuning_rows``, never reported as test
        method = atm_method(cid, cfg)
        k = int(cfg.get("num-server-rounds", 0))
        budget = float(cfg.get("local-epochs", 0)) * k
        seed = int(cfg.get("seed", 0))
        final_round = max((r for r in res["rounds"] if r.get("eval")), key=lambda r: r["round"], default=None)
        if final_round is None:
            continue
        for r in res["rounds"]:
            for task, m in r.get("eval", {}).items():
                per_round.append({"cell": cid, "source": "flwr", "method": method, "budget": budget, "rounds": k,
                                  "seed": seed, "round": int(r["round"]), "task": task,
                                  "accuracy": float(m["accuracy"])})
        for task, m in final_round["eval"].items():
            rows.append({"cell": cid, "source": "flwr", "method": method, "budget": budget, "rounds": k,
                         "seed": seed, "alpha": float(cfg.get("alpha", 1.0)), "task": task,
                         "accuracy": float(m["accuracy"])})
    for row in rows:
        ref = reference.get((row["seed"], row["budget"]), {}).get(row["task"])
        row["normalized"] = row["accuracy"] / ref if ref else math.nan
    for row in per_round:
        ref = reference.get((row["seed"], row["budget"]), {}).get(row["task"])
        row["normalized"] = row["accuracy"] / ref if ref else math.nan
    rows.sort(key=lambda r: (r["budget"], method_order(r["method"]), r["rounds"], r["seed"], r["task"]))
    return rows, per_round


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = [x for x in values if not _isnan(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def aggregate(rows: list[dict[str, Any]], metric: str = "accuracy") -> dict[tuple, dict[str, Any]]:
    """(budget, method, rounds) -> {task: (mean, std, n)}, 'average' (mean/std over seeds of the per-seed task average)."""
    by: dict[tuple, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by[(r["budget"], r["method"], r["rounds"])][r["seed"]][r["task"]] = r[metric]
    out = {}
    for key, seeds in by.items():
        tasks = sorted({t for s in seeds.values() for t in s})
        cell = {t: mean_std(seeds[s].get(t, math.nan) for s in seeds) for t in tasks}
        cell["average"] = mean_std(float(np.mean([seeds[s][t] for t in seeds[s]])) for s in seeds)
        cell["seeds"] = sorted(seeds)
        out[key] = cell
    return out


def headline(rows: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """Per method at ``budget``: average accuracy and normalised accuracy, mean ± std over seeds."""
    acc = aggregate([r for r in rows if r["budget"] == budget])
    norm = aggregate([r for r in rows if r["budget"] == budget], "normalized")
    out = []
    for key in sorted(acc, key=lambda k: (method_order(k[1]), k[2])):
        out.append({"method": key[1], "rounds": key[2], "label": method_label(key[1], key[2] or None),
                    "accuracy": acc[key]["average"], "normalized": norm[key]["average"], "seeds": acc[key]["seeds"]})
    return out


def accuracy_vs_budget(rows: list[dict[str, Any]], seed: int | None = 0) -> dict[str, list[tuple[float, float]]]:
    """method label -> [(budget, average accuracy)] for one seed (ATM: one epoch per round, k = budget)."""
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    per = defaultdict(dict)
    for r in rows:
        if seed is not None and r["seed"] != seed:
            continue
        if r["method"].startswith("atm") and r["rounds"] != int(r["budget"]):
            continue  # the budget curve uses one epoch per round
        per[(r["method"], r["budget"], r["seed"])][r["task"]] = r["accuracy"]
    for (m, b, s), accs in per.items():
        series[m][b].append(float(np.mean(list(accs.values()))))
    # ATM with one round of one epoch is the one-shot mean with alpha = 1 (same code path).
    if "atm-mean" in series and 1.0 not in series["atm-mean"] and 1.0 in series.get("mean-untuned", {}):
        series["atm-mean"][1.0] = list(series["mean-untuned"][1.0])
    return {m: sorted((b, float(np.mean(v))) for b, v in d.items()) for m, d in series.items()
            if m != "pretrained"}


def budget_split(rows: list[dict[str, Any]], per_round: list[dict[str, Any]], budget: float,
                 method: str = "atm-mean", seed: int = 0) -> dict[str, Any]:
    """Fixed budget split over k rounds: final average per k (flwr runs), and each run's per-round curve."""
    finals = defaultdict(list)
    for r in rows:
        if r["method"] == method and r["budget"] == budget and r["seed"] == seed:
            finals[r["rounds"]].append(r["accuracy"])
    curves: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in per_round:
        if r["method"] == method and r["budget"] == budget and r["seed"] == seed:
            curves[(r["source"], r["rounds"])][r["round"]].append(r["accuracy"])
    return {"final": {k: float(np.mean(v)) for k, v in sorted(finals.items())},
            "curves": {f"{src} k={k}": [(rd, float(np.mean(v))) for rd, v in sorted(c.items())]
                       for (src, k), c in sorted(curves.items())}}


def mean_abs_offdiag(matrix: list[list[float]]) -> float:
    m = np.asarray(matrix, dtype=float)
    mask = ~np.eye(len(m), dtype=bool)
    return float(np.abs(m[mask]).mean()) if mask.any() else math.nan


def pca_2d(points) -> tuple[np.ndarray, list[float]]:
    """Exact 2-D PCA of n flattened parameter vectors (n × d, n small) via the n × n Gram matrix.

    Returns (n × 2 coordinates, explained-variance ratio of the two components).
    """
    import torch

    x = points.double() if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points), dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    gram = x @ x.T
    vals, vecs = torch.linalg.eigh(gram)
    order = torch.argsort(vals, descending=True)
    vals, vecs = vals[order].clamp_min(0), vecs[:, order]
    k = min(2, len(vals))
    coords = vecs[:, :k] * vals[:k].sqrt()
    if k < 2:
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - k, dtype=coords.dtype)], 1)
    total = float(vals.sum()) or 1.0
    return coords.numpy(), [float(v) / total for v in vals[:2]]
