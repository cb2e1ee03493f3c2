#!/usr/bin/env bash
# Reproduce docs/results/ from scratch: the image (embedded default) and text sweeps, then their reports.
#   bash experiments/reproduce.sh            # image and text
#   bash experiments/reproduce.sh image      # one of: image, text, study (issue 14's ATM study on images)
# Resumable: re-running skips every finished cell. Sweep directories: runs/sweeps/<name> (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
which=("${@:-image text}")  # "study" runs only when asked: about 70 min on 2 cores
for name in ${which[@]}; do
  case "$name" in
    image) grid=experiments/grids/image-default.toml; out=runs/sweeps/image-default; res=docs/results/image-default ;;
    text)  grid=experiments/grids/text-minilm.toml;   out=runs/sweeps/text-minilm;   res=docs/results/text-minilm ;;
    study) grid=experiments/grids/image-atm-study.toml; out=runs/sweeps/image-atm-study; res=docs/results/image-atm-study ;;
    *) echo "unknown sweep '$name' (image, text, study)" >&2; exit 2 ;;
  esac
  "$PY" -m experiments.sweep --grid "$grid" --out "$out"
  "$PY" -m experiments.report "$out" --out "$res"
  if [ "$name" = study ]; then "$PY" -m experiments.study "$out" --out "$res"; fi
done
