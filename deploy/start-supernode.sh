#!/usr/bin/env bash
# Start one site's SuperNode, in the foreground: it serves one task from the site's own data.
#
#   deploy/start-supernode.sh --superlink HOST:PORT --ca CA_CERT --key PRIVATE_KEY --task NAME
#                             [--data-dir DIR] [--port 9094] [-- FLAGS...]
#
#   --superlink   the SuperLink's address, as its certificate names it
#   --ca          the CA certificate that signed the SuperLink's certificate (ca.crt)
#   --key         this site's private key (deploy/make-node-keys.sh; its .pub must be
#                 registered with deploy/register-site.sh, or the SuperLink refuses the node)
#   --task        the task this site serves (run-config 'tasks' names it)
#   --data-dir    the site's local copy of the task's data (optional; default: the task's
#                 built-in offline data). It is read here and never sent anywhere: only
#                 task vectors and metrics leave the site.
#   --port        this SuperNode's local Runtime API port (127.0.0.1), used by the
#                 ClientApp processes it starts; give each SuperNode on a host its own
#   -- FLAGS...   passed on to flower-supernode (e.g. --max-retries 5)
#
# The process replaces this script (exec): its PID is the SuperNode's.
set -euo pipefail
source "$(dirname "$0")/_env.sh" flower-supernode flwr-clientapp

superlink="" ca="" key="" task="" data_dir="" port=9094
while [[ $# -gt 0 ]]; do
    case $1 in
        --superlink) superlink=$2; shift 2 ;;
        --ca) ca=$2; shift 2 ;;
        --key) key=$2; shift 2 ;;
        --task) task=$2; shift 2 ;;
        --data-dir) data_dir=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start-supernode: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
for v in superlink ca key task; do
    [[ -n ${!v} ]] || { echo "start-supernode: --$v is required" >&2; usage >&2; exit 2; }
done
[[ -s $ca ]] || { echo "start-supernode: CA certificate '$ca' not found" >&2; exit 2; }
[[ -s $key ]] || { echo "start-supernode: private key '$key' not found" >&2; exit 2; }
[[ $task =~ ^[A-Za-z0-9._-]+$ ]] || { echo "start-supernode: bad task name '$task'" >&2; exit 2; }
# Flower parses node config as TOML values: strings need double quotes.
node_config="task=\"$task\""
if [[ -n $data_dir ]]; then
    [[ -d $data_dir ]] || { echo "start-supernode: data directory '$data_dir' not found" >&2; exit 2; }
    data_dir=$(abspath "$data_dir")
    [[ $data_dir != *'"'* && $data_dir != *'\'* ]] || { echo "start-supernode: data-dir must not contain '\"' or '\\'" >&2; exit 2; }
    node_config+=" data-dir=\"$data_dir\""
fi

exec flower-supernode \
    --superlink "$superlink" \
    --root-certificates "$(abspath "$ca")" \
    --auth-supernode-private-key "$(abspath "$key")" \
    --node-config "$node_config" \
    --port "$port" \
    "$@"
