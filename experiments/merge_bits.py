"""Do the merges give the same bits under another CPU's BLAS kernels? One merge, each kernel, one hash.

    python -m experiments.merge_bits
    python -m experiments.merge_bits --kernels Haswell,Zen,SkylakeX --methods mean,tsv-m,iso-c

numpy and scipy run LAPACK and BLAS through OpenBLAS, which picks its kernels from the CPU
it finds (``OPENBLAS_CORETYPE`` overrides the choice). The SVD merges run on it; the mean
does not. For each kernel, a fresh process merges the same synthetic task vectors (ViT-B
block shapes, 8 tasks, seeded) with each method and prints a hash of the result: where
hashes differ between kernels, two machines that pick those kernels get other last bits
from the same inputs, and a run's later rounds grow the difference. A kernel this CPU
cannot run is reported as such. The first column is the kernel OpenBLAS picks here
(``default``); in brackets, each merge's relative distance from that kernel's. Results: docs/results/README.md, "The SVD merges and the CPU".
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("experiments.merge_bits")

SHAPES = [("attn.in_proj_weight", (2304, 768)), ("mlp.c_fc.weight", (3072, 768)), ("mlp.c_proj.weight", (768, 3072)),
          ("ln.bias", (768,))]


def merges(methods: list[str], tasks: int = 8, seed: int = 0) -> dict:
    """Each merge method's result (the plugin registry's, at its defaults) on seeded, low-rank-plus-noise task vectors."""
    import torch

    from atm_fl.plugins import MergeContext, resolve_merge
    from atm_fl.task_vector import Layout

    plugins = {m: resolve_merge(m) for m in methods}  # an unknown name fails here, naming the valid ones
    g = torch.Generator().manual_seed(seed)
    vectors = []
    for _ in range(tasks):
        parts = []
        for _, shape in SHAPES:
            if len(shape) == 2:  # fine-tuning updates: a few strong directions and a little noise
                x = torch.randn(shape[0], 16, generator=g) @ torch.randn(16, shape[1], generator=g) * 1e-3
                parts.append((x + torch.randn(*shape, generator=g) * 1e-5).flatten())
            else:
                parts.append(torch.randn(*shape, generator=g) * 1e-3)
        vectors.append(torch.cat(parts))
    ctx = MergeContext(layout=Layout(tuple(SHAPES)), tasks=tuple(f"t{i}" for i in range(tasks)), server_round=1,
                       seed=seed)
    return {m: method(vectors, ctx, **params) for m, (method, params) in plugins.items()}


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.merge_bits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default="Haswell,Zen,SkylakeX,Sandybridge",
                   help="OPENBLAS_CORETYPE values to try besides the default (default: %(default)s)")
    p.add_argument("--methods", default="mean,tsv-m,iso-c",
                   help="merge methods (merge-method names) to hash (default: %(default)s)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # a folder for one kernel's merges
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    import torch

    from atm_fl.plugins import PluginError, resolve_merge

    if args.child:  # one kernel: save its BLAS and its merges for the parent
        from experiments.machine import blas_kernels

        torch.save({"blas": blas_kernels(), "merges": merges(methods)}, Path(args.child) / "merges.pt")
        return 0
    try:  # a bad name fails here, not as a child's exit status under every kernel
        for m in methods:
            resolve_merge(m)
    except PluginError as exc:
        log.error("--methods: %s", exc)
        return 2
    hashes: dict[str, dict[str, str]] = {}
    first = None
    with tempfile.TemporaryDirectory(prefix="merge-bits-") as tmp:
        for kernel in ["default"] + [k.strip() for k in args.kernels.split(",") if k.strip()]:
            env = dict(os.environ)
            env.pop("OPENBLAS_CORETYPE", None)
            if kernel != "default":
                env["OPENBLAS_CORETYPE"] = kernel
            proc = subprocess.run([sys.executable, "-m", "experiments.merge_bits", "--child", tmp,
                                   "--methods", ",".join(methods)], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                log.warning("%s: this CPU cannot run it (exit %d)", kernel, proc.returncode)
                continue
            got = torch.load(Path(tmp) / "merges.pt")
            first = first or got["merges"]
            hashes[kernel] = {m: hashlib.sha1(v.numpy().tobytes()).hexdigest()[:12] for m, v in got["merges"].items()}
            # How far from the first kernel's merge: ||a - b|| / ||a||.
            rel = {m: float((v - first[m]).norm() / first[m].norm().clamp_min(1e-30)) for m, v in got["merges"].items()}
            log.info("%-12s %s | %s", kernel, "; ".join(got["blas"]),
                     "  ".join(f"{m} {h} ({rel[m]:.1e})" for m, h in hashes[kernel].items()))
    for m in methods:
        distinct = len({h[m] for h in hashes.values()})
        log.info("%s: %d distinct result(s) over %d kernels", m, distinct, len(hashes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
