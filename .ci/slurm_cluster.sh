#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (localhost), from Debian's packages.
#
# Used by CI (.ci/run) and by `pytest -m slurm` (tests/test_slurm.py) to run the workflow through
# the real snakemake-executor-plugin-slurm: jobs really go through sbatch, slurmctld and slurmd.
#
#   sudo .ci/slurm_cluster.sh          # install if needed, configure, start, wait until the node is idle
#   sudo .ci/slurm_cluster.sh stop     # stop the daemons this script started
#   .ci/slurm_cluster.sh status        # sinfo / squeue / where the logs are
#
# What it sets up (lightest setup that makes `sacct` list finished jobs):
#   - munge (authentication), slurmctld (controller), slurmd (the compute node daemon);
#   - the node has the machine's real CPUs and memory (from `slurmd -C`), no GPUs (no gres);
#   - SLURM_TEST_NODES (default 2) slurmd daemons on this one machine, each a node of its own
#     (slurmd -N; the first is named after this host, the others <host>-n2, ...), so that multi-node
#     jobs (sbatch --nodes=2, srun one task per node, a torchrun c10d rendezvous) really run.
#     Each node advertises the whole machine; only tests share it. SLURM_TEST_NODES=1: one node;
#   - no slurmdbd / no database: accounting_storage/none, and job completion records written by
#     jobcomp/filetxt, which `sacct -c` (--completion) reads. Plain `sacct` needs slurmdbd (and a
#     MariaDB server), far heavier for a CI machine; `sacct -c` lists the same finished jobs with
#     job id, name, state, partition, node list and exit code.
#   - MinJobAge=3600 so finished jobs stay visible to squeue for an hour: the test runs the SLURM
#     executor plugin with `--slurm-status-command squeue`, as sacct without slurmdbd cannot answer
#     its status queries.
#   - no cgroups (proctrack/pgid, task/none): works inside containers and gVisor sandboxes; pgid
#     kills what a job step leaves behind when the step ends, as cgroup does on real clusters.
#
# Idempotent: a second call finds the cluster answering and only prints its state. It refuses to
# overwrite a slurm.conf it did not write (marker line below), so it never clobbers a real cluster's
# configuration. Needs root (slurmd runs jobs as their submitting user). Debian/Ubuntu only (apt).
set -euo pipefail

MARKER="# written by cosmos-posttrain .ci/slurm_cluster.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
RUN_DIR=/run/slurm
PARTITION="${SLURM_TEST_PARTITION:-debug}"
NODES="${SLURM_TEST_NODES:-2}"
WAIT_S="${SLURM_CLUSTER_WAIT_S:-60}"

