"""The slurm/ scripts. Fast: their own logic with stand-ins for srun and scontrol (no overrides under
`set -u`, requeue only on status 3, no launcher between srun and the ranks), and the GPU binding rule.
Slow, on real SLURM clusters started by the tests: one node (2 tasks train a tiny model; a job signalled
before its time limit checkpoints, requeues itself and finishes one continuous curve; the evaluation
script encodes on 2 tasks and scores), and two nodes in network namespaces (the same across nodes)."""

import collections
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers_eval import tiny_dual_encoder, write_eval_set
from helpers_launch import REPO, WORKERS, launch_env
from helpers_slurm import client_env, slurm_cluster, slurm_two_nodes  # noqa: F401  (the fixtures)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from transformers import AutoTokenizer

from dist_lacl.export import save_dual_encoder

TRAIN_LARGE = REPO / "slurm" / "train_large.sh"
EVALUATE = REPO / "slurm" / "evaluate.sh"


def tiny_config(path: Path, model_dir, data, **train) -> Path:
    """The tiny run of test_train_run.train_args, as a config file (what CONFIG points at)."""
    config = {
        "model": {"name_or_path": str(model_dir), "pooling": "mean"},
        "data": {"train_ir": data["train_ir"], "parallel": data["parallel"], "monolingual": data["monolingual"],
                 "train_group_size": 2},
        "train": {"ir_batch_size": 8, "parallel_batch_size": 8, "monolingual_batch_size": 8, "chunk_size": 4,
                  "lr": 3e-3, "warmup_steps": 2, "num_threads": 1, "log_every": 1, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cpu_job_options(tmp_path: Path, name: str, nodes: int = 1, tasks_per_node: int = 2) -> list[str]:
    """Shrink the script's GPU-cluster #SBATCH defaults to this machine: no GPUs, one CPU per task."""
    return [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--gpus-per-node=0", "--cpus-per-task=1",
            "--time=10", f"--job-name={name}", f"--output={tmp_path / 'slurm-%j.out'}"]


def job_env(config: Path, out: Path, **extra) -> dict[str, str]:
    return {"CONFIG": str(config), "OUTPUT_DIR": str(out), "DIST_LACL_CMD": f"{sys.executable} -m dist_lacl.cli",
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def steps_per_event_file(tb_dir: Path, tag: str) -> list[list[int]]:
    """The steps logged for `tag`, file by file in write order (raw events, nothing merged or purged)."""
    out = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        out.append([event.step for event in EventFileLoader(str(path)).Load()
                    for value in event.summary.value if value.tag == tag])
    return out


def merged_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


# ------------------------------------------------------------ the scripts' own logic, with stand-ins (fast)

# Stand-ins on PATH: each call appends one line, its name and arguments separated by NULs, to $CALLS.
FAKE_TOOLS = {
    "srun": 'printf "%s\\0" srun "MASTER=$MASTER_ADDR:$MASTER_PORT" "$@" >>"$CALLS"; echo >>"$CALLS"\n'
            'exit "${FAKE_SRUN_STATUS:-0}"\n',
    "scontrol": 'printf "%s\\0" scontrol "$@" >>"$CALLS"; echo >>"$CALLS"\n'
                'if [ "$1 $2" = "show hostnames" ]; then echo node7; echo node8; fi\n',
    "dist-lacl": 'printf "%s\\0" dist-lacl "$@" >>"$CALLS"; echo >>"$CALLS"\n',
}
# The bashes to run the scripts under. Bash before 4.4 (still on many clusters) treats "${a[@]}" of an empty
# array as an unbound variable under `set -u`; bash 5 does not, and no BASH_COMPAT level brings that back,
# so only an old bash can catch the bug: set DIST_LACL_OLD_BASH to one (e.g. bash 4.2 built from source).
BASHES = [pytest.param("bash", id="bash"),
          pytest.param(os.environ.get("DIST_LACL_OLD_BASH"), id="old-bash", marks=pytest.mark.skipif(
              not os.environ.get("DIST_LACL_OLD_BASH"), reason="DIST_LACL_OLD_BASH (a bash < 4.4) is not set"))]


def run_script(bash: str, script: Path, tmp_path: Path, *args: str, **env) -> tuple[subprocess.CompletedProcess,
                                                                                      list[list[str]]]:
    """Run `script` as sbatch would on the first node of job 4242 (nodes node7, node8), with stand-ins
    for srun, scontrol and dist-lacl; return the result and the stand-ins' calls, in order."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKE_TOOLS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    calls.write_text("")
    proc = subprocess.run([bash, str(script), *args], capture_output=True, text=True, timeout=60, env=client_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=calls, SLURM_JOB_ID=4242, SLURM_JOB_NODELIST="node[7-8]",
        SLURM_NTASKS=2, SLURM_JOB_NUM_NODES=2, SLURM_SUBMIT_DIR=tmp_path, **env))
    return proc, [line.split("\0")[:-1] for line in calls.read_text().splitlines()]


def task_argv(srun_call: list[str]) -> list[str]:
    """What each task execs: the words after the per-task wrapper's $0 (dist-lacl-task)."""
    return srun_call[srun_call.index("dist-lacl-task") + 1:]


@pytest.mark.parametrize("bash", BASHES)
def test_train_script_with_no_overrides_under_set_u(bash, tmp_path):
    proc, calls = run_script(bash, TRAIN_LARGE, tmp_path)  # no TRAIN_OVERRIDES, OUTPUT_DIR or arguments
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["scontrol", "srun"]  # node list, then the step; no requeue
    assert calls[1][1] == "MASTER=node7:14242"  # the first node; 10000 + job id % 20000
    assert task_argv(calls[1]) == ["dist-lacl", "train", "--config", "configs/xlmr_large.yaml"]


@pytest.mark.parametrize("bash", BASHES)
def test_train_script_passes_overrides_word_for_word(bash, tmp_path):
    proc, calls = run_script(bash, TRAIN_LARGE, tmp_path, "train.lr=1e-5", "model.name_or_path=/m/a b",
                             OUTPUT_DIR="/runs/x y", TRAIN_OVERRIDES="train.max_steps=6  train.seed=3",
                             DIST_LACL_CMD="/venv/bin/python -m dist_lacl.cli", CONFIG="my.yaml")
    assert proc.returncode == 0, proc.stderr
    assert task_argv(calls[1]) == ["/venv/bin/python", "-m", "dist_lacl.cli", "train", "--config", "my.yaml",
                                   "train.output_dir=/runs/x y", "train.max_steps=6", "train.seed=3",
                                   "train.lr=1e-5", "model.name_or_path=/m/a b"]


@pytest.mark.parametrize("status, restarts, expect_rc, requeued", [
    (3, 0, 0, True),      # checkpointed on a signal with steps left: requeue
    (3, 100, 3, False),   # ... unless MAX_RESTARTS (100) requeues happened already
    (0, 0, 0, False),     # finished (also when the signal came during the last step: the trainer exits 0)
    (1, 0, 1, False),     # a crash is passed on, never requeued
    (2, 0, 2, False),     # bad input likewise
])
def test_train_script_requeues_only_on_status_3(tmp_path, status, restarts, expect_rc, requeued):
    proc, calls = run_script("bash", TRAIN_LARGE, tmp_path, FAKE_SRUN_STATUS=status, SLURM_RESTART_COUNT=restarts)
    assert proc.returncode == expect_rc, proc.stderr
    assert (["scontrol", "requeue", "4242"] in calls) is requeued


@pytest.mark.parametrize("script", [TRAIN_LARGE, EVALUATE], ids=["train_large", "evaluate"])
@pytest.mark.parametrize("launcher, name", [("torchrun --nproc_per_node 8 -m dist_lacl.cli", "torchrun"),
                                            ("/venv/bin/python -m torch.distributed.run -m dist_lacl.cli",
                                             "torch.distributed.run"),
                                            ("/venv/bin/accelerate launch -m dist_lacl.cli", "accelerate")])
def test_scripts_refuse_a_launcher_between_srun_and_the_ranks(tmp_path, script, launcher, name):
    """torchrun would report the trainer's status 3 as 1 (measured: `torchrun ... bash -c 'exit 3'` exits
    1), so a job under it would never requeue; srun starts the ranks itself."""
    proc, calls = run_script("bash", script, tmp_path, DIST_LACL_CMD=launcher, MODEL="m", CORPUS="c",
                             QUERIES="q", QRELS="r")
    assert proc.returncode == 2 and calls == []
    assert f"DIST_LACL_CMD must run dist-lacl itself, not through {name}" in proc.stderr


@pytest.mark.parametrize("bash", BASHES)
def test_evaluate_script_with_no_extra_arguments_under_set_u(bash, tmp_path):
    proc, calls = run_script(bash, EVALUATE, tmp_path, MODEL="m", CORPUS="c.jsonl", QUERIES="q.tsv", QRELS="r.txt")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["scontrol", "srun", "srun", "dist-lacl"]
    assert task_argv(calls[1]) == ["dist-lacl", "encode", "--model", "m", "--kind", "corpus", "--input", "c.jsonl",
                                   "--output", "m/eval/corpus-emb"]
    assert task_argv(calls[2])[-2:] == ["--output", "m/eval/queries-emb"]
    assert calls[3][1:] == ["evaluate", "--qrels", "r.txt", "--queries", "q.tsv", "--query-emb", "m/eval/queries-emb",
                            "--corpus-emb", "m/eval/corpus-emb", "--output-run", "m/eval/run.trec",
                            "--report", "m/eval/report.json", "--overwrite"]


# ------------------------------------------------------------------------------- GPU binding (fast)

def bound_device(monkeypatch, local_rank: int, gpus: int) -> torch.device:
    """dist_lacl.distributed.bind_device() on a pretend node where this process sees `gpus` GPUs."""
    from dist_lacl import distributed

    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: monkeypatch.setenv("SET_DEVICE", str(d)))
    return distributed.bind_device()


@pytest.mark.parametrize("local_rank, gpus, expected", [
    (3, 8, "cuda:3"),  # every task sees its node's 8 GPUs (as under torchrun): LOCAL_RANK picks one
    (0, 8, "cuda:0"),
    (3, 4, "cuda:3"),
    (0, 1, "cuda:0"),  # one GPU per task (srun --gpus-per-task=1): the one it sees, whatever its local rank
    (5, 1, "cuda:0"),
    (2, 0, "cpu"),
])
def test_gpu_binding_is_one_rule_for_every_framework(monkeypatch, local_rank, gpus, expected):
    from accelerate.state import DistributedType, PartialState

    dev = bound_device(monkeypatch, local_rank, gpus)
    assert str(dev) == expected
    if gpus:
        assert os.environ["SET_DEVICE"] == expected
        # DeepSpeed binds cuda:LOCAL_RANK (DeepSpeedEngine._set_distributed_vars); accelerate runs its own
        # PartialState.set_device (cuda:LOCAL_RANK % device count), here for real on a bare state object.
        assert torch.device("cuda", int(os.environ["LOCAL_RANK"])) == dev
        state = object.__new__(PartialState)
        state.device, state._cpu, state.distributed_type = None, False, DistributedType.MULTI_GPU
        state.local_process_index = int(os.environ["LOCAL_RANK"])
        PartialState.set_device(state)
        assert state.device == dev


def test_gpu_binding_refuses_a_task_that_sees_some_but_not_its_gpu(monkeypatch):
    from dist_lacl.errors import UserError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(UserError, match=r"LOCAL_RANK=3 but this process sees 2 GPUs \(CUDA_VISIBLE_DEVICES=4,5\)"):
        bound_device(monkeypatch, 3, 2)


# ------------------------------------------------------- the trainer's status at the end of a run (slow)

@pytest.mark.slow
def test_signal_during_the_last_step_finishes_instead_of_asking_to_resume(tmp_path, tiny_model_dir, training_data):
    """Status 3 ("resume me", which the SLURM script requeues) only while steps remain: a signal during the
    last step writes the final checkpoint and exits 0. (A signal with steps left exits 3: the requeue
    tests below.)"""
    config = tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, training_data, max_steps=2,
                         output_dir=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, str(WORKERS / "signal_in_step.py"), "2", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=300, env=launch_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"received signal {int(signal.SIGUSR1)}" in proc.stderr and "stopped by signal" not in proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-0000002"


# ---------------------------------------------------------------------------- one node, 2 tasks (slow)

@pytest.mark.slow
def test_sbatch_wait_trains_on_two_tasks(slurm_cluster, tmp_path, tiny_model_dir, training_data):  # noqa: F811
    config = tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, training_data, max_steps=100)  # env says 6
    out = tmp_path / "run"
    proc = slurm_cluster.run(
        ["sbatch", "--wait", "--parsable", *cpu_job_options(tmp_path, "tiny-train"), str(TRAIN_LARGE),
         "train.save_every=3"],  # overrides as script arguments ...
        env=job_env(config, out, TRAIN_OVERRIDES="train.max_steps=6 train.keep_last=5"),  # ... and from the env
        cwd=REPO, timeout=300, check=False)
    job_id = proc.stdout.strip().split(";")[0]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert proc.returncode == 0, f"sbatch --wait exited {proc.returncode}\n{proc.stderr}\n{log[-6000:]}"
    job = slurm_cluster.job(job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0")
    assert "2 tasks on 1 node(s)" in log and "training exited with status 0" in log

    final = out / "checkpoints" / "step-0000006"
    assert (out / "checkpoints" / "latest").read_text() == final.name
    assert (out / "checkpoints" / "step-0000003" / "MANIFEST.json").is_file()
    # Two ranks, from SLURM_PROCID/SLURM_NTASKS: each wrote its RNG state and its ZeRO-2 optimizer shard.
    assert json.loads((final / "trainer_state.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in final.glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
    assert len(list(final.rglob("*optim_states.pt"))) == 2
    assert [step for step, _ in merged_scalars(out / "tensorboard", "loss/total")] == [1, 2, 3, 4, 5, 6]


def preempt_and_finish(cluster, tmp_path: Path, model_dir, data, steps: int, signal_after: int, nodes: int = 1,
                       tasks_per_node: int = 2) -> tuple[dict[str, str], str, int]:
    """Submit train_large.sh; once `signal_after` steps are logged, signal it as SLURM does before the time
    limit; check that it checkpointed, requeued itself once and finished one continuous curve. Returns
    the job (`scontrol show job`), its log and the step the signal stopped it at."""
    config = tiny_config(tmp_path / "tiny.yaml", model_dir, data, max_steps=steps, save_every=10)
    out = tmp_path / "run"
    job_id = cluster.run(
        ["sbatch", "--parsable", *cpu_job_options(tmp_path, "tiny-preempt", nodes, tasks_per_node), str(TRAIN_LARGE)],
        env=job_env(config, out), cwd=REPO).stdout.strip().split(";")[0]
    log_path = tmp_path / f"slurm-{job_id}.out"

    def logged_steps() -> int:
        files = steps_per_event_file(out / "tensorboard", "loss/total") if (out / "tensorboard").is_dir() else []
        return sum(map(len, files))

    def progressed() -> bool:
        state = cluster.job(job_id)["JobState"]
        if state not in ("PENDING", "RUNNING"):
            raise AssertionError(f"job {job_id} is {state} before the signal\n{log_path.read_text()[-6000:]}")
        return logged_steps() >= signal_after

    cluster.wait_for(progressed, 240, "training progress")
    # What slurmctld does at `--signal=USR1@300`: SIGUSR1 to every process of the job's steps (on every
    # node), not to the batch shell.
    cluster.run(["scancel", "--signal=USR1", job_id])

    def finished():
        job = cluster.job(job_id)
        return job if job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None

    job = cluster.wait_for(finished, 300, f"job {job_id} to finish")
    log = log_path.read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-6000:]

    stopped_at = int(re.search(r"stopped by signal at step (\d+)", log).group(1))
    assert signal_after <= stopped_at < steps
    assert f"requeueing job {job_id}" in log and "restart 1:" in log
    assert re.search(rf"resumed from \S*step-{stopped_at:07d} at step {stopped_at}\b", log), log[-6000:]

    # One continuous curve: the first run logged 1..stopped_at, the requeued run stopped_at+1..steps,
    # each step exactly once (read file by file, before TensorBoard's merge could hide a duplicate).
    per_file = steps_per_event_file(out / "tensorboard", "loss/total")
    assert per_file == [list(range(1, stopped_at + 1)), list(range(stopped_at + 1, steps + 1))]
    assert collections.Counter(s for steps_ in per_file for s in steps_) == collections.Counter(range(1, steps + 1))
    assert [step for step, _ in merged_scalars(out / "tensorboard", "loss/total")] == list(range(1, steps + 1))
    # The schedule resumed too: step s+1 logs the rate it trained with, warm-up 1/3 and 2/3 of 3e-3, then
    # linear decay towards 0 at max_steps, across the restart (a scheduler restarted from scratch would
    # warm up again).
    lrs = [lr for _, lr in merged_scalars(out / "tensorboard", "train/lr")]
    assert lrs == pytest.approx([1e-3, 2e-3] + [3e-3 * (steps - s) / (steps - 2) for s in range(2, steps)])
    assert (out / "checkpoints" / "latest").read_text() == f"step-{steps:07d}"
    final = out / "checkpoints" / f"step-{steps:07d}"
    assert json.loads((final / "trainer_state.json").read_text())["world_size"] == nodes * tasks_per_node
    return job, log, stopped_at


@pytest.mark.slow
def test_signal_before_time_limit_requeues_and_resumes_one_curve(slurm_cluster, tmp_path, tiny_model_dir,  # noqa: F811
                                                                 training_data):
    preempt_and_finish(slurm_cluster, tmp_path, tiny_model_dir, training_data, steps=60, signal_after=4)


def evaluate_with_script(cluster, tmp_path: Path, tiny_model_dir, nodes: int = 1, tasks_per_node: int = 2) -> str:
    """Export a tiny dual encoder, run evaluate.sh on it; check the shards and the scores. Returns the log."""
    model_dir = save_dual_encoder(tiny_dual_encoder(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                                  tmp_path / "model")
    paths = write_eval_set(tmp_path / "eval-set")
    out = tmp_path / "eval"
    env = {"MODEL": model_dir, "CORPUS": paths["corpus"], "QUERIES": paths["queries"], "QRELS": paths["qrels"],
           "EVAL_DIR": out, "ENCODE_ARGS": "--max-len 64 --batch-size 8", "EVAL_ARGS": "--metrics mrr@10,ndcg@5",
           "DIST_LACL_CMD": f"{sys.executable} -m dist_lacl.cli", "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = cluster.run(["sbatch", "--wait", "--parsable", *cpu_job_options(tmp_path, "tiny-eval", nodes, tasks_per_node),
                        str(EVALUATE)], env=env, cwd=REPO, timeout=300, check=False)
    job_id = proc.stdout.strip().split(";")[0]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert proc.returncode == 0, f"sbatch --wait exited {proc.returncode}\n{proc.stderr}\n{log[-6000:]}"
    for kind in ("corpus", "queries"):  # one shard per task
        assert sorted(p.name for p in (out / f"{kind}-emb").glob("emb-*.npy")) == ["emb-0-of-2.npy", "emb-1-of-2.npy"]
    report = json.loads((out / "report.json").read_text())["metrics"]
    # A shared, normalised encoder finds every query's own sentence first (cosine 1).
    assert report["all"]["num_queries"] == 26 and report["all"]["mrr@10"] == pytest.approx(1.0)
    assert len((out / "run.trec").read_text().splitlines()) == 26 * 10
    return log


@pytest.mark.slow
def test_evaluate_script_encodes_on_two_tasks_and_scores(slurm_cluster, tmp_path, tiny_model_dir):  # noqa: F811
    evaluate_with_script(slurm_cluster, tmp_path, tiny_model_dir)


# -------------------------------------------- two nodes: network namespaces, one task per node (slow)

@pytest.mark.slow
def test_two_nodes_train_requeue_and_finish_one_curve(slurm_two_nodes, tmp_path, tiny_model_dir,  # noqa: F811
                                                      training_data):
    """`sbatch --nodes=2 --ntasks-per-node=1 slurm/train_large.sh`: rank 1 on dlacl2 rendezvouses with rank 0
    on dlacl1 over the veth pair; signalled before its time limit, the job requeues and finishes one
    curve. (24 steps rather than a handful: the signal must land while steps remain.)"""
    sent_before = slurm_two_nodes.veth_bytes(1)
    job, log, _ = preempt_and_finish(slurm_two_nodes, tmp_path, tiny_model_dir, training_data, steps=24,
                                     signal_after=3, nodes=2, tasks_per_node=1)
    assert (job["NodeList"], job["NumNodes"], job["NumTasks"]) == ("dlacl[1-2]", "2", "2")
    assert len(re.findall(r"2 tasks on 2 node\(s\) \(dlacl\[1-2\]\), rendezvous dlacl1:\d+", log)) == 2  # both runs
    # The gradients and ZeRO-2 partitions went between the nodes: rank 1 sends at least its half of the
    # gradient (reduce-scatter) and of the updated weights (all-gather) every step, 4 bytes a number.
    from transformers import AutoModel

    params = sum(p.numel() for p in AutoModel.from_pretrained(tiny_model_dir).parameters())
    assert slurm_two_nodes.veth_bytes(1) - sent_before >= 24 * params * 4


@pytest.mark.slow
def test_two_nodes_evaluate_script(slurm_two_nodes, tmp_path, tiny_model_dir):  # noqa: F811
    log = evaluate_with_script(slurm_two_nodes, tmp_path, tiny_model_dir, nodes=2, tasks_per_node=1)
    assert "2 tasks on 2 node(s) (dlacl[1-2])" in log
