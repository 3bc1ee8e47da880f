#!/usr/bin/env bash
# Stop the one-node test cluster started by .ci/slurm-up.sh and remove its state directory.
set -uo pipefail
DIR="${LLEM_SLURM_DIR:-/tmp/llem-slurm}"
[ -d "$DIR" ] || exit 0
if [ -f "$DIR/slurm.conf" ]; then
    SLURM_CONF="$DIR/slurm.conf" scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
fi
stop() {  # stop the daemon whose pid file is $1 (only that pid), waiting up to 10 s
    local pidfile="$1" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
stop "$DIR/run/slurmd.pid"
stop "$DIR/run/slurmctld.pid"
stop "$DIR/munge/munged.pid"
rm -rf "$DIR"
echo "slurm-down: stopped and removed $DIR"
