#!/usr/bin/env bash
# Start one site's SuperNode, in the foreground: it serves one task from the site's own data.
#
#   deploy/start-supernode.sh --superlink HOST:PORT --ca CA_CERT --key PRIVATE_KEY --task NAME
#                             [--data-dir DIR] [--port 9094] [--rejoin-wait 90] [-- FLAGS...]
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
#   --rejoin-wait seconds to keep retrying, every 5 s, while the SuperLink refuses to
#                 activate this SuperNode (default 90; 0 gives up at once). A SuperNode
#                 that died without signing off (kill -9, crash, power loss) counts as
#                 online until 2 x 30 s after its last heartbeat (Flower 1.42's fixed
#                 heartbeat settings), and until then a restart with the same key is refused.
#   -- FLAGS...   passed on to flower-supernode (e.g. --max-retries 5)
#
# The script stays in the foreground as a small supervisor: its PID is the one to stop.
# SIGTERM, SIGINT (Ctrl-C) or SIGHUP are passed to the SuperNode, which signs off from the
# SuperLink, so a restart is accepted at once. The SuperNode and the processes it starts
# (flower-superexec, and one flwr-clientapp per message) run in a process group of their
# own. Whenever the SuperNode exits, stopped or killed, the script ends that group, so no
# ClientApp keeps running. If the script itself is killed with SIGKILL, the SuperNode
# gets SIGTERM (setpriv --pdeathsig, util-linux). The exit status is the SuperNode's.
set -euo pipefail
source "$(dirname "$0")/_env.sh" flower-supernode flwr-clientapp

superlink="" ca="" key="" task="" data_dir="" port=9094 rejoin_wait=90
while [[ $# -gt 0 ]]; do
    case $1 in
        --superlink) superlink=$2; shift 2 ;;
        --ca) ca=$2; shift 2 ;;
        --key) key=$2; shift 2 ;;
        --task) task=$2; shift 2 ;;
        --data-dir) data_dir=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --rejoin-wait) rejoin_wait=$2; shift 2 ;;
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
[[ $rejoin_wait =~ ^[0-9]+$ ]] || { echo "start-supernode: --rejoin-wait must be whole seconds, not '$rejoin_wait'" >&2; exit 2; }
# Flower parses node config as TOML values: strings need double quotes.
node_config="task=\"$task\""
if [[ -n $data_dir ]]; then
    [[ -d $data_dir ]] || { echo "start-supernode: data directory '$data_dir' not found" >&2; exit 2; }
    data_dir=$(abspath "$data_dir")
    [[ $data_dir != *'"'* && $data_dir != *'\'* ]] || { echo "start-supernode: data-dir must not contain '\"' or '\\'" >&2; exit 2; }
    node_config+=" data-dir=\"$data_dir\""
fi

ca=$(abspath "$ca")
key=$(abspath "$key")

# Job control: each background job gets its own process group, whose ID is the job's PID.
set -m
launcher=()
if setpriv --pdeathsig TERM true 2>/dev/null; then  # util-linux >= 2.33
    launcher=(setpriv --pdeathsig TERM)
fi

child="" stop_signal=""
pass_on() {
    stop_signal=$1
    if [[ -n $child ]]; then
        kill -s "$1" "$child" 2>/dev/null || true
    fi
}
trap 'pass_on TERM' TERM
trap 'pass_on INT' INT
trap 'pass_on HUP' HUP

# end_group PGID: SIGTERM to what is left of the SuperNode's process group, SIGKILL after 10 s.
end_group() {
    local i
    kill -s TERM -- "-$1" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$1" 2>/dev/null || return 0
        sleep 0.2
    done
    echo "start-supernode: processes of the SuperNode's group $1 ignored SIGTERM; sending SIGKILL" >&2
    kill -s KILL -- "-$1" 2>/dev/null || true
}

# The SuperNode's output passes through relay, which notes a refused activation: Flower
# exits with status 1 for every error, and only the message tells this one apart. (A
# shell loop, not awk: mawk holds piped input back until its buffer fills.)
work=$(mktemp -d "${TMPDIR:-/tmp}/start-supernode.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkfifo "$work/out"
relay() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\n' "$line"
        if [[ $line == *"Failed to activate SuperNode"* ]]; then
            : >"$work/refused"
        fi
    done <"$work/out"
}
retry=5
give_up=$((SECONDS + rejoin_wait))
while true; do
    rm -f "$work/refused"
    relay &
    reader=$!
    "${launcher[@]}" flower-supernode \
        --superlink "$superlink" \
        --root-certificates "$ca" \
        --auth-supernode-private-key "$key" \
        --node-config "$node_config" \
        --port "$port" \
        "$@" <"/dev/null" >"$work/out" 2>&1 &
    child=$!
    # A trapped signal interrupts `wait` (status > 128) while the SuperNode lives on.
    rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do
        rc=0
        wait "$child" || rc=$?
    done
    # If it exited just after an interrupted `wait`, bash has kept its status for this call.
    last=0
    wait "$child" 2>/dev/null || last=$?
    [[ $last -eq 127 ]] || rc=$last
    end_group "$child"
    child=""
    wait "$reader" || true  # the group is gone, so the pipe is closed and relay has read everything
    [[ -z $stop_signal ]] || exit "$rc"
    if [[ -e $work/refused ]] && ((SECONDS < give_up)); then
        echo "start-supernode: the SuperLink did not activate this SuperNode. If this site's previous SuperNode" \
             "died without signing off, the SuperLink counts it online for up to 60 s after its last heartbeat." \
             "Retrying in ${retry} s, for up to --rejoin-wait ${rejoin_wait} s in all. (An unregistered key is" \
             "refused the same way: see the SuperLink's log.)" >&2
        sleep "$retry" &
        wait $! || true
        [[ -z $stop_signal ]] || exit 0
        continue
    fi
    exit "$rc"
done
