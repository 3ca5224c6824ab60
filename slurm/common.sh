# Shared by slurm/single_node.sbatch and slurm/multi_node.sbatch (sourced, not submitted).
#
# Settings come from the environment (sbatch exports the submitting shell's by default) and the
# job script's arguments, which are config overrides (key=value):
#   DISTGAN_HOME            the distgan checkout (default: where sbatch was called, $SLURM_SUBMIT_DIR);
#                           the job runs there, so relative paths (configs/, data/, runs/) are the repo's
#   DISTGAN_PYTHON          the interpreter with distgan's dependencies
#                           (default: $DISTGAN_HOME/.venv/bin/python, else python3)
#   DISTGAN_CONFIG          training config (default: configs/fashion_house.yaml)
#   DISTGAN_NAME            run name (default: the job name); DISTGAN_RUN_DIR (default: runs);
#                           the run lives in $DISTGAN_RUN_DIR/$DISTGAN_NAME (not name=/run_dir= overrides:
#                           this script must know the run directory to stop and requeue it)
#   DISTGAN_OVERRIDES       more key=value overrides, space-separated (no quoting)
#   DISTGAN_MARKERS         the directory under the run whose STOP / STOPPED / COMPLETED this job owns
#                           (default: the run's own; slurm/lapgan_levels.sbatch: its level's, levels/level-K):
#                           $RUN below is that directory, so a start clears, and a stop touches, only its own
#   DISTGAN_CPU=1           no GPUs: gloo DDP on the CPU (ACCELERATE_USE_CPU=1, launch/cpu.yaml)
#   DISTGAN_PROCS_PER_NODE  processes per node (default: one per GPU of the node; 2 with DISTGAN_CPU=1)
#   DISTGAN_LAUNCH_CONFIG   the accelerate config file (default: one of launch/*.yaml, by the shape of the job)
#   DISTGAN_MAIN_ADDR       multi-node rendezvous address (default: the job's first host name; set it
#                           where node names do not resolve to an address every node can reach)
#   DISTGAN_MAIN_PORT       multi-node rendezvous port (default: 20000 + job id % 20000, so that
#                           requeued and concurrent jobs do not collide)
#
# Preemption and time limits: the job scripts ask for `--signal=B:USR1@120` (USR1 to this batch shell
# only, 120 s before the end) and `--requeue`. On USR1 the shell touches $RUN/STOP; every rank polls
# that file at each step boundary and the trainer all-reduces the decision, so it is enough that the
# ranks on this node see it at once (those on other nodes may see a shared filesystem's cached view),
# and all of them write one checkpoint and exit 0. The shell then requeues the job; the next start
# resumes from that checkpoint (train.resume=auto) and continues the same W&B run (NAME/wandb_id.txt).
# The signal is NOT forwarded to the launcher: torchrun's agent has no USR1 handler, so USR1 would kill
# it (and with it the workers) before they could checkpoint.
# SIGTERM (scancel, a time limit without --signal, preemption) reaches every rank from SLURM itself;
# each checkpoints at the next step boundary. Preemption (PreemptMode=REQUEUE with a GraceTime) sends
# it at once only to job steps, hence the launcher runs under srun in both scripts; a job that then
# ends within its GraceTime is COMPLETED by SLURM (22.05), not requeued, so the shell requeues a
# preempted job itself once the ranks have stopped. torchrun's agent forwards the SIGTERM too, waits
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT for the ranks (then SIGKILL) and exits 1 however cleanly they
# stopped: the shell judges by the trainer's own mark, $RUN/STOPPED (or COMPLETED).

set -euo pipefail

log() { echo "distgan[$(date '+%F %T')] $*"; }
die() { log "error: $*" >&2; exit 2; }

