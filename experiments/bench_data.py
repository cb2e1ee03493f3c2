"""Client memory and throughput against dataset size: one fine-tuning round on generated local image folders.

    python -m experiments.bench_data --quick --out docs/bench/data-quick.json   # 1k, 3k, 10k images (about 3 min, 2 cores)
    python -m experiments.bench_data --out docs/bench/data.json                 # 1k, 10k, 50k images

What runs. A site's local image folder (``<dir>/train/<class>/*.jpg``, ``<dir>/test/<class>/*.jpg``,
docs/data.md) is generated at 224 x 224 px for every size, served as the task ``eurosat``
(10 classes; the folder names are EuroSAT's) through the real client code:
``atm_fl.runtime.TaskRuntime`` reads it with ``datasets``' imagefolder builder, builds the
frozen head and fine-tunes the model at 224 px for ``--steps`` steps of ``--batch-size``
(a fraction of an epoch, so the CPU gets through it; the example stream and the data
pipeline are those of a full epoch), then evaluates the test split. Every (size, path)
runs in a fresh subprocess. ``--model efficientnet-lite0`` (default; offline ImageNet
weights, prototype head from ``--head-examples`` training images); ``--model vit-b-16``:
open_clip's ViT-B-16 with random weights (the paper's architecture, no download) and its
zero-shot head, for the host-memory table of docs/gpu.md:

    python -m experiments.bench_data --model vit-b-16 --sizes 500,2000,8000 --memory-sizes 500,2000,8000 \
        --steps 1 --batch-size 4 --eval-examples 8 --out docs/bench/data-vit-b16.json

Paths. ``stream`` (``data-in-memory-mb = 0``): splits are read and decoded batch by batch;
these runs are the report's ``runs``. Comparison runs (``comparison_runs``), only for the
sizes in ``--memory-sizes``, show what streaming avoids: ``memory`` (``data-in-memory-mb``
huge: this code with every split encoded into tensors up front), or with ``--before
CHECKOUT`` ``before``: the ``atm_fl`` of another checkout (e.g. an export of the commit
before streaming, ``git archive <commit> | tar -x -C DIR``) runs the same child, so its
own data path is measured (keys it does not know are left out of its run-config).

Measured per run: ``peak_rss_mb``, the child's ``ru_maxrss`` (kernel high-water mark of
its resident set, DataLoader workers not included; ``peak_rss_with_children_mb`` is the
largest of it and its workers'); ``examples_per_s``, fine-tuning examples / seconds of
``atm_fl.train.finetune`` (DataLoader start-up included); ``load_seconds`` (imagefolder
Arrow cache built from scratch), ``setup_seconds`` (backbone and head), and evaluation
throughput. Images are 512 distinct JPEGs (random smooth colour fields, one tint per
class) hard-linked over and over: decoding is real, disk reads come from the page cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiments.bench_data")

CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake")  # eurosat's 10 classes
POOL_PER_CLASS = 52
TEST_PER_CLASS = 10


def make_pool(root: Path, size: int, seed: int = 0) -> list[list[Path]]:
    """``POOL_PER_CLASS`` distinct JPEGs per class: smooth random colour fields with a class tint."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for c, _ in enumerate(CLASSES):
        tint = rng.uniform(0.3, 1.0, 3)
        files = []
        for i in range(POOL_PER_CLASS):
            coarse = rng.uniform(0, 255, (8, 8, 3)) * tint
            img = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BILINEAR)
            path = root / f"c{c}-{i}.jpg"
            img.save(path, quality=90)
            files.append(path)
        pool.append(files)
    return pool


