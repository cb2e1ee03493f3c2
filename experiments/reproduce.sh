#!/usr/bin/env bash
# Reproduce docs/results/ from scratch: the image (embedded default) and text sweeps, then their reports.
#   bash experiments/reproduce.sh            # both
#   bash experiments/reproduce.sh image      # one of: image, text
# Resumable: re-running skips every finished cell. Sweep directories: runs/sweeps/<name> (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
which=("${@:-image text}")
for name in ${which[@]}; do
  case "$name" in
    image) grid=experiments/grids/image-default.toml; out=runs/sweeps/image-default; res=docs/results/image-default ;;
    text)  grid=experiments/grids/text-minilm.toml;   out=runs/sweeps/text-minilm;   res=docs/results/text-minilm ;;
    *) echo "unknown sweep '$name' (image, text)" >&2; exit 2 ;;
  esac
  "$PY" -m experiments.sweep --grid "$grid" --out "$out"
  "$PY" -m experiments.report "$out" --out "$res"
done
