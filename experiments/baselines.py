"""Baselines on the same budget and data as the ATM runs, in-process, through ``TaskRuntime``.

One call (one seed) computes, for every budget B it is given:

* ``pretrained``: the pretrained backbone with each task's frozen head;
* ``finetuned``: each task fine-tuned alone for B epochs (its own model; the per-task
  reference for normalised accuracy);
* one-shot merges of the single-task vectors (``MERGES``), each with α tuned on the
  validation split and with the paper's untuned α = 1;
* ``joint``: multi-task fine-tuning of one backbone on the union of the tasks for B
  epochs (each task's examples through its own frozen head; see ``joint_finetune``);

plus, for the analyses: each epoch's share of the gradient norm during single-task
fine-tuning, and an in-process replay of ATM (task vectors per round for the cosine
analysis, bases per round for the PCA).

Same code paths as the clients: data, heads, fine-tuning (``TaskRuntime.train_round``,
``atm_fl.train.finetune``), evaluation (``TaskRuntime.evaluate``) and merging (the
registry plugins with a ``MergeContext``) are the ones the ClientApp and the strategy
call. Single-task fine-tuning runs once, for the largest budget; the vectors of the
smaller budgets are snapshots taken at the epoch boundaries of that one run (with a
constant learning rate, a fresh optimiser and the seeded example stream, the first B
epochs of a longer run are exactly a B-epoch run; when the batch size does not divide
the training set the snapshot is taken after the batch that crosses the boundary).

Usage: ``python -m experiments.baselines --spec spec.json --out DIR`` (the sweep writes
the spec; see docs/experiments.md). Writes ``DIR/results.json`` with ``status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger("experiments.baselines")


@dataclass(frozen=True)
class MergeSpec:
    """A one-shot baseline: a registry plugin, its parameters, its α grid and untuned α."""

    plugin: str
    params: str
    grid: tuple[float, ...]
    untuned: float | None = 1.0
    label: str = ""


def _grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step))
    return tuple(round(lo + i * step, 6) for i in range(n + 1))


# Grids per docs/experiments.md (shared/notes/merging.md): task arithmetic (sum) 0.05–1.0 in
# 0.05 steps; the mean-type merges (TIES' disjoint mean, Breadcrumbs and DARE means) are
# about T times smaller than a sum, so their grid is wider: 0.1–3.0 in 0.1 steps.
MERGES: dict[str, MergeSpec] = {
    "sum": MergeSpec("sum", "", _grid(0.05, 1.0, 0.05), untuned=None, label="task arithmetic (sum)"),
    "mean": MergeSpec("mean", "", _grid(0.1, 3.0, 0.1), untuned=1.0, label="mean"),
    "ties": MergeSpec("ties", "density=0.15", _grid(0.1, 3.0, 0.1), untuned=1.0, label="TIES (density 0.15)"),
    "breadcrumbs": MergeSpec("breadcrumbs", "lower=0.85,upper=0.993", _grid(0.1, 3.0, 0.1), untuned=1.0,
                             label="Breadcrumbs (0.85, 0.993)"),
    "dare": MergeSpec("dare", "p=0.9,then=mean", _grid(0.1, 3.0, 0.1), untuned=1.0, label="DARE-mean (p 0.9)"),
    # The SVD-based merges sit on the scale of the sum (docs/merging.md): α = 1 is their authors'
    # merged model for a one-shot merge, so they are tuned over the sum's range and a little beyond.
    "tsv-m": MergeSpec("tsv-m", "", _grid(0.05, 2.0, 0.05), untuned=None, label="TSV-M"),
    "iso-c": MergeSpec("iso-c", "", _grid(0.05, 2.0, 0.05), untuned=None, label="Iso-C"),
    "iso-cts": MergeSpec("iso-cts", "", _grid(0.05, 2.0, 0.05), untuned=None, label="Iso-CTS (common 0.8)"),
}
# "mean" tuned is the same family of models as "sum" tuned (mean·α = sum·α/T); the sweep
# runs "mean" untuned only unless asked (tuned = False below).
TUNE_BY_DEFAULT = {"sum": True, "mean": False, "ties": True, "breadcrumbs": True, "dare": True,
                   "tsv-m": True, "iso-c": True, "iso-cts": True}


# Fine-tuning alone and joint training are one uninterrupted run with a constant lr (what the
# per-epoch gradient analysis and the budget snapshots assume), whatever the embedded default's
# client settings; a grid's [run-config] may still set these keys.
PLAIN_CLIENT = {"client-optimizer-state": "fresh", "client-moment-warmup": 0, "client-lr-warmup": 0,
                "epoch-budget": 0.0}


# --- metrics --------------------------------------------------------------------------------

def normalized_accuracy(merged: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Per task merged ÷ fine-tuned-alone accuracy (NaN where the reference is missing or 0)."""
    out = {}
    for t, a in merged.items():
        r = reference.get(t)
        out[t] = float(a) / float(r) if r not in (None, 0) and not _isnan(r) and not _isnan(a) else math.nan
    return out


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def mean_of(values: dict[str, float]) -> float:
    vals = [v for v in values.values() if not _isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def tune_alpha(score: Callable[[float], float], grid: Sequence[float], search: str = "full",
               coarse_stride: int = 4) -> tuple[float, list[tuple[float, float]]]:
    """The α of ``grid`` with the highest ``score(α)`` (first one on ties), and every (α, score) tried.

    ``score`` must be computed on the validation split; the caller evaluates the chosen α
    on test. ``search='full'`` tries every point. ``'coarse-fine'`` tries every
    ``coarse_stride``-th point (ends included), then halves the stride around the best
    point until neighbouring grid points have been tried: the full-grid answer whenever
    the score is unimodal on the grid, for about a third of the evaluations.
    """
    grid = sorted(float(a) for a in grid)
    if not grid:
        raise ValueError("empty alpha grid")
    tried: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in tried:
            tried[i] = float(score(grid[i]))
            log.info("alpha %.3g: val score %.4f", grid[i], tried[i])
        return tried[i]

    if search == "full" or len(grid) <= 3:
        for i in range(len(grid)):
            at(i)
    elif search == "coarse-fine":
        stride = max(1, coarse_stride)
        for i in sorted(set(range(0, len(grid), stride)) | {len(grid) - 1}):
            at(i)
        while True:
            best = max(sorted(tried), key=lambda i: (tried[i], -i))
            stride = max(1, stride // 2)
            for j in (best - stride, best + stride):
                if 0 <= j < len(grid):
                    at(j)
            if stride == 1:
                break
    else:
        raise ValueError(f"alpha search {search!r}: use 'full' or 'coarse-fine'")
    best = max(sorted(tried), key=lambda i: (tried[i], -i))
    return grid[best], [(grid[i], tried[i]) for i in sorted(tried)]


# --- fine-tuning instrumentation --------------------------------------------------------------

@contextmanager
def watch_finetune(params: Sequence[torch.Tensor], n: int, batch_size: int, snapshot_epochs: Sequence[float],
                   base_flat: torch.Tensor):
    """Instrument the next ``finetune`` call through a global optimiser step hook (no change to it).

    Yields a dict that fills with ``snapshots`` (epoch -> flat task vector after that
    epoch), ``epoch_grads`` (epoch index -> sum of that epoch's step gradients, flat).
    The gradient is read after each step (Flower clients clear it only at the next step).
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    watched = {id(p) for p in params}
    state: dict[str, Any] = {"snapshots": {}, "epoch_grads": {}, "step": 0}
    pending = sorted(float(e) for e in snapshot_epochs)

    def flat_of(tensors) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])

    def hook(opt, args, kwargs):
        ps = [p for g in opt.param_groups for p in g["params"]]
        if not ps or id(ps[0]) not in watched:
            return
        state["step"] += 1
        first_example = (state["step"] - 1) * batch_size
        epoch = first_example // n
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        g = flat_of(grads)
        acc = state["epoch_grads"].get(epoch)
        state["epoch_grads"][epoch] = g if acc is None else acc.add_(g)
        seen = state["step"] * batch_size
        while pending and seen >= pending[0] * n - 1e-9:
            state["snapshots"][pending.pop(0)] = flat_of(ps) - base_flat

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def epoch_gradient_shares(epoch_grads: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Each epoch's ‖Σ step gradients‖ over the sum across epochs, and its cosine with epoch 1."""
    epochs = sorted(epoch_grads)
    norms = [float(epoch_grads[e].double().norm()) for e in epochs]
    total = sum(norms) or 1.0
    g1 = epoch_grads[epochs[0]].double()
    cos = [float(torch.nn.functional.cosine_similarity(epoch_grads[e].double(), g1, dim=0)) for e in epochs]
    return {"share": [x / total for x in norms], "norm": norms, "cosine_with_first": cos}


def cosine_matrix(vectors: Sequence[torch.Tensor]) -> list[list[float]]:
    v = torch.stack([x.double() for x in vectors])
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (v @ v.T).tolist()


# --- joint multi-task fine-tuning ---------------------------------------------------------------

def joint_finetune(runtimes: dict, settings, epochs: float, seed: int, snapshot_epochs: Sequence[float],
                   base_flat: torch.Tensor) -> dict[float, torch.Tensor]:
    """Fine-tune one backbone on the union of the tasks; returns epoch -> flat task vector.

    Schedule: proportionally interleaved round-robin. Task t's batches come from the
    same seeded example stream its single-task fine-tuning uses (``example_stream``), and
    its j-th batch is placed at position (j + 0.5) / (number of its batches); batches run
    in order of position, so with equal-sized tasks it is plain round-robin and every task
    reaches epoch e at the same point. One optimiser step per batch, each task's examples
    through its own frozen head; same optimiser, lr and batch size as the clients. Total
    examples seen = the single-task runs' total (the same epochs), in T times as many steps
    as one task's run, each step on one task's batch.
    """
    from atm_fl.models.base import inputs_of
    from atm_fl.train import example_stream, make_optimizer

    tasks = list(runtimes)
    backbone = runtimes[tasks[0]].backbone
    backbone.load_state_dict(runtimes[tasks[0]].pretrained, strict=True)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings)
    bs = settings.batch_size
    schedule = []
    for t in tasks:
        n = len(runtimes[t].train["labels"])
        total = max(1, int(round(epochs * n)))
        order = example_stream(n, 0, total, seed)
        nb = math.ceil(total / bs)
        for j in range(nb):
            schedule.append(((j + 0.5) / nb, t, order[j * bs:(j + 1) * bs], min((j + 1) * bs, total) / n))
    schedule.sort(key=lambda s: (s[0], tasks.index(s[1])))
    backbone.to(settings.device).train()
    for t in tasks:
        runtimes[t].head.to(settings.device).eval()
    # head-center = site: every head's center is re-estimated on the shared backbone at the
    # start and after every quarter epoch (the embedded default's round length).
    recenter_at = [q / (4 * epochs) for q in range(int(4 * epochs) + 1)]

    def recenter_due(pos: float) -> None:
        if recenter_at and pos >= recenter_at[0] - 1e-12:
            while recenter_at and pos >= recenter_at[0] - 1e-12:
                recenter_at.pop(0)
            for t in tasks:
                runtimes[t].recenter(backbone)
            backbone.train()

    pending = sorted(float(e) for e in snapshot_epochs)
    snaps: dict[float, torch.Tensor] = {}
    t0 = time.perf_counter()
    for i, (pos, t, idx, _) in enumerate(schedule, start=1):
        recenter_due(pos)
        data = runtimes[t].train
        batch = {k: v[idx].to(settings.device) for k, v in data.items()}
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(runtimes[t].head(backbone(**inputs_of(batch))), batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"joint fine-tuning: loss became {float(loss)} at step {i} ({t}); lower lr")
        loss.backward()
        if settings.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        opt.step()
        if i % max(1, len(schedule) // 8) == 0:
            log.info("joint step %d/%d (%s) loss %.4f", i, len(schedule), t, loss.item())
        nxt = schedule[i][0] if i < len(schedule) else math.inf
        while pending and nxt > pending[0] / epochs - 1e-12:
            snaps[pending.pop(0)] = torch.cat([p.detach().reshape(-1).float().cpu() for p in params]) - base_flat
    backbone.eval()
    log.info("joint fine-tuning: %d steps in %.1fs", len(schedule), time.perf_counter() - t0)
    return snaps


# --- the baselines of one seed -----------------------------------------------------------------

def run_baselines(run_config: dict[str, Any], spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Compute every baseline of ``spec`` for one seed; writes and returns ``results.json``'s content."""
    from atm_fl.config import parse_run_config
    from atm_fl.runtime import get_task_runtime
    from atm_fl.task_vector import Layout, apply_update, flatten, unflatten
    from atm_fl.plugins import MergeContext, resolve_merge

    from experiments.analyses import pca_2d

    t_start = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(spec["seed"])
    budgets = sorted(float(b) for b in spec["budgets"])
    bmax = max(budgets)
    cfg = parse_run_config({**PLAIN_CLIENT, **run_config, "seed": seed, "local-epochs": bmax})
    tasks = cfg.task_list
    result: dict[str, Any] = {"kind": "baselines", "status": "running", "error": "", "seed": seed, "tasks": tasks,
                              "budgets": budgets, "config": cfg.to_dict(), "spec": spec, "rows": [],
                              "alpha_search": {}, "grad_norm": {}, "cosine": {}, "replay": {}, "timings": {}}

    def write():
        result["wall_seconds"] = time.time() - t_start
        (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=float))

    def timed(name):
        @contextmanager
        def cm():
            t0 = time.perf_counter()
            yield
            result["timings"][name] = result["timings"].get(name, 0.0) + time.perf_counter() - t0
            log.info("%s: %.1fs", name, time.perf_counter() - t0)
        return cm()

    try:
        with timed("load"):
            rts = {t: get_task_runtime(cfg, t) for t in tasks}
        n_tune = int(spec.get("tune-examples", 0) or 0)
        if n_tune > 0:
            # Validation subset for alpha tuning and the normalising val references: the first
            # n_tune examples of the (already seeded, shuffled) validation subset.
            for rt in rts.values():
                rt.val = {k: v[:n_tune] for k, v in rt.val.items()}
        result["val_examples"] = {t: len(rts[t].val["labels"]) for t in tasks}
        rt0 = rts[tasks[0]]
        pre = rt0.pretrained
        layout = Layout.of(pre, rt0.keys)
        base_flat = flatten({k: pre[k].float() for k in rt0.keys}, layout)
        result["merged_parameters"] = layout.numel

        def state_of(flat_vec: torch.Tensor, alpha: float = 1.0) -> dict[str, torch.Tensor]:
            return apply_update(pre, unflatten(flat_vec, layout), alpha)

        # A tuning cell (run-config evaluate-split = "val") scores its "test" rows on validation too,
        # so the test split never chooses a setting; ``collect_rows`` leaves such cells out of the test
        # tables and ``tuning_rows`` lists them.
        report_split = cfg.evaluate_split

        def evaluate(state_by_task: Callable[[str], dict], split: str) -> dict[str, float]:
            split = report_split if split == "test" else split
            return {t: rts[t].evaluate(state_by_task(t), split)["accuracy"] for t in tasks}

        def add_row(method: str, budget: float, test: dict, val: dict | None = None, **extra):
            result["rows"].append({"method": method, "budget": budget, "seed": seed, "accuracy": test,
                                   "val_accuracy": val, **extra})
            log.info("%-24s budget %-4g %s avg %.4f", method, budget, report_split, mean_of(test))

        with timed("evaluate pretrained"):
            pre_val = evaluate(lambda t: pre, "val")
            add_row("pretrained", 0.0, evaluate(lambda t: pre, "test"), pre_val)
        write()

        # Single-task fine-tuning, once for the largest budget; smaller budgets are snapshots.
        vecs: dict[float, dict[str, torch.Tensor]] = {b: {} for b in budgets}
        with timed("single-task fine-tuning"):
            for t in tasks:
                rt = rts[t]
                params = [p for p in rt.backbone.parameters() if p.requires_grad]
                with watch_finetune(params, len(rt.train["labels"]), rt.settings.batch_size, budgets,
                                    base_flat) as w:
                    tv, metrics = rt.train_round(pre, 1)
                final = flatten({k: v.float() for k, v in tv.items()}, layout)
                for b in budgets:
                    vecs[b][t] = w["snapshots"].get(b, final) if b < bmax else final
                result["grad_norm"][t] = epoch_gradient_shares(w["epoch_grads"])
                log.info("%s: fine-tuned %g epochs (loss %.4f, |tau| %.4g); gradient-norm shares per epoch %s", t,
                         bmax, metrics["loss"], metrics["update-norm"],
                         [round(s, 3) for s in result["grad_norm"][t]["share"]])
        ft_val: dict[float, dict[str, float]] = {}
        with timed("evaluate fine-tuned"):
            for b in budgets:
                ft_val[b] = evaluate(lambda t: state_of(vecs[b][t]), "val")
                add_row("finetuned", b, evaluate(lambda t: state_of(vecs[b][t]), "test"), ft_val[b])
                result["cosine"][f"one-shot b{b:g}"] = {"tasks": tasks,
                                                        "matrix": cosine_matrix([vecs[b][t] for t in tasks])}
        write()

        # One-shot merges: tune alpha on val (mean normalised val accuracy), evaluate on test.
        pca_points: list[tuple[str, str, torch.Tensor]] = [("pretrained", "pretrained", torch.zeros_like(base_flat))]
        for t in tasks:
            pca_points.append((f"finetuned {t}", "finetuned", vecs[bmax][t]))
        grids = {**{k: list(v.grid) for k, v in MERGES.items()}, **spec.get("alpha-grid", {})}
        for b in budgets:
            for name in spec.get("merges", {}).get(f"{b:g}", []):
                ms = MERGES[name]
                method, params = resolve_merge(ms.plugin, ms.params)
                ctx = MergeContext(layout=layout, tasks=tuple(tasks), server_round=1, seed=seed)
                with timed(f"merge {name}"):
                    m = method([vecs[b][t] for t in tasks], ctx, **params)
                if ms.untuned is not None:
                    with timed(f"evaluate {name}"):
                        st = state_of(m, ms.untuned)
                        add_row(f"{name}-untuned", b, evaluate(lambda t: st, "test"), alpha=ms.untuned)
                        if b == bmax:
                            pca_points.append((f"{name} α={ms.untuned:g}", "one-shot", m * ms.untuned))
                fixed = spec.get("alpha-fixed", {}).get(f"{name} b{b:g}")
                if fixed is not None and (TUNE_BY_DEFAULT.get(name, True) or name in spec.get("tune", [])):
                    # Alpha tuned on another seed's validation split (grid key reuse-alpha-from-seed).
                    st = state_of(m, fixed)
                    add_row(f"{name}-tuned", b, evaluate(lambda t: st, "test"), None, alpha=fixed,
                            alpha_from_seed=spec.get("alpha-from-seed"))
                    if b == bmax:
                        pca_points.append((f"{name} α={fixed:g} (tuned)", "one-shot", m * fixed))
                elif TUNE_BY_DEFAULT.get(name, True) or name in spec.get("tune", []):
                    vals: dict[float, dict[str, float]] = {}

                    def score(alpha: float) -> float:
                        st = state_of(m, alpha)
                        vals[alpha] = evaluate(lambda t: st, "val")
                        return mean_of(normalized_accuracy(vals[alpha], ft_val[b]))

                    with timed(f"tune {name}"):
                        best, tried = tune_alpha(score, grids[name], spec.get("alpha-search", "coarse-fine"))
                    result["alpha_search"][f"{name} b{b:g}"] = [{"alpha": a, "val_normalized": s} for a, s in tried]
                    st = state_of(m, best)
                    add_row(f"{name}-tuned", b, evaluate(lambda t: st, "test"), vals[best], alpha=best)
                    if b == bmax:
                        pca_points.append((f"{name} α={best:g} (tuned)", "one-shot", m * best))
                write()

        if spec.get("joint"):
            with timed("joint fine-tuning"):
                snaps = joint_finetune(rts, rt0.settings, bmax, seed, budgets, base_flat)
            for b in budgets:
                st = state_of(snaps[b])
                add_row("joint", b, evaluate(lambda t: st, "test"), evaluate(lambda t: st, "val"))
            pca_points.append(("joint", "joint", snaps[bmax]))
            write()

        replay = spec.get("replay")
        if replay:
            with timed("ATM replay"):
                traj = replay_atm(run_config, seed, tasks, layout, replay, result)
            pca_points.extend(traj)
            write()

        with timed("pca"):
            xy, explained = pca_2d(torch.stack([p[2] for p in pca_points]))
        result["pca"] = {"explained_variance_ratio": explained,
                         "points": [{"label": lab, "kind": kind, "xy": list(map(float, xy[i]))}
                                    for i, (lab, kind, _) in enumerate(pca_points)]}
        result["status"] = "finished"
    except BaseException as exc:
        result["status"], result["error"] = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        write()
    return result


def replay_atm(run_config: dict[str, Any], seed: int, tasks: list[str], layout, replay: dict[str, Any],
               result: dict[str, Any]) -> list[tuple[str, str, torch.Tensor]]:
    """ATM in-process, with the clients' TaskRuntime and the strategy's merge plugin and update.

    Records per round: the pairwise cosine matrix of the task vectors, the test accuracy
    of the new base; returns the bases (as flat offsets from the pretrained model) for the PCA.
    """
    from atm_fl.config import parse_run_config
    from atm_fl.runtime import get_task_runtime
    from atm_fl.task_vector import apply_update, flatten, unflatten
    from atm_fl.plugins import MergeContext, resolve_merge

    budget, rounds = float(replay.get("budget", 4)), int(replay.get("rounds", 4))
    method_name, alpha = str(replay.get("method", "mean")), float(replay.get("alpha", 1.0))
    cfg = parse_run_config({**PLAIN_CLIENT, **run_config, "seed": seed, "local-epochs": budget / rounds,
                            "num-server-rounds": rounds, "merge-method": method_name})
    method, params = resolve_merge(method_name, str(replay.get("merge-params", "")))
    rts = {t: get_task_runtime(cfg, t) for t in tasks}
    pre = rts[tasks[0]].pretrained
    keys = rts[tasks[0]].keys
    base_flat = flatten({k: pre[k].float() for k in keys}, layout)
    base = dict(pre)
    label = f"atm-{method_name}-b{budget:g}-k{rounds}"
    rec = {"method": method_name, "budget": budget, "rounds": rounds, "alpha": alpha, "per_round": []}
    out = []
    for r in range(1, rounds + 1):
        flat = []
        for t in tasks:
            tv, _ = rts[t].train_round(base, r)
            flat.append(flatten({k: v.float() for k, v in tv.items()}, layout))
        ctx = MergeContext(layout=layout, tasks=tuple(tasks), server_round=r, seed=seed)
        merged = method(flat, ctx, **params)
        base = apply_update(base, unflatten(merged, layout), alpha)
        acc = {t: rts[t].evaluate(base, "test")["accuracy"] for t in tasks}
        result["cosine"][f"{label} r{r}"] = {"tasks": tasks, "matrix": cosine_matrix(flat)}
        rec["per_round"].append({"round": r, "accuracy": acc, "average": mean_of(acc),
                                 "task_vector_norms": [float(v.norm()) for v in flat]})
        log.info("replay %s round %d/%d: test avg %.4f", label, r, rounds, mean_of(acc))
        out.append((f"ATM round {r}", "atm", flatten({k: base[k].float() for k in keys}, layout) - base_flat))
    result["replay"][label] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="JSON file: {'run-config': {...}, 'baselines': {...}}")
    p.add_argument("--out", required=True, help="output directory (results.json goes there)")
    args = p.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    run_baselines(spec["run-config"], spec["baselines"], Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
