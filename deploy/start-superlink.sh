#!/usr/bin/env bash
# Start the SuperLink with TLS and SuperNode authentication, in the foreground.
#
#   deploy/start-superlink.sh --certs DIR [--host 127.0.0.1] [--port 9093] [--state DIR] [-- FLAGS...]
#
#   --certs DIR   holds ca.crt, server.pem, server.key (deploy/make-certs.sh)
#   --host HOST   interface to listen on (default 127.0.0.1). In Flower 1.41 the Fleet API
#                 (SuperNodes), the Control API (flwr run/ls/stop, supernode register) and
#                 the Runtime API all share this one address and port, and the open-source
#                 Control API has no login: bind to loopback or a private interface (VPN),
#                 never to a public one. See docs/deployment.md.
#   --port PORT   port (default 9093)
#   --state DIR   where the SuperLink keeps its database: registered keys, runs (default
#                 ./superlink-state); keep it across restarts, or register the sites again
#   -- FLAGS...   passed on to flower-superlink
#
# The process replaces this script (exec): its PID is the SuperLink's; stop it with
# SIGTERM (Ctrl-C). Dependencies of submitted apps are not installed at run time
# (--disable-runtime-dependency-installation): the SuperLink uses its own environment.
set -euo pipefail
source "$(dirname "$0")/_env.sh" flower-superlink flower-superexec flwr-serverapp

host=127.0.0.1 port=9093 certs="" state=superlink-state
while [[ $# -gt 0 ]]; do
    case $1 in
        --host) host=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --certs) certs=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start-superlink: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ -z $certs ]]; then
    echo "start-superlink: --certs DIR is required (make one with deploy/make-certs.sh)" >&2
    exit 2
fi
certs=$(abspath "$certs")
for f in ca.crt server.pem server.key; do
    [[ -s $certs/$f ]] || { echo "start-superlink: $certs/$f is missing (deploy/make-certs.sh)" >&2; exit 2; }
done
case $host in
    0.0.0.0|::|"[::]")
        echo "start-superlink: WARNING: listening on all interfaces exposes the Control API (no login)" \
             "to every network this host is on; prefer a VPN address or 127.0.0.1 + SSH tunnels." >&2 ;;
esac
mkdir -p "$state"
state=$(abspath "$state")

exec flower-superlink \
    --host "$host" --port "$port" \
    --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
    --enable-supernode-auth \
    --database "$state/superlink.db" \
    --disable-runtime-dependency-installation \
    "$@"
