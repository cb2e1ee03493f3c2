"""Upload compression on the embedded default: bytes per client per round and the accuracy it costs.

    python -m experiments.bench_upload --out docs/bench/upload.json

Runs the embedded default (`atm-fl run .`, real Flower simulation) once per encoding
with the same seed, and reads from each run's results.json the bytes the server
received in a round (divided by the number of tasks) and the final average accuracy.
The target (issue 6): >= 5x fewer upload bytes for <= 1 point of average accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from experiments.machine import machine_info

log = logging.getLogger("experiments.bench_upload")
ROOT = Path(__file__).resolve().parents[1]

#: name -> run-config overrides
ENCODINGS = {
    "none": {"upload-compression": "none"},
    "fp16": {"upload-compression": "fp16"},
    "topk-10%-fp16": {"upload-compression": "topk", "upload-density": 0.1, "upload-values": "fp16"},
    "ties-trim-10%-fp16": {"upload-compression": "ties-trim", "upload-density": 0.1, "upload-values": "fp16"},
    "dare-10%-fp16": {"upload-compression": "dare", "upload-density": 0.1, "upload-values": "fp16"},
}


def run_one(name: str, overrides: dict, out: Path, extra: str) -> dict:
    res_file = out / name / "results.json"
    if not (res_file.exists() and json.loads(res_file.read_text())["status"] == "finished"):
        items = {**overrides, "output-dir": str(out), "run-name": name, "save-model": False}
        rc = " ".join(f"{k}={json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in items.items())
        cmd = [sys.executable, "-m", "atm_fl.cli", "run", str(ROOT), "--run-config", f"{rc} {extra}".strip()]
        log.info("%s: %s", name, " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads(res_file.read_text())
    trained = [r for r in res["rounds"] if r["round"] >= 1]
    per_client = [r["bytes_received"] / max(1, len(r["train"])) for r in trained]
    return {"bytes_per_client_round": sum(per_client) / len(per_client),
            "final_average_accuracy": res["final"]["average_accuracy"],
            "final_accuracy": res["final"]["accuracy"], "wall_seconds": res["wall_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-upload.json")
    ap.add_argument("--run-config", default="", help="extra overrides for every run, e.g. 'seed=1'")
    ap.add_argument("--only", nargs="*", default=list(ENCODINGS), choices=list(ENCODINGS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # One directory per set of extra overrides: a finished run is reused only for the same settings.
    slug = "".join(c if c.isalnum() or c in "-=." else "_" for c in args.run_config.strip()) or "default"
    runs = (ROOT / "runs" / "bench-upload" / slug).resolve()
    rows = {name: run_one(name, ENCODINGS[name], runs, args.run_config) for name in args.only}
    base = rows.get("none")
    lines = ["| upload | bytes / client / round | reduction | final avg acc (%) | change (points) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        red = base["bytes_per_client_round"] / r["bytes_per_client_round"] if base else float("nan")
        delta = 100 * (r["final_average_accuracy"] - base["final_average_accuracy"]) if base else float("nan")
        r.update(reduction=red, accuracy_change_points=delta)
        lines.append(f"| {name} | {r['bytes_per_client_round']:,.0f} | {red:.1f}x | "
                     f"{100 * r['final_average_accuracy']:.2f} | {delta:+.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "runs": rows, "run_config": args.run_config,
                                    "table": lines}, indent=2))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
