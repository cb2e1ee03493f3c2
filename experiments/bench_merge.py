"""Benchmark the merge operators against a summing floor and their reference formulations.

Usage::

    python -m experiments.bench_merge                      # T=7, d=86,192,640 (ViT-B-16 visual tower)
    python -m experiments.bench_merge --d 2000003          # quick run, seconds
    python -m experiments.bench_merge --methods mean,ties --out results.json --out results.md

Method
------
Every (method, implementation) pair runs in a fresh subprocess, which builds the T
random float32 inputs in place (``torch.empty(d).normal_()``, no temporaries) and then:

* **peak extra memory**: the high-water resident set size (``ru_maxrss``) after the
  first call of the merge, minus the resident set size just before it (inputs already
  built and touched). ``ru_maxrss`` is the kernel's own high-water mark, so short
  peaks count. The subprocess checks that the high-water before the call was not
  above the RSS at that point (else the delta could hide part of the peak) and
  reports it. The output itself (4·d bytes) is part of the peak extra.
* **wall time**: ``--repeat`` timed calls (``time.perf_counter``); each is paired with
  one timing of the **floor**, a single straightforward pass that sums the T vectors
  in the same process (``acc = v0.clone(); acc += v1; ...``, torch's default threads).
  Reported: the median wall time, the median floor time, and their ratio. Reference
  implementations run once (they take long), against the median floor of their own
  subprocess.
* **equality**: the SHA-256 of the output bytes (with -0.0 mapped to 0.0) of the fast
  and the reference implementation must match.

The machine may be shared: the load average at the start and end of each subprocess
is recorded, so noisy runs can be spotted and repeated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from experiments.machine import machine_info

METHODS = ("mean", "sum", "ties", "breadcrumbs", "dare", "dare_ties")
VIT_B16_VISUAL = 86_192_640


def vit_like_layout(d: int) -> list[tuple[str, tuple[int, ...]]]:
    """The layout of open_clip's ViT-B-16 visual tower, cut or extended to exactly d entries.

    For ``d = 86,192,640`` it is exactly that tower (conv stem, 12 residual blocks of
    width 768, projection 768x512). Other sizes keep the stem and as many blocks as fit
    (width 768, or 64 when d < 20M so small runs still have many blocks), and put the
    remainder in one 1-D tensor.
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

    out, total = [], 0
    for name, shape in stem:
        if total + numel(shape) <= d:
            out.append((name, shape))
            total += numel(shape)
    per_block = sum(numel(s) for _, s in block)
    tail_size = sum(numel(s) for _, s in tail)
    n_blocks = max(0, (d - total - tail_size) // per_block)
    if n_blocks == 0:
        n_blocks = (d - total) // per_block              # the tail does not fit anyway
    for i in range(n_blocks):
        out += [(f"transformer.resblocks.{i}.{n}", s) for n, s in block]
    total += n_blocks * per_block
    for name, shape in tail:
        if total + numel(shape) <= d:
            out.append((name, shape))
            total += numel(shape)
    if total < d:
        out.append(("rest", (d - total,)))
    return out


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _worker(method: str, impl: str, d: int, tasks: int, seed: int, repeat: int) -> dict:
    """Run one method in this (fresh) process and return its measurements."""
    import torch

    from atm_fl.merge import ops, reference

    load0 = os.getloadavg()[0]
    mod = ops if impl == "fast" else reference
    gen = torch.Generator().manual_seed(seed)
    vs = [torch.empty(d).normal_(generator=gen) for _ in range(tasks)]   # in place: no temporaries
    layout = vit_like_layout(d)
    calls = {
        "mean": lambda: mod.merge_mean(vs),
        "sum": lambda: mod.merge_sum(vs),
        "ties": lambda: mod.merge_ties(vs, density=0.2),
        "breadcrumbs": lambda: mod.merge_breadcrumbs(vs, layout, 0.85, 0.993),
        "dare": lambda: mod.merge_dare(vs, p=0.9, then="mean"),
        "dare_ties": lambda: mod.merge_dare(vs, p=0.9, then="ties", density=0.2),
    }

    def floor() -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        acc = vs[0].clone()
        for v in vs[1:]:
            acc.add_(v)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        del acc
        return dt, dc

    def timed() -> tuple[float, float, object]:
        c0, t0 = time.process_time(), time.perf_counter()
        out = calls[method]()
        return time.perf_counter() - t0, time.process_time() - c0, out

    rss0 = _rss_kb()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu, out = timed()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256((out + 0.0).numpy().tobytes()).hexdigest()
    del out
    times, cpus, floors, floor_cpus = [wall], [cpu], [], []
    f, fc = floor()
    floors.append(f)
    floor_cpus.append(fc)
    for _ in range(repeat - 1):
        wall, cpu, out = timed()
        del out
        times.append(wall)
        cpus.append(cpu)
        f, fc = floor()
        floors.append(f)
        floor_cpus.append(fc)
    if impl != "fast":
        for _ in range(2):
            f, fc = floor()
            floors.append(f)
            floor_cpus.append(fc)
    return {
        "method": method, "impl": impl, "d": d, "tasks": tasks, "seed": seed,
        "wall_s": statistics.median(times), "wall_all_s": times,
        "floor_s": statistics.median(floors), "floor_all_s": floors,
        "cpu_s": statistics.median(cpus), "floor_cpu_s": statistics.median(floor_cpus),
        "peak_extra_mb": max(0, maxrss - rss0) / 1024, "input_mb": d * tasks * 4 / 2**20,
        "maxrss_before_minus_rss0_mb": (maxrss_before - rss0) / 1024,
        "sha256": digest, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
    }


#: Peak extra memory of the reference implementations, in multiples of the inputs
#: (measured at d = 20M, rounded up; they build [T, d] temporaries). Used to skip a reference run
#: that would not fit in the memory available, rather than risk the OOM killer.
REF_MEMORY = {"mean": 1.0, "sum": 1.0, "ties": 3.0, "breadcrumbs": 2.3, "dare": 2.3, "dare_ties": 4.0}


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _run_sub(method: str, impl: str, args) -> dict | None:
    if impl == "ref":
        need = (1.0 + REF_MEMORY[method]) * args.d * args.tasks * 4 / 2**20
        have = _mem_available_mb()
        if need > 0.85 * have:
            print(f"# {method}/ref skipped: needs about {need:.0f} MiB, {have:.0f} MiB available", flush=True)
            return None
    cmd = [sys.executable, "-m", "experiments.bench_merge", "--_worker", method, impl,
           "--d", str(args.d), "--tasks", str(args.tasks), "--seed", str(args.seed),
           "--repeat", str(args.repeat if impl == "fast" else 1)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{method}/{impl} failed (rc={res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"d = {meta['d']:,}, T = {meta['tasks']}, inputs {meta['input_mb']:.0f} MiB; "
             f"{meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, {meta['threads']} threads; "
             f"median of {meta['repeat']} runs (reference: 1 run)", "",
             "| method | impl | wall s | floor s | × floor | CPU × floor | reference ÷ fast | peak extra MiB | "
             "peak ÷ inputs | equal to reference | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_ref']:.1f}" if r.get("speedup_vs_ref") else "–"
        eq = {True: "yes", False: "**NO**", None: "–"}[r.get("equal_to_ref")]
        lines.append(f"| {r['method']} | {r['impl']} | {r['wall_s']:.2f} | {r['floor_s']:.3f} | "
                     f"{r['x_floor']:.1f} | {r['cpu_x_floor']:.1f} | {sp} | {r['peak_extra_mb']:.0f} | "
                     f"{r['peak_extra_mb'] / r['input_mb']:.2f} | {eq} | "
                     f"{r['loadavg_start']:.1f}–{r['loadavg_end']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=VIT_B16_VISUAL,
                    help=f"entries per task vector (default {VIT_B16_VISUAL:,}, the ViT-B-16 visual tower)")
    ap.add_argument("--tasks", type=int, default=7, help="number of task vectors T (default 7)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS)}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each fast method; median kept (default 5)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference runs")
    ap.add_argument("--out", action="append", default=[],
                    help="write results here: *.md gets a markdown table, anything else JSON (repeatable)")
    ap.add_argument("--_worker", nargs=2, metavar=("METHOD", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(_worker(args._worker[0], args._worker[1], args.d, args.tasks, args.seed, args.repeat)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")

    info = machine_info()
    meta = {**info, "threads": info["torch_threads"], "d": args.d, "tasks": args.tasks,
            "input_mb": args.d * args.tasks * 4 / 2**20, "repeat": args.repeat,
            "command": "python -m experiments.bench_merge " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(f"# d={args.d:,} T={args.tasks} inputs={meta['input_mb']:.0f} MiB cpu='{meta['cpu']}' "
          f"cores={meta['cores']} torch={meta['torch']} threads={meta['threads']}", flush=True)
    print(f"{'method':<12}{'impl':<6}{'wall s':>9}{'floor s':>9}{'x floor':>9}{'cpu x fl':>9}{'ref/fast':>10}"
          f"{'peak MiB':>10}{'equal':>7}{'load':>11}")
    rows = []
    for m in methods:
        fast = _run_sub(m, "fast", args)
        ref = None if args.no_reference else _run_sub(m, "ref", args)
        for r in (fast, ref):
            if r is None:
                continue
            r["x_floor"] = r["wall_s"] / r["floor_s"]
            r["cpu_x_floor"] = r["cpu_s"] / r["floor_cpu_s"]
            r["speedup_vs_ref"] = (ref["wall_s"] / r["wall_s"]) if ref else None
            r["equal_to_ref"] = (r["sha256"] == ref["sha256"]) if ref else None
            rows.append(r)
            sp = f"{r['speedup_vs_ref']:.1f}" if r["speedup_vs_ref"] else "-"
            eq = {True: "yes", False: "NO", None: "-"}[r["equal_to_ref"]]
            print(f"{m:<12}{r['impl']:<6}{r['wall_s']:>9.2f}{r['floor_s']:>9.3f}{r['x_floor']:>9.1f}"
                  f"{r['cpu_x_floor']:>9.1f}{sp:>10}"
                  f"{r['peak_extra_mb']:>10.0f}{eq:>7}{r['loadavg_start']:>6.1f}-{r['loadavg_end']:.1f}", flush=True)
    for path in args.out:
        with open(path, "w") as f:
            if path.endswith(".md"):
                f.write(_markdown(meta, rows))
            else:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