log() { echo "[slurm_cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

print_where() {
    cat >&2 <<EOF
[slurm_cluster] config:            $CONF
[slurm_cluster] controller log:    $LOG_DIR/slurmctld.log
[slurm_cluster] node daemon logs:  $LOG_DIR/slurmd-<node>.log
[slurm_cluster] munge log:         /var/log/munge/munged.log
[slurm_cluster] job completions:   $LOG_DIR/jobcomp.log   (read with: sacct -c)
EOF
}

node_names() {
    # the first node is this host (its name resolves here: it is the rendezvous host of
    # multi-node jobs), then <host>-n2, <host>-n3, ...
    local host i
    host=$(hostname -s)
    echo "$host"
    for ((i = 2; i <= NODES; i++)); do echo "$host-n$i"; done
}

cluster_answers() {
    # true when the controller answers and all nodes are usable (idle, mixed or allocated)
    local states n_up
    states=$(timeout 10 sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null) || return 1
    n_up=$(grep -c -E '^(idle|mix|alloc|completing)' <<<"$states" || true)
    [[ $n_up -ge $NODES ]]
}

cmd_status() {
    if command -v sinfo >/dev/null && cluster_answers; then
        sinfo -N >&2
        squeue >&2 || true
        print_where
        return 0
    fi
    log "no SLURM cluster answers sinfo"
    print_where
    return 1
}

stop_daemon() {
    # stop one daemon through its pid file (only the daemons this script started write these)
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid" || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

stop_slurmds() {
    local pidfile
    for pidfile in "$RUN_DIR"/slurmd-*.pid "$RUN_DIR"/slurmd.pid; do
        [[ -e $pidfile ]] && stop_daemon "slurmd $(basename "$pidfile" .pid)" "$pidfile"
    done
    return 0
}

cmd_stop() {
    stop_slurmds
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon munged /run/munge/munged.pid
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
        log "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    local host cpus mem node_line
    host=$(hostname -s)
    # the node's real hardware, as slurmd itself detects it
    node_line=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    [[ -n $cpus && -n $mem ]] || die "cannot read CPUs/RealMemory from 'slurmd -C': $node_line"
    # keep 5% (at least 256 MB) of memory for the OS so slurmd never reports less than configured
    local reserve=$((mem / 20 > 256 ? mem / 20 : 256))
    mem=$((mem - reserve))

    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR"
    install -d -m 0755 "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    local name
    for name in $(node_names); do install -d -m 0755 "$STATE_DIR/slurmd/$name"; done
    chown -R slurm:slurm "$STATE_DIR/slurmctld" "$LOG_DIR"

    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
$MARKER
# Test cluster on this one machine (localhost). Not for production.
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups (works in containers / sandboxes). proctrack/pgid, like proctrack/cgroup on real
# clusters, kills what a job step leaves behind when the step ends (linuxproc lets orphans escape,
# which would hide a process that must outlive its step and does not)
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
# %n: one pid file, spool folder and log per node (several slurmd on this machine)
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd/%n
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# scheduling: CPUs and memory are consumable, so --mem / --cpus-per-task are enforced by the scheduler
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# accounting without slurmdbd: completion records that 'sacct -c' reads
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# finished jobs stay visible to squeue for an hour (the executor plugin's squeue status command)
MinJobAge=3600
InactiveLimit=0
KillWait=10
Waittime=0
EOF
    # one line per node: all on this machine, each slurmd on its own port
    local port=17001 names=()
    for name in $(node_names); do
        echo "NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$tmp"
        names+=("$name")
        port=$((port + 1))
    done
    local IFS=,
    echo "PartitionName=$PARTITION Nodes=${names[*]} Default=YES MaxTime=INFINITE State=UP" >>"$tmp"
    unset IFS
    chmod 0644 "$tmp"
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    mv -f "$tmp" "$CONF"
    log "wrote $CONF ($NODES node(s) on $host, each $cpus CPUs, $mem MB)"
    return 0
}

daemon_running() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

cmd_start() {
    [[ $(id -u) -eq 0 ]] || die "run as root (slurmd must run as root): sudo $0"
    if command -v sinfo >/dev/null && [[ -f $CONF ]] && cluster_answers; then
        log "cluster already up"
        cmd_status
        return 0
    fi
    install_packages
    start_munge
    local changed=0
    write_config && changed=1
    if ((changed)); then
        # a new configuration: restart what runs with the old one
        stop_slurmds
        stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    fi
    if ! daemon_running "$RUN_DIR/slurmctld.pid"; then
        log "starting slurmctld"
        # after a configuration change, -i ignores the state files of the earlier one
        local flags=()
        ((changed)) && flags=(-i)
        slurmctld "${flags[@]}" || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
    fi
    local name
    for name in $(node_names); do
        if ! daemon_running "$RUN_DIR/slurmd-$name.pid"; then
            log "starting slurmd for node $name"
            slurmd -N "$name" || die "slurmd -N $name failed to start (see $LOG_DIR/slurmd-$name.log)"
        fi
    done
    local t0=$SECONDS
    until cluster_answers; do
        if ((SECONDS - t0 > WAIT_S)); then
            sinfo -N -l >&2 || true
            tail -n 20 "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd-*.log >&2 || true
            die "node not idle after ${WAIT_S}s"
        fi
        # a node marked down by an earlier run comes back here
        for name in $(node_names); do
            scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
        done
        sleep 1
    done
    log "cluster up in $((SECONDS - t0))s"
    cmd_status
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
