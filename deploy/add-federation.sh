#!/usr/bin/env bash
# Name a SuperLink in the Flower CLI's configuration, for `flwr run . NAME` and
# `flwr supernode register KEY NAME`.
#
#   deploy/add-federation.sh NAME HOST:PORT CA_CERT
#
# Writes [superlink.NAME] (address, root-certificates) into $FLWR_HOME/config.toml
# (default ~/.flwr/config.toml), keeping every other entry; run it again to change one.
# HOST must be a name the SuperLink's certificate lists (deploy/make-certs.sh). Since
# Flower 1.41, federations live there and not in pyproject.toml.
set -euo pipefail
source "$(dirname "$0")/_env.sh" flwr
# The interpreter flwr runs on has tomli/tomli_w (Flower depends on them).
py=$(head -1 "$(command -v flwr)" | sed -n 's/^#! *//p')
[[ -x ${py%% *} ]] || py=python3

if [[ $# -ne 3 ]]; then
    usage >&2
    exit 2
fi
name=$1 address=$2 ca=$(abspath "$3")
[[ -s $ca ]] || { echo "add-federation: CA certificate '$ca' not found" >&2; exit 2; }
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "add-federation: NAME must be letters, digits, '_' or '-'" >&2; exit 2; }

$py - "$name" "$address" "$ca" <<'PY'
import os
import sys
from pathlib import Path

import tomli
import tomli_w

name, address, ca = sys.argv[1:]
home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()
path = home / "config.toml"
config = tomli.loads(path.read_text()) if path.exists() else {}
links = config.setdefault("superlink", {})
links.setdefault("default", "local")
links.setdefault("local", {"address": ":local:"})
links[name] = {"address": address, "root-certificates": ca}
home.mkdir(parents=True, exist_ok=True)
path.write_text(tomli_w.dumps(config))
print(f"federation '{name}': {address}, CA {ca} -> {path}")
PY