# distgan_setup OVERRIDE...: settle the paths, build LAUNCH (the accelerate launcher and its flags, up to
# the per-node --machine_rank) and TRAIN (the training script and its arguments), remove a stale STOP
# (of $RUN: the run directory, or DISTGAN_MARKERS under it).
distgan_setup() {
    DISTGAN_HOME=${DISTGAN_HOME:-${SLURM_SUBMIT_DIR:?not in a SLURM job}}
    cd "$DISTGAN_HOME"
    [[ -f distgan/train.py ]] || die "DISTGAN_HOME=$DISTGAN_HOME is not a distgan checkout"
    if [[ -z ${DISTGAN_PYTHON:-} ]]; then
        DISTGAN_PYTHON=python3
        if [[ -x .venv/bin/python ]]; then DISTGAN_PYTHON=$DISTGAN_HOME/.venv/bin/python; fi
    fi
    # The checkout's distgan, whichever interpreter runs it (also on the other nodes: srun passes the env on).
    export PYTHONPATH=$DISTGAN_HOME${PYTHONPATH:+:$PYTHONPATH}
    local config=${DISTGAN_CONFIG:-configs/fashion_house.yaml}
    NAME=${DISTGAN_NAME:-$SLURM_JOB_NAME}
    # Resolve the run directory, not the run: runs/NAME may be a symlink and NAME may hold a "/";
    # the trainer must use exactly $RUN (run_dir/name), or it would never see $RUN/STOP.
    local run_dir
    run_dir=$(realpath -m -- "${DISTGAN_RUN_DIR:-runs}")
    RUN=$run_dir/$NAME
    local overrides=()
    read -ra overrides <<< "${DISTGAN_OVERRIDES:-}"
    overrides+=("$@")
    local o  # ${a[@]+"${a[@]}"}: an empty array is "unbound" to set -u in bash < 4.4 (e.g. CentOS 7)
    for o in ${overrides[@]+"${overrides[@]}"}; do
        case $o in name=* | run_dir=*) die "set the run with DISTGAN_NAME / DISTGAN_RUN_DIR, not '$o'" ;; esac
    done
    TRAIN=(distgan/train.py --config "$config" ${overrides[@]+"${overrides[@]}"} "run_dir=$run_dir" "name=$NAME")
    # A requeued start continues its own newest checkpoint, whatever train.resume said at first.
    if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then TRAIN+=(train.resume=auto); fi

    local nodes=${SLURM_JOB_NUM_NODES:-1} per_node
    if [[ ${DISTGAN_CPU:-0} == 1 ]]; then
        export ACCELERATE_USE_CPU=1  # accelerate's multi-process launcher would not tell the ranks
        per_node=${DISTGAN_PROCS_PER_NODE:-2}
    else
        per_node=${DISTGAN_PROCS_PER_NODE:-$(gpus_on_node)}
        (( per_node > 0 )) || die "no GPU on this node: ask for --gpus-per-node, or set DISTGAN_CPU=1"
    fi
    # Threads per process: the task's CPUs shared out (torchrun would otherwise force 1).
    local threads=$(( ${SLURM_CPUS_PER_TASK:-$(nproc)} / per_node ))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}

    local launch_config
    LAUNCH=("$DISTGAN_PYTHON" -m accelerate.commands.launch)
    if (( nodes > 1 )); then
        launch_config=launch/multi_node.yaml
        local addr=${DISTGAN_MAIN_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
        local port=${DISTGAN_MAIN_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
        LAUNCH+=(--num_machines "$nodes" --main_process_ip "$addr" --main_process_port "$port")
        log "rendezvous at $addr:$port"
        if [[ ${DISTGAN_CPU:-0} == 1 ]]; then LAUNCH+=(--mixed_precision no); fi  # the template says bf16
    elif [[ ${DISTGAN_CPU:-0} == 1 ]]; then
        launch_config=launch/cpu.yaml
    elif (( per_node == 1 )); then
        launch_config=launch/single_gpu.yaml
    else
        launch_config=launch/multi_gpu.yaml
    fi
    LAUNCH+=(--config_file "${DISTGAN_LAUNCH_CONFIG:-$launch_config}" --num_processes $(( per_node * nodes )))

    # torchrun's agent SIGKILLs the ranks this long after it forwarded a SIGTERM (30 s by default): let
    # SLURM's GraceTime / KillWait be the limit for one step plus a checkpoint instead.
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}

    RUN=$RUN${DISTGAN_MARKERS:+/$DISTGAN_MARKERS}  # the trainer's STOP and outcome of this job
    mkdir -p "$RUN"
    # A STOP left by a preempted start would stop this one at its first step; a STOPPED would pass
    # for this start's outcome. Only this job's own: a run-wide STOP meant for an array's siblings stays.
    rm -f "$RUN/STOP" "$RUN/STOPPED"
    log "job ${SLURM_JOB_ID:-?} start $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
        "$nodes node(s) x $per_node process(es), run $RUN, config $config"
}

