#!/bin/bash
# The paper's whole recipe under SLURM, one stage after another in one allocation: mine hard negatives ->
# train -> export -> encode -> search -> evaluate on Mr.TyDi (11 languages, MRR@100 and Recall@100 on
# test) and XOR-TyDi XOR-Retrieve (7 languages, R@2kt and R@5kt on dev). See docs/reproduction.md.
#
#   CONFIG=configs/paper_mbert_nq.yaml MINE_MODEL=runs/round1/model CORPUS=data/nq/corpus.jsonl \
#   TRAIN_IR=data/nq/nq-train.jsonl MRTYDI_DIR=data/mrtydi XOR_DIR=data/xor sbatch slurm/paper_pipeline.sh
#
# Every stage is idempotent, so a cancelled, failed or requeued job started again goes on where it
# stopped: mining reuses its finished corpus chunks and skips itself once its output exists, training
# resumes from its newest checkpoint, export is skipped once the model folder exists, encoding keeps
# finished shards, and a stage whose report exists is not run again. The time-limit signal (USR1, 300 s
# before the end) makes training checkpoint and the job requeue itself; during another stage it ends
# that stage's processes, and resubmitting the job goes on from what they had finished.
#
# Environment (#SBATCH lines are GPU-cluster defaults; override them on the sbatch command line):
#   CONFIG               run config (default configs/paper_mbert_nq.yaml)
#   STAGES               stages to run, in order (default "mine train export mrtydi xor")
#   MINE_MODEL           model that mines the negatives: an exported folder or a run, e.g. a first
#                        round trained on the BM25 negatives (STAGES without mine)          [for mine]
#   TRAIN_IR             Tevatron jsonl whose queries and positives are mined for            [for mine]
#   CORPUS               the training corpus jsonl (docid, title, text)                     [for mine]
#   MINED                mined training file (default <OUTPUT_DIR>/train.mined.jsonl); it becomes
#                        data.train_ir when mine is one of the STAGES
#   MINE_ARGS            extra `dist-lacl mine` arguments (default "--rank-range 10-100 --num-negatives 30")
#   OUTPUT_DIR           train.output_dir (default runs/<config file name>, as the paper configs say)
#   TRAIN_OVERRIDES      extra section.key=value overrides, space-separated
#   MRTYDI_DIR           folder holding the mrtydi-v1.1-<language>/ archives, extracted      [for mrtydi]
#   MRTYDI_LANGS         languages (default: the 11 of Mr.TyDi v1.1)
#   XOR_DIR              folder with psgs_w100.tsv and xor_dev_retrieve_eng_span.jsonl       [for xor]
#   ENCODE_ARGS          extra `dist-lacl encode` arguments (default "--batch-size 512")
#   DIST_LACL_SETUP, DIST_LACL_CMD, DIST_LACL_WORKDIR, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS
#                        as for slurm/train_large.sh (docs/slurm.md)
# Works with bash 4.2 under `set -euo pipefail` (optional arguments are plain strings, split once).
#
#SBATCH --job-name=dist-lacl-paper
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

if [ -n "${DIST_LACL_SETUP:-}" ]; then
    eval "$DIST_LACL_SETUP" || { echo "paper_pipeline.sh: DIST_LACL_SETUP failed" >&2; exit 2; }
fi
set -euo pipefail

cd "${DIST_LACL_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}"
: "${SLURM_JOB_ID:?paper_pipeline.sh: submit with sbatch (no SLURM job here)}"
CONFIG=${CONFIG:-configs/paper_mbert_nq.yaml}
STAGES=${STAGES:-mine train export mrtydi xor}
DIST_LACL_CMD=${DIST_LACL_CMD:-dist-lacl}
# srun starts one rank per task; a launcher in between would turn the trainer's "resume me" (3) into 1.
for word in $DIST_LACL_CMD; do
    case ${word##*/} in
        torchrun | torch.distributed.run | deepspeed | accelerate)
            echo "paper_pipeline.sh: DIST_LACL_CMD must run dist-lacl itself, not through ${word##*/}" \
                 "(see docs/slurm.md)" >&2
            exit 2 ;;
    esac
done
MINE_ARGS=${MINE_ARGS:---rank-range 10-100 --num-negatives 30}
ENCODE_ARGS=${ENCODE_ARGS:---batch-size 512}
MRTYDI_LANGS=${MRTYDI_LANGS:-arabic bengali english finnish indonesian japanese korean russian swahili telugu thai}
# runs/<config name>, as the paper configs' own train.output_dir; passed to training explicitly.
OUTPUT_DIR=${OUTPUT_DIR:-runs/$(basename "$CONFIG" .yaml)}
for stage in $STAGES; do
    case $stage in
        mine | train | export | mrtydi | xor) ;;
        *) echo "paper_pipeline.sh: STAGES: expected words of 'mine train export mrtydi xor', got '$stage'" >&2; exit 2 ;;
    esac
