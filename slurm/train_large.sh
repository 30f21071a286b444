#!/bin/bash
# Train XLM-R-large (ZeRO-2, bf16) with dist-lacl on several GPU nodes: one task per GPU, and a job that
# checkpoints and requeues itself before its time limit. See docs/slurm.md.
#
#   sbatch slurm/train_large.sh [section.key=value ...]
#
# The #SBATCH lines below are defaults for a GPU cluster. Command-line options override them, e.g.
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 --partition=gpu slurm/train_large.sh
# (partition, time limit, GPUs per node, account, ... can also come from SBATCH_PARTITION,
# SBATCH_TIMELIMIT, SBATCH_GPUS_PER_NODE, SBATCH_ACCOUNT; keep --ntasks-per-node equal to the GPUs per node).
# Everything else comes from the environment (CONFIG, OUTPUT_DIR, TRAIN_OVERRIDES, DIST_LACL_SETUP,
# DIST_LACL_CMD, ...): the variables, their defaults and the job shape are in docs/slurm.md.
#
# Signals and requeue: --signal=USR1@300 makes slurmstepd send SIGUSR1 to every process of the running
# srun step (not to this batch shell) about 300 s before the time limit. Each rank's handler finishes its
# step; the ranks agree, write a checkpoint and exit with status 3 ("resume me"), so srun exits 3; this
# shell, which the signal did not touch, then requeues the job. The requeued job (same id, same log,
# appended) resumes from that checkpoint. Any other failure is not requeued.
#
#SBATCH --job-name=dist-lacl-xlmr-large
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# Site setup may define shell functions (module) that are not clean under `set -u`, so it runs first.
if [ -n "${DIST_LACL_SETUP:-}" ]; then
    eval "$DIST_LACL_SETUP" || { echo "train_large.sh: DIST_LACL_SETUP failed" >&2; exit 2; }
fi
set -uo pipefail

cd "${DIST_LACL_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}" || exit 2
: "${SLURM_JOB_ID:?train_large.sh: submit with sbatch (no SLURM job here)}"
CONFIG=${CONFIG:-configs/xlmr_large.yaml}
read -r -a cmd <<<"${DIST_LACL_CMD:-dist-lacl}"
# Every srun task is one rank. A launcher in between would start ranks of its own, die of the SIGUSR1
# it does not handle, and report the trainer's status 3 ("resume me") as 1: the job would never requeue.
for word in ${cmd[@]+"${cmd[@]}"}; do
    case ${word##*/} in
        torchrun | torch.distributed.run | deepspeed | accelerate)
            echo "train_large.sh: DIST_LACL_CMD must run dist-lacl itself, not through ${word##*/}:" \
                 "srun starts one rank per task (see docs/slurm.md)" >&2
            exit 2 ;;
    esac
done
[ "${#cmd[@]}" -gt 0 ] || { echo "train_large.sh: DIST_LACL_CMD is blank" >&2; exit 2; }
# Arrays that may be empty expand as ${a[@]+"${a[@]}"}: a plain "${a[@]}" of an empty array is an
# "unbound variable" under set -u in bash before 4.4.
read -r -a overrides <<<"${TRAIN_OVERRIDES:-}"
if [ -n "${OUTPUT_DIR:-}" ]; then
    overrides=("train.output_dir=$OUTPUT_DIR" ${overrides[@]+"${overrides[@]}"})
fi
overrides+=("$@")

# Every rank connects to a TCP store on the first node. The port follows from the job id: a requeued job
# (same id) finds it again, and jobs sharing a first node get different ports (unless their ids differ
# by a multiple of 20000).
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

echo "[$(date '+%F %T')] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NTASKS:-?} tasks on" \
     "${SLURM_JOB_NUM_NODES:-?} node(s) ($SLURM_JOB_NODELIST), rendezvous $MASTER_ADDR:$MASTER_PORT"
echo "[$(date '+%F %T')] ${cmd[*]} train --config $CONFIG ${overrides[*]:-}"

# One task per GPU; RANK/WORLD_SIZE/LOCAL_RANK are per task, so they are set inside the task. `exec`
# leaves no shell between slurmstepd and Python: the step's SIGUSR1 reaches only processes that handle
# it. --cpus-per-task is passed on because srun 22.05 no longer inherits it from sbatch.
# GPU binding: --gpu-bind=none shows every task all of its node's GPUs, and LOCAL_RANK=SLURM_LOCALID picks
# one (cuda:LOCAL_RANK, the rule DeepSpeed and accelerate follow; NCCL's fast paths between the GPUs of a
# node need them visible). A site that forces one GPU per task still works: the trainer then takes the
# one it sees. See docs/slurm.md, GPU binding.
# Ending the step: ranks leave a few seconds apart (interpreter teardown), and the first to exit with 3
# must not get the others killed before they exit 3 as well, so --kill-on-bad-exit is off (whatever
# the site's KillOnBadExit). Instead --wait bounds the wait after the first exit: a rank that crashed
# takes the others down after 120 s rather than after the trainer's collective timeout.
# shellcheck disable=SC2016  # expanded by each task's own bash, not here
srun --kill-on-bad-exit=0 --wait=120 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --gpu-bind=none \
    bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' \
    dist-lacl-task "${cmd[@]}" train --config "$CONFIG" ${overrides[@]+"${overrides[@]}"}
status=$?

if [ "$status" -eq 3 ]; then
    restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$restarts" -ge "${MAX_RESTARTS:-100}" ]; then
        echo "[$(date '+%F %T')] checkpointed on a signal, but restarted $restarts times already" \
             "(MAX_RESTARTS=${MAX_RESTARTS:-100}): not requeueing; resubmit to go on" >&2
        exit 3
    fi
    echo "[$(date '+%F %T')] checkpointed on a signal: requeueing job $SLURM_JOB_ID"
    # Requeueing ends this job instance (this shell included) and queues it again under the same id.
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "train_large.sh: scontrol requeue failed; resubmit to resume from the checkpoint" >&2
    exit 3
fi
echo "[$(date '+%F %T')] training exited with status $status"
exit "$status"
