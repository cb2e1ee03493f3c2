"""Benchmark the merge operators against a summing floor and their reference formulations.

Usage::

    python -m experiments.bench_merge                       # T=7, d=86M (about 2.4 GB of inputs)
    python -m experiments.bench_merge --quick               # d=2,000,003 sanity run, seconds
    python -m experiments.bench_merge --methods mean,ties --json out.json

Every (method, implementation) pair runs in a fresh subprocess, so the peak memory
(``ru_maxrss``) is its own: the reported "peak extra" is the high-water RSS during the
merge minus the RSS once the inputs exist. Each subprocess also times the *floor*, one
straightforward pass summing the T vectors (``acc = v0.clone(); acc += v`` for the
rest), after the merge, so the floor does not enter the merge's memory high-water.
Outputs are compared by a SHA-256 of their bytes (with -0.0 mapped to 0.0), which is
how "equal to reference" is decided.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

METHODS = ("mean", "sum", "ties", "breadcrumbs", "dare", "dare_ties")


def vit_like_layout(d: int) -> list[tuple[str, tuple[int, ...]]]:
    """A ViT-B/16-shaped layout (CLIP visual tower) truncated or padded to exactly d entries.

    Width 768 when d >= 20M, else 64 (so quick runs still have many rows). Blocks are
    added while they fit; the rest is one 1-D tensor; a 0-dim ``logit_scale`` is included.
    """
    w = 768 if d >= 20_000_000 else 64
    stem = [("conv1.weight", (w, 3, 16, 16)), ("class_embedding", (w,)),
            ("positional_embedding", (197, w)), ("ln_pre.weight", (w,)), ("ln_pre.bias", (w,))]
    block = [("ln_1.weight", (w,)), ("ln_1.bias", (w,)), ("attn.in_proj_weight", (3 * w, w)),
             ("attn.in_proj_bias", (3 * w,)), ("attn.out_proj.weight", (w, w)), ("attn.out_proj.bias", (w,)),
             ("ln_2.weight", (w,)), ("ln_2.bias", (w,)), ("mlp.c_fc.weight", (4 * w, w)),
             ("mlp.c_fc.bias", (4 * w,)), ("mlp.c_proj.weight", (w, 4 * w)), ("mlp.c_proj.bias", (w,))]
    tail = [("ln_post.weight", (w,)), ("ln_post.bias", (w,)), ("proj", (w, 512))]

    def numel(shape):
        n = 1
        for s in shape:
            n *= s
        return n

    out, total, budget = [("logit_scale", ())], 1, d
    for name, shape in stem:
        if total + numel(shape) <= budget:
            out.append((name, shape))
            total += numel(shape)
    i = 0
    while total + sum(numel(s) for _, s in block) <= budget:
        out += [(f"blocks.{i}.{n}", s) for n, s in block]
        total += sum(numel(s) for _, s in block)
        i += 1
    for name, shape in tail:
        if total + numel(shape) <= budget:
            out.append((name, shape))
            total += numel(shape)
    if total < d:
        out.append(("rest", (d - total,)))
    return out


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _worker(method: str, impl: str, d: int, tasks: int, seed: int, repeat: int) -> dict:
    """Run one method in this (fresh) process and return its measurements."""
    import torch

    from atm_fl.merge import ops, reference

    mod = ops if impl == "fast" else reference
    gen = torch.Generator().manual_seed(seed)
    # normal_ in place: no temporary beyond the inputs themselves.
    vs = [torch.empty(d).normal_(generator=gen) for _ in range(tasks)]
    layout = vit_like_layout(d)
    calls = {
        "mean": lambda: mod.merge_mean(vs),
        "sum": lambda: mod.merge_sum(vs),
        "ties": lambda: mod.merge_ties(vs, density=0.2),
        "breadcrumbs": lambda: mod.merge_breadcrumbs(vs, layout, 0.85, 0.993),
        "dare": lambda: mod.merge_dare(vs, p=0.9, then="mean"),
        "dare_ties": lambda: mod.merge_dare(vs, p=0.9, then="ties", density=0.2),
    }
    rss0 = _rss_kb()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], None
    for _ in range(repeat):
        out = None
        t0 = time.perf_counter()
        out = calls[method]()
        times.append(time.perf_counter() - t0)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256((out + 0.0).numpy().tobytes()).hexdigest()
    del out

    floors = []
    for _ in range(3):
        t0 = time.perf_counter()
        acc = vs[0].clone()
        for v in vs[1:]:
            acc.add_(v)
        floors.append(time.perf_counter() - t0)
        del acc
    return {
        "method": method, "impl": impl, "d": d, "tasks": tasks, "seed": seed,
        "wall_s": min(times), "wall_all_s": times, "floor_s": min(floors),
        "peak_extra_mb": max(0, maxrss - rss0) / 1024, "input_mb": d * tasks * 4 / 2**20,
        "maxrss_before_over_rss0_mb": max(0, maxrss_before - rss0) / 1024,
        "sha256": digest, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def _run_sub(method: str, impl: str, args) -> dict:
    cmd = [sys.executable, "-m", "experiments.bench_merge", "--_worker", method, impl,
           "--d", str(args.d), "--tasks", str(args.tasks), "--seed", str(args.seed),
           "--repeat", str(args.repeat if impl == "fast" else 1)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{method}/{impl} failed (rc={res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=86_000_000, help="entries per task vector (default 86,000,000)")
    ap.add_argument("--tasks", type=int, default=7, help="number of task vectors T (default 7)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS)}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    ap.add_argument("--repeat", type=int, default=2, help="timed repeats of the fast method, best kept (default 2)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference runs")
    ap.add_argument("--quick", action="store_true", help="small sanity run: d=2,000,003, repeat 3")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--_worker", nargs=2, metavar=("METHOD", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(_worker(args._worker[0], args._worker[1], args.d, args.tasks, args.seed, args.repeat)))
        return 0
    if args.quick:
        args.d, args.repeat = 2_000_003, 3
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")

    print(f"# d={args.d:,} T={args.tasks} inputs={args.d * args.tasks * 4 / 2**30:.2f} GiB "
          f"cpu='{_cpu_model()}' cores={os.cpu_count()}", flush=True)
    head = f"{'method':<12}{'impl':<6}{'wall s':>9}{'peak extra MB':>15}{'x floor':>9}{'ref/fast':>10}{'equal':>7}"
    print(head)
    rows = []
    for m in methods:
        fast = _run_sub(m, "fast", args)
        ref = None if args.no_reference else _run_sub(m, "ref", args)
        for r in (fast, ref):
            if r is None:
                continue
            r["x_floor"] = r["wall_s"] / fast["floor_s"]
            r["speedup_vs_ref"] = (ref["wall_s"] / r["wall_s"]) if ref else None
            r["equal_to_ref"] = (r["sha256"] == ref["sha256"]) if ref else None
            rows.append(r)
            sp = f"{r['speedup_vs_ref']:.1f}" if r["speedup_vs_ref"] else "-"
            eq = {True: "yes", False: "NO", None: "-"}[r["equal_to_ref"]]
            print(f"{m:<12}{r['impl']:<6}{r['wall_s']:>9.2f}{r['peak_extra_mb']:>15.0f}"
                  f"{r['x_floor']:>9.1f}{sp:>10}{eq:>7}", flush=True)
    floors = [r["floor_s"] for r in rows if r["impl"] == "fast"]
    print(f"# floor (sum of T vectors), per fast run: min {min(floors):.3f} s, max {max(floors):.3f} s")
    if args.json:
        meta = {"cpu": _cpu_model(), "cores": os.cpu_count(), "d": args.d, "tasks": args.tasks,
                "argv": sys.argv, "python": platform.python_version()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
