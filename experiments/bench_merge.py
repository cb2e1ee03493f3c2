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

SVD-based merges (``tsv_m``, ``iso_c``, ``iso_cts``, ``cart``)
----------------------------------------------------------------
They work per weight matrix, so they run on the exact ViT-B-16 visual tower
(``--blocks``, default 12: every tensor of open_clip's tower, d = 86,192,640), and
their fast and direct versions (:mod:`atm_fl.merge.svd`,
:mod:`atm_fl.merge.svd_reference`) agree to float rounding, not bit for bit: instead
of the hash, the parent compares the two outputs and reports the relative Frobenius
error ``|fast - direct| / |direct|``. The direct version does a full float64 SVD per
task and matrix (several seconds each on 2 cores), so ``--ref-blocks N`` runs it on
the tower cut to N residual blocks (stem and tail kept); the fast version then also
runs on that cut tower, which gives the "direct / fast" ratio and the error on the
same inputs, and once more on the whole tower for its time and memory.
``--inputs decaying`` fills every weight matrix with a decaying spectrum (singular
values about 1/i, random singular vectors, plus 1% noise), closer to fine-tuned task
vectors than i.i.d. normal entries, whose flat spectra make the top singular vectors
nearly degenerate::

    python -m experiments.bench_merge --methods tsv_m,iso_c,iso_cts,cart --tasks 8 \
        --ref-blocks 1 --inputs decaying --repeat 2 --out docs/bench/merge.json --out docs/bench/merge.md

A JSON file named in ``--out`` keeps the results this run did not measure: a run of
the SVD methods writes ``svd[<inputs>]`` and leaves the element-wise rows (and the other
kind of inputs) alone, and the other way round; the markdown file shows them all.
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

ELEMENTWISE = ("mean", "sum", "ties", "breadcrumbs", "dare", "dare_ties")
SVD_METHODS = ("tsv_m", "iso_c", "iso_cts", "cart")
METHODS = ELEMENTWISE + SVD_METHODS
VIT_B16_VISUAL = 86_192_640
VIT_B16_BLOCKS = 12


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


def vit_b16_layout(blocks: int = VIT_B16_BLOCKS) -> list[tuple[str, tuple[int, ...]]]:
    """open_clip's ViT-B-16 visual tower with ``blocks`` residual blocks (12: the real one).

    Same tensors, shapes and order as ``open_clip.create_model("ViT-B-16").visual.named_parameters()``
    (checked by tests/test_merge_svd_bench.py).
    """
    if blocks < 0 or blocks > VIT_B16_BLOCKS:
        raise ValueError(f"--blocks {blocks}: choose 0 to {VIT_B16_BLOCKS}")
    shapes = dict(vit_like_layout(VIT_B16_VISUAL))
    first = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias"]
    blocks_part = [n for n in shapes if n.startswith("transformer.resblocks.") and int(n.split(".")[2]) < blocks]
    return [(n, shapes[n]) for n in first + blocks_part + ["ln_post.weight", "ln_post.bias"]]


def _numel(layout) -> int:
    n = 0
    for _, shape in layout:
        k = 1
        for x in shape:
            k *= x
        n += k
    return n


def _inputs(kind: str, layout, tasks: int, seed: int) -> list:
    """T task vectors for ``layout``: i.i.d. normal, or decaying spectra in every weight matrix.

    Built in place, matrix by matrix, so that no temporary is as large as a vector.
    """
    import torch

    from atm_fl.merge.svd import matrix_entries

    d = _numel(layout)
    gen = torch.Generator().manual_seed(seed)
    vs = [torch.empty(d).normal_(generator=gen) for _ in range(tasks)]
    if kind == "normal":
        return vs
    for v in vs:
        for _, off, n, shape in matrix_entries(layout):
            if shape is None:
                v[off:off + n].mul_(0.01)
                continue
            rows, cols = shape
            k = min(shape)
            a = torch.randn(rows, k, generator=gen) / torch.arange(1, k + 1, dtype=torch.float32)
            m = v[off:off + n].view(rows, cols)
            m.mul_(0.01 / (rows * cols) ** 0.5)          # noise: 1% of a unit-norm matrix
            m.addmm_(a, torch.randn(k, cols, generator=gen), alpha=1.0 / float(a.norm() * cols ** 0.5))
    return vs


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _worker(method: str, impl: str, d: int, tasks: int, seed: int, repeat: int, blocks: int | None = None,
            inputs: str = "normal", save: str | None = None) -> dict:
    """Run one method in this (fresh) process and return its measurements.

    ``blocks``: use the exact ViT-B-16 tower with that many residual blocks (d follows
    from it) instead of ``vit_like_layout(d)``. ``save``: write the output there
    (``numpy.save``) for the parent to compare.
    """
    import numpy as np
    import torch

    from atm_fl.merge import ops, reference, svd, svd_reference

    if method in SVD_METHODS:
        # Loaded here, not inside the timed call: the SVD merges import them lazily, and
        # their libraries' resident size is not memory the merge uses.
        import scipy.linalg  # noqa: F401
        import threadpoolctl  # noqa: F401
    load0 = os.getloadavg()[0]
    layout = vit_like_layout(d) if blocks is None else vit_b16_layout(blocks)
    d = _numel(layout)
    vs = _inputs(inputs, layout, tasks, seed)
    mod = ops if impl == "fast" else reference
    smod = svd if impl == "fast" else svd_reference
    calls = {
        "mean": lambda: mod.merge_mean(vs),
        "sum": lambda: mod.merge_sum(vs),
        "ties": lambda: mod.merge_ties(vs, density=0.2),
        "breadcrumbs": lambda: mod.merge_breadcrumbs(vs, layout, 0.85, 0.993),
        "dare": lambda: mod.merge_dare(vs, p=0.9, then="mean"),
        "dare_ties": lambda: mod.merge_dare(vs, p=0.9, then="ties", density=0.2),
        # Defaults of the plugins: TSV-M share 1/T, Iso-CTS common 0.8, CART rank 0.12 and lam 2.
        "tsv_m": lambda: smod.merge_tsv(vs, layout),
        "iso_c": lambda: smod.merge_iso_c(vs, layout),
        "iso_cts": lambda: smod.merge_iso_cts(vs, layout, common=0.8),
        "cart": lambda: smod.merge_cart(vs, layout, rank=0.12, lam=2.0),
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
    if save:
        np.save(save, out.numpy())
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
        "method": method, "impl": impl, "d": d, "tasks": tasks, "seed": seed, "inputs": inputs,
        "blocks": blocks, "matrices": sum(1 for e in svd.matrix_entries(layout) if e[3] is not None),
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
#: that would not fit in the memory available, rather than risk the OOM killer. The SVD
#: references work one matrix at a time (float64 copies of one layer) plus the output.
REF_MEMORY = {"mean": 1.0, "sum": 1.0, "ties": 3.0, "breadcrumbs": 2.3, "dare": 2.3, "dare_ties": 4.0,
              "tsv_m": 0.5, "iso_c": 0.5, "iso_cts": 0.5, "cart": 0.5}


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _run_sub(method: str, impl: str, args, blocks: int | None = None, save: str | None = None) -> dict | None:
    d = args.d if blocks is None else _numel(vit_b16_layout(blocks))
    if impl == "ref":
        need = (1.0 + REF_MEMORY[method]) * d * args.tasks * 4 / 2**20
        have = _mem_available_mb()
        if need > 0.85 * have:
            print(f"# {method}/ref skipped: needs about {need:.0f} MiB, {have:.0f} MiB available", flush=True)
            return None
    cmd = [sys.executable, "-m", "experiments.bench_merge", "--_worker", method, impl,
           "--d", str(d), "--tasks", str(args.tasks), "--seed", str(args.seed), "--inputs", args.inputs,
           "--repeat", str(args.repeat if impl == "fast" else 1)]
    if blocks is not None:
        cmd += ["--blocks", str(blocks)]
    if save:
        cmd += ["--_save", save]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{method}/{impl} failed (rc={res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rel_err(path_fast: str, path_ref: str) -> float:
    """``|fast - ref| / |ref|`` (Frobenius, in float64) of two saved outputs."""
    import numpy as np

    a, b = np.load(path_fast).astype(np.float64), np.load(path_ref).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


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


def _markdown_svd(meta: dict, rows: list[dict]) -> str:
    lines = [f"SVD-based merges: exact ViT-B-16 visual tower ({meta['blocks']} blocks: d = {meta['d']:,}), "
             f"T = {meta['tasks']}, {meta['inputs']} inputs ({meta['input_mb']:.0f} MiB); direct formulation on "
             f"{meta['ref_blocks']} block(s); {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, "
             f"{meta['threads']} threads; median of {meta['repeat']} runs (direct: 1 run)", "",
             "| method | impl | blocks | wall s | floor s | × floor | CPU × floor | direct ÷ fast | peak extra MiB | "
             "peak ÷ inputs | rel. error vs direct | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_ref']:.1f}" if r.get("speedup_vs_ref") else "–"
        err = f"{r['rel_err_vs_ref']:.1e}" if r.get("rel_err_vs_ref") is not None else "–"
        lines.append(f"| {r['method']} | {'direct' if r['impl'] == 'ref' else 'fast'} | {r['blocks']} | "
                     f"{r['wall_s']:.2f} | {r['floor_s']:.3f} | {r['x_floor']:.0f} | {r['cpu_x_floor']:.0f} | {sp} | "
                     f"{r['peak_extra_mb']:.0f} | {r['peak_extra_mb'] / r['input_mb']:.2f} | {err} | "
                     f"{r['loadavg_start']:.1f}–{r['loadavg_end']:.1f} |")
    return "\n".join(lines) + "\n"


def _print_row(r: dict) -> None:
    sp = f"{r['speedup_vs_ref']:.1f}" if r.get("speedup_vs_ref") else "-"
    if "rel_err_vs_ref" in r:
        eq = "-" if r["rel_err_vs_ref"] is None else f"{r['rel_err_vs_ref']:.1e}"
    else:
        eq = {True: "yes", False: "NO", None: "-"}[r.get("equal_to_ref")]
    where = "" if r.get("blocks") is None else f" ({r['blocks']} blocks)"
    print(f"{r['method']:<12}{r['impl']:<6}{r['wall_s']:>9.2f}{r['floor_s']:>9.3f}{r['x_floor']:>9.1f}"
          f"{r['cpu_x_floor']:>9.1f}{sp:>10}{r['peak_extra_mb']:>10.0f}{eq:>9}"
          f"{r['loadavg_start']:>6.1f}-{r['loadavg_end']:.1f}{where}", flush=True)


def _ratios(r: dict, ref: dict | None) -> dict:
    r["x_floor"] = r["wall_s"] / r["floor_s"]
    r["cpu_x_floor"] = r["cpu_s"] / r["floor_cpu_s"]
    r["speedup_vs_ref"] = (ref["wall_s"] / r["wall_s"]) if ref else None
    return r


def _svd_rows(m: str, args, tmp: str) -> list[dict]:
    """Fast on the whole tower; fast and direct on the cut tower, compared."""
    blocks = VIT_B16_BLOCKS if args.blocks is None else args.blocks
    ref_blocks = blocks if args.ref_blocks is None else args.ref_blocks
    f_path, r_path = os.path.join(tmp, f"{m}-fast.npy"), os.path.join(tmp, f"{m}-ref.npy")
    same = ref_blocks == blocks
    fast = _run_sub(m, "fast", args, blocks, save=f_path if same and not args.no_reference else None)
    if args.no_reference:
        return [_ratios(fast, None)]
    cut = fast if same else _run_sub(m, "fast", args, ref_blocks, save=f_path)
    ref = _run_sub(m, "ref", args, ref_blocks, save=r_path)
    rows = [] if same else [_ratios(fast, None)]
    for r in (cut, ref):
        if r is not None:
            rows.append(_ratios(r, ref))
    if ref is not None:
        cut["rel_err_vs_ref"] = _rel_err(f_path, r_path)
        ref["rel_err_vs_ref"] = 0.0
    for r in rows:
        r.setdefault("rel_err_vs_ref", None)
    for p in (f_path, r_path):
        if os.path.exists(p):
            os.remove(p)
    return rows


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=VIT_B16_VISUAL,
                    help=f"entries per task vector of the element-wise methods (default {VIT_B16_VISUAL:,}, "
                         "the ViT-B-16 visual tower)")
    ap.add_argument("--tasks", type=int, default=7, help="number of task vectors T (default 7)")
    ap.add_argument("--methods", default=",".join(ELEMENTWISE),
                    help=f"comma list from {','.join(METHODS)} (default: the element-wise ones)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    ap.add_argument("--inputs", choices=("normal", "decaying"), default="normal",
                    help="i.i.d. normal entries, or decaying spectra in every weight matrix (default normal)")
    ap.add_argument("--blocks", type=int, default=None,
                    help=f"SVD methods: residual blocks of the exact ViT-B-16 tower (default {VIT_B16_BLOCKS})")
    ap.add_argument("--ref-blocks", type=int, default=None,
                    help="SVD methods: run the direct formulation (and the fast one again) on the tower cut to "
                         "this many blocks (default: --blocks)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each fast method; median kept (default 5)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference runs")
    ap.add_argument("--out", action="append", default=[],
                    help="write results here: *.md gets markdown tables, anything else JSON (repeatable); an "
                         "existing JSON file keeps the other family's results")
    ap.add_argument("--_worker", nargs=2, metavar=("METHOD", "IMPL"), help=argparse.SUPPRESS)
    ap.add_argument("--_save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        print(json.dumps(_worker(args._worker[0], args._worker[1], args.d, args.tasks, args.seed, args.repeat,
                                 args.blocks, args.inputs, args._save)))
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    for flag, value in (("--blocks", args.blocks), ("--ref-blocks", args.ref_blocks)):
        if value is not None and not 0 <= value <= VIT_B16_BLOCKS:
            ap.error(f"{flag} {value}: choose 0 to {VIT_B16_BLOCKS}")

    info = machine_info()
    command = "python -m experiments.bench_merge " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {**info, "threads": info["torch_threads"], "d": args.d, "tasks": args.tasks, "inputs": args.inputs,
            "input_mb": args.d * args.tasks * 4 / 2**20, "repeat": args.repeat, "command": command}
    blocks = VIT_B16_BLOCKS if args.blocks is None else args.blocks
    d_svd = _numel(vit_b16_layout(blocks))
    meta_svd = {**meta, "d": d_svd, "input_mb": d_svd * args.tasks * 4 / 2**20, "blocks": blocks,
                "ref_blocks": blocks if args.ref_blocks is None else args.ref_blocks}
    print(f"# d={args.d:,} (SVD methods: {d_svd:,}, {blocks} blocks) T={args.tasks} inputs={args.inputs} "
          f"cpu='{meta['cpu']}' cores={meta['cores']} torch={meta['torch']} threads={meta['threads']}", flush=True)
    print(f"{'method':<12}{'impl':<6}{'wall s':>9}{'floor s':>9}{'x floor':>9}{'cpu x fl':>9}{'ref/fast':>10}"
          f"{'peak MiB':>10}{'equal':>9}{'load':>11}")
    rows, svd_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        for m in methods:
            if m in SVD_METHODS:
                new = _svd_rows(m, args, tmp)
                svd_rows += new
                for r in new:
                    _print_row(r)
                continue
            fast = _run_sub(m, "fast", args)
            ref = None if args.no_reference else _run_sub(m, "ref", args)
            for r in (fast, ref):
                if r is None:
                    continue
                _ratios(r, ref)
                r["equal_to_ref"] = (r["sha256"] == ref["sha256"]) if ref else None
                rows.append(r)
                _print_row(r)
    _write(args.out, meta, rows, meta_svd, svd_rows)
    return 0


def _write(paths: list[str], meta: dict, rows: list[dict], meta_svd: dict, svd_rows: list[dict]) -> None:
    """Write JSON and markdown; an existing JSON file keeps the sections this run did not measure."""
    doc: dict = {}
    for path in paths:
        if not path.endswith(".md") and os.path.exists(path):
            with open(path) as f:
                doc = json.load(f)
            break
    if rows:
        doc.update(meta=meta, rows=rows)
    if svd_rows:
        doc.setdefault("svd", {})[meta_svd["inputs"]] = {"meta": meta_svd, "rows": svd_rows}
    for path in paths:
        with open(path, "w") as f:
            if path.endswith(".md"):
                parts = []
                if doc.get("rows"):
                    parts.append(_markdown(doc["meta"], doc["rows"]))
                for section in doc.get("svd", {}).values():
                    parts.append(_markdown_svd(section["meta"], section["rows"]))
                f.write("\n".join(parts))
            else:
                json.dump(doc, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
