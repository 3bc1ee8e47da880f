#!/usr/bin/env bash
# A one-node SLURM cluster on loopback for tests/slurm (Debian's slurm-wlm; munge for auth).
#
#   .ci/slurm-up.sh            install (if needed), configure, start, wait for the node to be idle
#   . "$LLEM_SLURM_DIR/env.sh" then sinfo/sbatch/... talk to it (SLURM_CONF is set there)
#   .ci/slurm-down.sh          stop everything and remove the state directory
#
# No slurmdbd: accounting_storage/none, so `sacct` is unavailable and llem falls back to
# `squeue` + `scontrol show job` (MinJobAge keeps finished jobs visible for an hour).
set -euo pipefail

DIR="${LLEM_SLURM_DIR:-/tmp/llem-slurm}"
PARTITION="${LLEM_SLURM_PARTITION:-debug}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$DIR"/{spool/ctld,spool/d,log,run,munge}
chmod 700 "$DIR/munge"
USER_NAME="$(id -un)"

# munge: a private key and socket in the state directory.
if [ ! -f "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
fi
MUNGE_SOCKET="$DIR/munge/munge.socket"
munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
    --log-file="$DIR/log/munged.log" --force

MEM="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
CPUS="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)"
MEM=$(( MEM > 1024 ? MEM - 512 : MEM ))

cat > "$DIR/slurm.conf" <<CONF
ClusterName=llemci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${LLEM_SLURM_CTLD_PORT:-16817}
SlurmdPort=${LLEM_SLURM_D_PORT:-16818}
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# Plugstack config next to slurm.conf (Debian's default include dir may be absent).
: > "$DIR/plugstack.conf"
echo "PlugStackConfig=$DIR/plugstack.conf" >> "$DIR/slurm.conf"

cat > "$DIR/env.sh" <<ENV
export SLURM_CONF="$DIR/slurm.conf"
ENV
export SLURM_CONF="$DIR/slurm.conf"

slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N localhost

for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)"
    if [ "$state" = "idle" ]; then
        echo "slurm-up: node localhost idle (SLURM_CONF=$SLURM_CONF)"
        exit 0
    fi
    sleep 1
done
echo "slurm-up: node did not become idle; state: ${state:-unknown}" >&2
sinfo -N -l >&2 || true
tail -n 30 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
exit 1