done
MINED=${MINED:-$OUTPUT_DIR/train.mined.jsonl}
MODEL=$OUTPUT_DIR/model
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
port=${MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

log() { echo "[$(date '+%F %T')] $*"; }
need() {  # need VAR STAGE: stop with a one-line message when VAR is empty
    if [ -z "${!1:-}" ]; then
        echo "paper_pipeline.sh: stage $2 needs $1 (see the top of slurm/paper_pipeline.sh)" >&2
        exit 2
    fi
}
has_stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# One task per GPU; RANK/WORLD_SIZE/LOCAL_RANK set inside each task, as in train_large.sh. Each step
# gets its own port: the previous step's store socket may linger. Arguments are passed unquoted where
# they come from the space-separated *_ARGS strings, on purpose.
step=0
on_all_gpus() {
    step=$((step + 1))
    # shellcheck disable=SC2016  # expanded by each task's own bash, not here
    # --gpu-bind=none: each task sees its node's GPUs and LOCAL_RANK picks one (docs/slurm.md).
    MASTER_PORT=$((port + step)) srun --kill-on-bad-exit=0 --wait=120 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
        --gpu-bind=none \
        bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' \
        dist-lacl-task $DIST_LACL_CMD "$@"
}

log "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: stages '$STAGES', config $CONFIG, run $OUTPUT_DIR"
mkdir -p "$OUTPUT_DIR"

# --- mine: hard negatives for the training queries from MINE_MODEL ---------------------------------
if has_stage mine; then
    if [ -f "$MINED" ]; then
        log "mine: $MINED exists, skipping"
    else
        need MINE_MODEL mine; need TRAIN_IR mine; need CORPUS mine
        log "mine: $TRAIN_IR over $CORPUS with $MINE_MODEL -> $MINED"
        # shellcheck disable=SC2086  # MINE_ARGS is a list of words
        on_all_gpus mine --model "$MINE_MODEL" --train-ir "$TRAIN_IR" --corpus "$CORPUS" --output "$MINED" $MINE_ARGS
    fi
fi

# --- train: the three losses; a signal before the time limit checkpoints and requeues the job -------
if has_stage train; then
    train_ir=""
    if has_stage mine; then train_ir="data.train_ir=$MINED"; fi
    log "train: $CONFIG -> $OUTPUT_DIR"
    status=0
    # shellcheck disable=SC2086  # TRAIN_OVERRIDES and train_ir are lists of words (possibly empty)
    on_all_gpus train --config "$CONFIG" "train.output_dir=$OUTPUT_DIR" $train_ir ${TRAIN_OVERRIDES:-} || status=$?
    if [ "$status" -eq 3 ]; then
        if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_RESTARTS:-100}" ]; then
            log "checkpointed on a signal, restarted ${SLURM_RESTART_COUNT:-0} times already: resubmit to go on" >&2
            exit 3
        fi
        log "train: checkpointed on a signal, requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" && exit 0
        echo "paper_pipeline.sh: scontrol requeue failed; resubmit to resume from the checkpoint" >&2
        exit 3
    elif [ "$status" -ne 0 ]; then
        log "train: exited with status $status" >&2
        exit "$status"
    fi
fi

# --- export: the newest checkpoint as a transformers folder ------------------------------------------
if has_stage export; then
    if [ -f "$MODEL/config.json" ] || [ -f "$MODEL/dist_lacl.json" ]; then
        log "export: $MODEL exists, skipping"
    else
        log "export: $OUTPUT_DIR -> $MODEL"
        $DIST_LACL_CMD export "$OUTPUT_DIR" --output "$MODEL"
    fi
fi

# --- Mr.TyDi v1.1: monolingual retrieval in 11 languages, test split --------------------------------
if has_stage mrtydi; then
    need MRTYDI_DIR mrtydi
    for language in $MRTYDI_LANGS; do
        data=$MRTYDI_DIR/mrtydi-v1.1-$language
        out=$MODEL/eval/mrtydi/$language
        if [ -f "$out/report.json" ]; then log "mrtydi $language: done"; continue; fi
        topics=$data/topic.test.tsv
        if [ ! -f "$topics" ]; then topics=$data/topic.tsv; fi
        log "mrtydi $language: encode, search, evaluate"
        # shellcheck disable=SC2086  # ENCODE_ARGS is a list of words
        on_all_gpus encode --model "$MODEL" --kind corpus --input "$data" --output "$out/corpus-emb" $ENCODE_ARGS
        # shellcheck disable=SC2086
        on_all_gpus encode --model "$MODEL" --kind queries --input "$topics" --output "$out/queries-emb" $ENCODE_ARGS
        $DIST_LACL_CMD evaluate --queries "$topics" --qrels "$data/qrels.test.txt" \
            --query-emb "$out/queries-emb" --corpus-emb "$out/corpus-emb" --k 100 --metrics mrr@100,recall@100 \
            --output-run "$out/run.trec" --report "$out/report.json" --overwrite
    done
fi

# --- XOR-TyDi XOR-Retrieve: questions in 7 languages -> English Wikipedia (DPR's 21M passages), dev ---
if has_stage xor; then
    need XOR_DIR xor
    out=$MODEL/eval/xor
    questions=$XOR_DIR/xor_dev_retrieve_eng_span.jsonl
    if [ -f "$out/report.json" ]; then
        log "xor: done"
    else
        log "xor: encode, search, evaluate"
        # shellcheck disable=SC2086
        on_all_gpus encode --model "$MODEL" --kind corpus --input "$XOR_DIR/psgs_w100.tsv" --output "$out/corpus-emb" $ENCODE_ARGS
        # shellcheck disable=SC2086
        on_all_gpus encode --model "$MODEL" --kind queries --input "$questions" --output "$out/queries-emb" $ENCODE_ARGS
        $DIST_LACL_CMD search --query-emb "$out/queries-emb" --corpus-emb "$out/corpus-emb" \
            --k 100 --output "$out/run.trec" --overwrite
        $DIST_LACL_CMD evaluate --run "$out/run.trec" --answers "$questions" --passages "$XOR_DIR/psgs_w100.tsv" \
            --report "$out/report.json" --overwrite
    fi
fi
log "pipeline finished: reports under $MODEL/eval"
