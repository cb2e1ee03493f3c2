# Sourced by the deploy/*.sh scripts: find Flower's commands and set quiet defaults.
#
# The commands come from the environment atm-fl is installed in. Activate it first, or
# point ATM_FL_VENV at it (ATM_FL_VENV=/opt/atm-fl/.venv deploy/start-superlink.sh ...):
# flower-superlink and flower-supernode start further Flower commands (flower-superexec,
# flwr-serverapp, flwr-clientapp) by name, so the environment's bin/ must be on PATH.
if [[ -n ${ATM_FL_VENV:-} ]]; then
    PATH="$ATM_FL_VENV/bin:$PATH"
fi
export PATH
for _cmd in "$@"; do
    if ! command -v "$_cmd" >/dev/null 2>&1; then
        echo "$(basename "$0"): '$_cmd' not found: activate the environment atm-fl is installed in," \
             "or set ATM_FL_VENV=/path/to/venv" >&2
        exit 127
    fi
done
unset _cmd
# No telemetry or update checks from any Flower process these scripts start.
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}

# usage: print the comment block at the top of the calling script (after the shebang).
usage() {
    sed -n '2,/^[^#]/p' "$0" | sed -e '/^[^#]/d' -e 's/^# \{0,1\}//'
}

# abspath PATH: the absolute path (the file need not exist yet).
abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}
