#!/bin/bash
# Evaluate an exported dist-lacl model under SLURM: encode the corpus and the queries with one task per
# GPU (each rank writes its shard), then search and score in one process on the first node, which sees
# all of that node's GPUs (faiss shards the index across them). See docs/slurm.md.
#
#   MODEL=runs/xlmr_large/model CORPUS=... QUERIES=... QRELS=... sbatch slurm/evaluate.sh
#
# #SBATCH lines are GPU-cluster defaults; override them on the sbatch command line (or with SBATCH_*
# variables), e.g. `sbatch --nodes=1 --ntasks-per-node=4 --gpus-per-node=4 slurm/evaluate.sh`.
# Environment: MODEL, CORPUS, QUERIES, QRELS (required), EVAL_DIR, ENCODE_ARGS, EVAL_ARGS, and the
# variables of train_large.sh; what each means and its default: docs/slurm.md.
# Shards already complete (same model, input and settings) are kept, so resubmitting a job that was
# cancelled part-way only encodes what is missing.
#
#SBATCH --job-name=dist-lacl-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

if [ -n "${DIST_LACL_SETUP:-}" ]; then
    eval "$DIST_LACL_SETUP" || { echo "evaluate.sh: DIST_LACL_SETUP failed" >&2; exit 2; }
fi
set -uo pipefail

cd "${DIST_LACL_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}" || exit 2
: "${SLURM_JOB_ID:?evaluate.sh: submit with sbatch (no SLURM job here)}"
for name in MODEL CORPUS QUERIES QRELS; do
    if [ -z "${!name:-}" ]; then
        echo "evaluate.sh: set $name (see the top of slurm/evaluate.sh)" >&2
        exit 2
    fi
done
EVAL_DIR=${EVAL_DIR:-$MODEL/eval}
read -r -a cmd <<<"${DIST_LACL_CMD:-dist-lacl}"
# Every srun task is one rank: a launcher in between (torchrun, ...) would start ranks of its own.
for word in ${cmd[@]+"${cmd[@]}"}; do
    case ${word##*/} in
        torchrun | torch.distributed.run | deepspeed | accelerate)
            echo "evaluate.sh: DIST_LACL_CMD must run dist-lacl itself, not through ${word##*/}:" \
                 "srun starts one rank per task (see docs/slurm.md)" >&2
            exit 2 ;;
    esac
done
[ "${#cmd[@]}" -gt 0 ] || { echo "evaluate.sh: DIST_LACL_CMD is blank" >&2; exit 2; }
# ${a[@]+"${a[@]}"}: a plain "${a[@]}" of an empty array is an error under set -u before bash 4.4.
read -r -a encode_args <<<"${ENCODE_ARGS:-}"
read -r -a eval_args <<<"${EVAL_ARGS:-}"

MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
port=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "[$(date '+%F %T')] job $SLURM_JOB_ID: ${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NUM_NODES:-?} node(s)" \
     "($SLURM_JOB_NODELIST); model $MODEL -> $EVAL_DIR"

# One task per GPU, as in train_large.sh: RANK/WORLD_SIZE/LOCAL_RANK set inside each task, every task
# sees its node's GPUs (--gpu-bind=none) and LOCAL_RANK picks one.
encode() {  # encode KIND INPUT PORT
    echo "[$(date '+%F %T')] encoding $1 ($2)"
    # shellcheck disable=SC2016  # expanded by each task's own bash, not here
    MASTER_PORT=$3 srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --gpu-bind=none \
        bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' \
        dist-lacl-task "${cmd[@]}" encode --model "$MODEL" --kind "$1" --input "$2" \
        --output "$EVAL_DIR/$1-emb" ${encode_args[@]+"${encode_args[@]}"}
}
# Each step gets its own port: the previous step's store socket may linger for a while.
encode corpus "$CORPUS" "$port" || { status=$?; echo "encoding the corpus failed ($status)" >&2; exit "$status"; }
encode queries "$QUERIES" $((port + 1)) || { status=$?; echo "encoding the queries failed ($status)" >&2; exit "$status"; }

# Search and score in this batch shell: it holds the first node's whole allocation (all its GPUs and
# CPUs), which the faiss search uses through one process.
echo "[$(date '+%F %T')] searching and scoring"
# --overwrite: a requeued job replaces the run and report it wrote itself.
"${cmd[@]}" evaluate --qrels "$QRELS" --queries "$QUERIES" \
    --query-emb "$EVAL_DIR/queries-emb" --corpus-emb "$EVAL_DIR/corpus-emb" \
    --output-run "$EVAL_DIR/run.trec" --report "$EVAL_DIR/report.json" --overwrite ${eval_args[@]+"${eval_args[@]}"}
status=$?
echo "[$(date '+%F %T')] evaluation exited with status $status"
exit "$status"