def make_folder(root: Path, pool: list[list[Path]], n_train: int) -> Path:
    """``root/train/<class>/`` with ``n_train`` images (classes in turn) and a fixed ``root/test``, as hard links."""
    for split, n in (("train", n_train), ("test", TEST_PER_CLASS * len(CLASSES))):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            c = i % len(CLASSES)
            # Test images come from the other end of the pool, so they are not training images.
            src = pool[c][(i // len(CLASSES)) % (POOL_PER_CLASS - 2)] if split == "train" else pool[c][-1 - i % 2]
            os.link(src, root / split / CLASSES[c] / f"{i:06d}.jpg")
    return root


def child(args) -> dict:
    """One client fine-tuning round in this process; returns the measurements."""
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from atm_fl.config import KEYS, parse_run_config
    from atm_fl.runtime import TaskRuntime

    try:
        from atm_fl.runtime import task_splits
    except ImportError:  # a checkout from before streaming (--before): no per-process splits cache
        from atm_fl.tasks import load_task as task_splits

    t0 = time.perf_counter()
    splits = task_splits("eurosat", args.data_dir, 0)
    load_s = time.perf_counter() - t0
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_train = len(splits.train)
    epochs = args.steps * args.batch_size / n_train
    model = ({"model-family": "efficientnet-lite0"} if args.model == "efficientnet-lite0" else
             {"model-family": "open-clip", "model-name": "ViT-B-16", "model-pretrained": "none"})
    raw = {**model, "tasks": "eurosat", "image-size": args.image_size,
           "batch-size": args.batch_size, "local-epochs": epochs, "lr": 1e-4, "device": "cpu",
           "max-train-examples": 0, "max-eval-examples": args.eval_examples, "max-head-examples": args.head_examples,
           "data-in-memory-mb": 0.0 if args.path == "stream" else 1e7, "data-workers": args.workers}
    known = {k.name for k in KEYS}
    cfg = parse_run_config({k: v for k, v in raw.items() if k in known})
    t0 = time.perf_counter()
    rt = TaskRuntime(cfg, "eurosat", args.data_dir)
    base = {k: v.clone() for k, v in rt.backbone.state_dict().items()}
    setup_s = time.perf_counter() - t0
    _, metrics = rt.train_round(base, 1)
    t0 = time.perf_counter()
    ev = rt.evaluate(base, "test")
    eval_s = time.perf_counter() - t0
    return {"examples": n_train + len(splits.val), "train_examples": n_train, "path": args.path, "model": args.model,
            "workers": args.workers, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_after_load_mb": rss_after_load,
            "examples_per_s": metrics["num-examples"] / metrics["seconds"],
            "finetune_examples": metrics["num-examples"], "finetune_steps": metrics["steps"],
            "finetune_seconds": metrics["seconds"], "load_seconds": load_s, "setup_seconds": setup_s,
            "eval_examples": ev["num-examples"], "eval_examples_per_s": ev["num-examples"] / eval_s,
            "train_split_kind": type(rt.train).__name__, "atm_fl": os.path.dirname(sys.modules["atm_fl"].__file__)}


REPLAY = """
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)  # atm-fl run gives each client one CPU
from atm_fl.config import parse_run_config
from atm_fl.models import get_family
from atm_fl.runtime import get_task_runtime
cfg = parse_run_config({"num-server-rounds": %(rounds)d})
state = {k: v.clone() for k, v in get_family(cfg).build_backbone().state_dict().items()}
rounds = []
for r in range(1, cfg.num_server_rounds + 1):
    c0, w0 = time.process_time(), time.perf_counter()
    for task in cfg.task_list:  # one process serves every task in turn: each message is a task switch
        rt = get_task_runtime(cfg, task)
        if r > 1:
            rt.evaluate(state, "test")  # evaluate-in-train: the previous round's model first
        rt.train_round(state, r)
    rounds.append({"round": r, "cpu_seconds": time.process_time() - c0, "wall_seconds": time.perf_counter() - w0})
import atm_fl
print(json.dumps({"rounds": rounds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "atm_fl": os.path.dirname(atm_fl.__file__)}))
"""


def replay(code: Path, rounds: int) -> dict:
    """The embedded default's client work, one process serving the tasks in turn, with the ``atm_fl`` of ``code``.

    Each round: for every task, get its runtime (built, or switched to), evaluate the
    round's base on the test split (from round 2, as evaluate-in-train does) and fine-tune.
    CPU seconds (``time.process_time``) are less sensitive to other jobs than wall time.
    """
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, "-c", REPLAY % {"rounds": rounds}], cwd=code, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def replay_main(args, argv) -> int:
    """``--replay``: per-round client CPU and wall seconds of each checkout, runs alternating; medians of rounds 2.."""
    import statistics

    from experiments.machine import machine_info, publish

    runs = []
    for rep in range(args.repeat):
        for code in args.replay:
            res = replay(code.resolve(), args.rounds)
            res.update(checkout=str(code), rep=rep, load_average_end=list(os.getloadavg()))
            runs.append(res)
            log.info("%s run %d: CPU s per round %s", code, rep, [round(r["cpu_seconds"], 1) for r in res["rounds"]])
    summary = {}
    for code in args.replay:
        mine = [r for r in runs if r["checkout"] == str(code)]
        # Round 1 builds the first runtimes on both sides; rounds 2.. are the steady state.
        cpu = [sum(x["cpu_seconds"] for x in r["rounds"][1:]) for r in mine]
        wall = [sum(x["wall_seconds"] for x in r["rounds"][1:]) for r in mine]
        summary[str(code)] = {"cpu_seconds_rounds_2_on_median": statistics.median(cpu),
                              "wall_seconds_rounds_2_on_median": statistics.median(wall),
                              "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in mine)}
    first, *rest = [str(c) for c in args.replay]
    for other in rest:
        for k in ("cpu", "wall"):
            summary[f"{k}_ratio_{other}_over_{first}"] = (summary[other][f"{k}_seconds_rounds_2_on_median"]
                                                         / summary[first][f"{k}_seconds_rounds_2_on_median"])
    publish({"what": "embedded default, one client process serving the 4 tasks in turn (every message a task "
                     "switch), 1 torch thread; per round: evaluate the base (from round 2) and fine-tune each task",
             "command": " ".join(["python -m experiments.bench_data", *(argv if argv is not None else sys.argv[1:])]),
             "machine": machine_info(), "runs": runs, "summary": summary}, args.out)
    return 0


def run_child(data_dir: Path, path: str, args, cache: Path) -> dict:
    """One measured run in a fresh process; ``path = 'before'`` runs it with the ``atm_fl`` of ``args.before``."""
    code = args.before.resolve() if path == "before" else ROOT
    # As a script (not -m) from the checkout's directory: sys.path[0] is this file's folder,
    # so ``atm_fl`` resolves through PYTHONPATH to the checkout's package.
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--data-dir", str(data_dir),
           "--path", "memory" if path == "before" else path,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
           "--head-examples", str(args.head_examples), "--eval-examples", str(args.eval_examples),
           "--workers", str(args.workers), "--threads", str(args.threads), "--model", args.model]
    # A fresh datasets cache per run: the imagefolder Arrow cache is built inside the measured process.
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(code)}
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    # wait4: this child's own rusage; its ru_maxrss covers it and the workers it waited for.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {' '.join(cmd)}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_with_children_mb"] = usage.ru_maxrss / 1024
    row["path"] = path
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="sizes 1000,3000,10000, streamed only, 4 steps of batch 8 (about 3 minutes on 2 quiet cores)")
    ap.add_argument("--sizes", default="", help="images per generated folder (train + validation), comma-separated; "
                                                "default 1000,10000,50000 (--quick: 1000,3000,10000)")
    ap.add_argument("--memory-sizes", default="", help="sizes also run as comparison runs (in memory, or --before); "
                                                       "default 1000,3000, --quick none ('0': none)")
    ap.add_argument("--before", type=Path, default=None, metavar="CHECKOUT",
                    help="comparison runs use the atm_fl of this checkout (its own data path) instead of this "
                         "code's in-memory path")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps per run (default 12; --quick 4)")
    ap.add_argument("--batch-size", type=int, default=0, help="default 16; --quick 8")
    ap.add_argument("--image-size", type=int, default=224, help="EfficientNet input size (ViT-B-16: open_clip's 224)")
    ap.add_argument("--model", default="efficientnet-lite0", choices=("efficientnet-lite0", "vit-b-16"),
                    help="vit-b-16: open_clip ViT-B-16, random weights (no download), zero-shot head")
    ap.add_argument("--head-examples", type=int, default=0, help="run-config max-head-examples; default 64 "
                                                                 "(--quick 32)")
    ap.add_argument("--eval-examples", type=int, default=0, help="run-config max-eval-examples; default 64 "
                                                                 "(--quick 16)")
    ap.add_argument("--workers", type=int, default=0, help="run-config data-workers")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: all cores)")
    ap.add_argument("--work", type=Path, default=None, help="where to generate the folders (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-data.json")
    ap.add_argument("--replay", nargs="+", type=Path, default=None, metavar="CHECKOUT",
                    help="instead: the embedded default's client work per round (one process serving every task in "
                         "turn, one thread) with the atm_fl of each checkout, alternating, --repeat times")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per --replay run")
    ap.add_argument("--repeat", type=int, default=2, help="--replay runs per checkout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="stream", choices=("stream", "memory"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(child(args)), flush=True)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from experiments.machine import code_version, machine_info, publish

    if args.replay:
        return replay_main(args, argv)

    sizes = [int(s) for s in (args.sizes or ("1000,3000,10000" if args.quick else "1000,10000,50000")).split(",")]
    memory_sizes = [int(s) for s in (args.memory_sizes or ("0" if args.quick else "1000,3000")).split(",")
                    if s and int(s) > 0]
    compare = "before" if args.before else "memory"
    args.steps = args.steps or (4 if args.quick else 12)
    args.batch_size = args.batch_size or (8 if args.quick else 16)
    args.head_examples = args.head_examples or (32 if args.quick else 64)
    args.eval_examples = args.eval_examples or (16 if args.quick else 64)
    started = time.perf_counter()
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.work) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        (work / "pool").mkdir()
        pool = make_pool(work / "pool", args.image_size)
        runs = []
        for n in sorted(set(sizes) | set(memory_sizes)):
            folder = make_folder(work / f"n{n}", pool, n)
            gen_s = time.perf_counter() - t0  # the pool (first size only) and this size's links
            for path in ("stream", compare):
                if (path == "stream" and n not in sizes) or (path == compare and n not in memory_sizes):
                    continue
                row = run_child(folder, path, args, work / f"hf-{n}-{path}")
                row["generate_seconds"] = gen_s
                runs.append(row)
                log.info("%s %6d images: peak RSS %.0f MB, %.1f examples/s (load %.1fs, setup %.1fs)", path, n,
                         row["peak_rss_mb"], row["examples_per_s"], row["load_seconds"], row["setup_seconds"])
            t0 = time.perf_counter()
    stream = [r for r in runs if r["path"] == "stream"]
    rss = [r["peak_rss_mb"] for r in stream]
    report = {
        "what": f"one client fine-tuning round ({args.model}, 224 px) on generated local image folders, "
                "task eurosat served from data-dir; fresh subprocess per run (experiments/bench_data.py docstring)",
        "command": " ".join(["python -m experiments.bench_data", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "load_average_end": list(os.getloadavg()), "code": code_version(),
        "settings": {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
                     "max_head_examples": args.head_examples, "max_eval_examples": args.eval_examples,
                     "data_workers": args.workers},
        "runs": stream,
        "comparison_runs": [r for r in runs if r["path"] != "stream"],
        "stream_peak_rss_ratio_largest_to_smallest": stream[-1]["peak_rss_mb"] / stream[0]["peak_rss_mb"],
        "stream_peak_rss_ratio_max_to_min": max(rss) / min(rss),
        "stream_size_ratio": stream[-1]["examples"] / stream[0]["examples"],
        "seconds": time.perf_counter() - started,
    }
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script (a child): this folder's modules must not shadow top-level names
    raise SystemExit(main())
