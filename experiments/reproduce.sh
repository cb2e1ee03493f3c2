#!/usr/bin/env bash
# Reproduce docs/results/ from scratch: the image (embedded default) and text sweeps, then their reports.
#   bash experiments/reproduce.sh            # image and text
#   bash experiments/reproduce.sh image      # one of: image, text, study, head-center, text-study
#     study:       issue 14's ATM study on images (frozen head centers)
#     head-center: the same study with head-center = "site" (today's embedded default)
#     text-study:  issues 13 and 14 on the text setting
#     server-opt:  server optimizers and alpha schedules tuned on validation (site centers)
#     default-alpha: the embedded default itself at alpha 1, 4 and 6, seeds 0-4 (about 2 min a run)
# Resumable: re-running skips every finished cell. Sweep directories: runs/sweeps/<name> (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
which=("${@:-image text}")  # the studies run only when asked: about an hour each on 2 cores
for name in ${which[@]}; do
  case "$name" in
    image) grid=experiments/grids/image-default.toml; out=runs/sweeps/image-default; res=docs/results/image-default ;;
    text)  grid=experiments/grids/text-minilm.toml;   out=runs/sweeps/text-minilm;   res=docs/results/text-minilm ;;
    study) grid=experiments/grids/image-atm-study.toml; out=runs/sweeps/image-atm-study; res=docs/results/image-atm-study ;;
    head-center) grid=experiments/grids/image-head-center.toml; out=runs/sweeps/image-head-center; res=docs/results/image-head-center ;;
    text-study) grid=experiments/grids/text-atm-study.toml; out=runs/sweeps/text-atm-study; res=docs/results/text-atm-study ;;
    server-opt) grid=experiments/grids/image-server-opt.toml; out=runs/sweeps/image-server-opt; res=docs/results/image-server-opt
      # Its gap is measured from today's ATM on this machine: the image study's k = 4 cells.
      "$PY" -m experiments.sweep --grid experiments/grids/image-atm-study.toml --out runs/sweeps/image-atm-study \
        --only atm-mean-b4-k4-s ;;
    default-alpha)
      # Not a grid: `atm-fl run .` with nothing but alpha and seed set, so it is exactly the default.
      for a in 1.0 4.0 6.0; do
        for s in 0 1 2 3 4; do
          f="runs/default-alpha/a$a/s$s/results.json"
          if [ -f "$f" ] && "$PY" -c "import json,sys; sys.exit(json.load(open('$f'))['status'] != 'finished')"; then
            continue
          fi
          rm -rf "runs/default-alpha/a$a/s$s"
          "$PY" -m atm_fl.cli run . --run-config "alpha=$a seed=$s output-dir='runs/default-alpha/a$a' run-name='s$s'"
        done
        mkdir -p docs/results/default-alpha
        "$PY" -m experiments.curves runs/default-alpha/a$a/s*/results.json --json "docs/results/default-alpha/alpha-$a.json"
      done
      continue ;;
    *) echo "unknown sweep '$name' (image, text, study, head-center, text-study, server-opt, default-alpha)" >&2; exit 2 ;;
  esac
  "$PY" -m experiments.sweep --grid "$grid" --out "$out"
  "$PY" -m experiments.report "$out" --out "$res"
  case "$name" in
    study|text-study) "$PY" -m experiments.study "$out" --out "$res" ;;
    server-opt) "$PY" -m experiments.study "$out" --out "$res" --headline-from runs/sweeps/image-atm-study ;;
    # Gap closed from today's ATM as it ships before this change (frozen centers, k = 4).
    # (Needs the study's sweep; without it, this sweep's own k = 4 cells.)
    head-center)
      from=(); [ -d runs/sweeps/image-atm-study ] && from=(--headline-from runs/sweeps/image-atm-study)
      "$PY" -m experiments.study "$out" --out "$res" "${from[@]}" ;;
  esac
done
