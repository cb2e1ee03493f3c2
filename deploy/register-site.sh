#!/usr/bin/env bash
# Register a site's SuperNode public key with the SuperLink (Flower 1.41: through the
# Control API, with `flwr supernode register`). Only registered keys may connect.
#
#   deploy/register-site.sh FEDERATION KEY.pub [SITE_NAME]
#
# FEDERATION is a name from deploy/add-federation.sh. Prints the node ID the SuperLink
# gave the key. Registering a key twice is not an error here (Flower refuses it with
# "Public key already in use"; this script reports it and exits 0).
# Undo with: flwr supernode unregister NODE_ID FEDERATION.
set -euo pipefail
source "$(dirname "$0")/_env.sh" flwr

if [[ $# -lt 2 || $# -gt 3 ]]; then
    usage >&2
    exit 2
fi
federation=$1 key=$2 name=${3:-$(basename "${2%.pub}")}
set +e
out=$(flwr supernode register "$key" "$federation" --name "$name" --format json 2>&1)
rc=$?
set -e
# With --format json, flwr exits 0 even when it fails: read "success" and "node-id".
node=$(printf '%s\n' "$out" | sed -n 's/.*"node-id": *"\{0,1\}\([0-9][0-9]*\).*/\1/p')
if [[ $rc -eq 0 && $out == *'"success": true'* && -n $node ]]; then
    echo "registered $name ($key) as node $node"
elif [[ $out == *"already in use"* ]]; then
    echo "$name ($key) is already registered"
else
    printf '%s\n' "$out" >&2
    echo "register-site: could not register $key with '$federation'" >&2
    exit 1
fi