gpus_on_node() {
    if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi > /dev/null; then
        nvidia-smi -L | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# distgan_run CMD...: run CMD in the background and wait for it, with the batch shell alive to trap
# USR1 (a trapped signal interrupts `wait`; the loop waits again). Then judge by the trainer's outcome,
# not CMD's status alone: COMPLETED -> exit 0; a job SLURM preempted -> requeue it, as SLURM would at
# the end of the grace time; STOPPED (a checkpoint written on STOP, USR1 or SIGTERM) -> requeue after
# USR1, else exit 0; neither -> a failure: exit with CMD's status, never requeued.
distgan_run() {
    PREEMPTED=0
    trap 'PREEMPTED=1; log "USR1: checkpoint at the next step boundary, then requeue"; touch "$RUN/STOP"' USR1
    # scancel / a time limit / PreemptMode=REQUEUE send TERM to every process: the ranks checkpoint on
    # their own (within KillWait or GraceTime); the shell keeps waiting for them.
    trap 'log "TERM: the ranks checkpoint at the next step boundary"; touch "$RUN/STOP"' TERM
    "$@" &
    local child=$! rc
    while :; do
        rc=0
        wait "$child" || rc=$?
        if kill -0 "$child" 2> /dev/null; then continue; fi  # still alive: `wait` was interrupted by a trap
        # It ended, maybe while a trap ran: then rc is the trap's 128+signal; bash kept the real status.
        if (( rc > 128 )); then rc=0; wait "$child" || rc=$?; fi
        break
    done
    trap - USR1 TERM
    rm -f "$RUN/STOP"
    if [[ -e $RUN/COMPLETED ]]; then
        log "run completed at step $(< "$RUN/COMPLETED")"
        exit 0
    fi
    local outcome="training failed (exit $rc)"
    if [[ -e $RUN/STOPPED ]]; then
        outcome="every rank stopped with a checkpoint"
        # torchrun's agent exits 1 after forwarding a SIGTERM, however cleanly the ranks stopped.
        if (( rc != 0 )); then log "the launcher exited $rc: torchrun re-raises the SIGTERM it forwarded"; fi
    elif (( rc == 0 )); then
        outcome="training ended before the end"
    fi
    # Ended within its GraceTime, a preempted job would be COMPLETED, not requeued: requeue it as SLURM
    # would at the end of the grace time (the next start resumes from the newest complete checkpoint).
    if slurm_preempted; then requeue "preempted: $outcome"; fi
    if [[ ! -e $RUN/STOPPED ]] && (( rc != 0 )); then
        log "$outcome; not requeued"
        exit "$rc"
    fi
    if (( PREEMPTED )); then requeue "$outcome"; fi
    log "$outcome (STOP file, scancel or a time limit); not requeued"
}

requeue() {
    log "$1; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || die "requeue refused; submit again: the run resumes from its checkpoint"
    exit 0
}

# slurm_preempted: SLURM chose this job for preemption (its PreemptTime is set).
slurm_preempted() {
    local record
    record=$(scontrol show job -o "${SLURM_JOB_ID:-none}" 2> /dev/null) || return 1
    [[ $record =~ PreemptTime=([^ ]+) ]] && [[ ${BASH_REMATCH[1]} != None ]]
}
