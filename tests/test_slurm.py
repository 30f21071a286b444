"""The slurm/ scripts on a real one-node SLURM cluster (started by the test): 2 tasks train a tiny model; a
job signalled before its time limit checkpoints, requeues itself and finishes one continuous curve; the
evaluation script encodes on 2 tasks and scores."""

import collections
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers_launch import REPO
from helpers_slurm import slurm_cluster  # noqa: F401  (the fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_evaluation_pipeline import tiny_dual_encoder, write_eval_set
from transformers import AutoTokenizer

from dist_lacl.export import save_dual_encoder

pytestmark = pytest.mark.slow
TRAIN_LARGE = REPO / "slurm" / "train_large.sh"


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


def cpu_job_options(tmp_path: Path, name: str) -> list[str]:
    """Shrink the script's GPU-cluster #SBATCH defaults to this node: 1 node, 2 tasks, no GPUs."""
    return ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
            f"--job-name={name}", f"--output={tmp_path / 'slurm-%j.out'}"]


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


def test_signal_before_time_limit_requeues_and_resumes_one_curve(slurm_cluster, tmp_path, tiny_model_dir,  # noqa: F811
                                                                 training_data):
    steps = 60
    config = tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, training_data, max_steps=steps, save_every=10)
    out = tmp_path / "run"
    job_id = slurm_cluster.run(
        ["sbatch", "--parsable", *cpu_job_options(tmp_path, "tiny-preempt"), str(TRAIN_LARGE)],
        env=job_env(config, out), cwd=REPO).stdout.strip().split(";")[0]
    log_path = tmp_path / f"slurm-{job_id}.out"

    def logged_steps() -> int:
        files = steps_per_event_file(out / "tensorboard", "loss/total") if (out / "tensorboard").is_dir() else []
        return sum(map(len, files))

    def progressed() -> bool:
        state = slurm_cluster.job(job_id)["JobState"]
        if state not in ("PENDING", "RUNNING"):
            raise AssertionError(f"job {job_id} is {state} before the signal\n{log_path.read_text()[-6000:]}")
        return logged_steps() >= 4

    slurm_cluster.wait_for(progressed, 240, "training progress")
    # What slurmctld does at `--signal=USR1@300`: SIGUSR1 to every process of the job's steps, not to
    # the batch shell.
    slurm_cluster.run(["scancel", "--signal=USR1", job_id])

    def finished():
        job = slurm_cluster.job(job_id)
        return job if job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None

    job = slurm_cluster.wait_for(finished, 300, f"job {job_id} to finish")
    log = log_path.read_text()
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-6000:]

    stopped_at = int(re.search(r"stopped by signal at step (\d+)", log).group(1))
    assert 4 <= stopped_at < steps
    assert f"requeueing job {job_id}" in log and "restart 1:" in log
    assert re.search(rf"resumed from \S*step-{stopped_at:07d} at step {stopped_at}\b", log), log[-6000:]

    # One continuous curve: the first run logged 1..stopped_at, the requeued run stopped_at+1..steps,
    # each step exactly once (read file by file, before TensorBoard's merge could hide a duplicate).
    per_file = steps_per_event_file(out / "tensorboard", "loss/total")
    assert per_file == [list(range(1, stopped_at + 1)), list(range(stopped_at + 1, steps + 1))]
    assert collections.Counter(s for steps_ in per_file for s in steps_) == collections.Counter(range(1, steps + 1))
    assert [step for step, _ in merged_scalars(out / "tensorboard", "loss/total")] == list(range(1, steps + 1))
    # The schedule resumed too: warm-up over 2 steps to 3e-3, then linear decay to 0 at the last step,
    # across the restart (a scheduler restarted from scratch would warm up again).
    lrs = [lr for _, lr in merged_scalars(out / "tensorboard", "train/lr")]
    assert lrs == pytest.approx([2e-3] + [3e-3 * (steps - s) / (steps - 2) for s in range(2, steps + 1)])
    assert (out / "checkpoints" / "latest").read_text() == f"step-{steps:07d}"


def test_evaluate_script_encodes_on_two_tasks_and_scores(slurm_cluster, tmp_path, tiny_model_dir):  # noqa: F811
    model_dir = save_dual_encoder(tiny_dual_encoder(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                                  tmp_path / "model")
    paths = write_eval_set(tmp_path / "eval-set")
    out = tmp_path / "eval"
    env = {"MODEL": model_dir, "CORPUS": paths["corpus"], "QUERIES": paths["queries"], "QRELS": paths["qrels"],
           "EVAL_DIR": out, "ENCODE_ARGS": "--max-len 64 --batch-size 8", "EVAL_ARGS": "--metrics mrr@10,ndcg@5",
           "DIST_LACL_CMD": f"{sys.executable} -m dist_lacl.cli", "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = slurm_cluster.run(["sbatch", "--wait", "--parsable", *cpu_job_options(tmp_path, "tiny-eval"),
                              str(REPO / "slurm" / "evaluate.sh")], env=env, cwd=REPO, timeout=300, check=False)
    job_id = proc.stdout.strip().split(";")[0]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert proc.returncode == 0, f"sbatch --wait exited {proc.returncode}\n{proc.stderr}\n{log[-6000:]}"
    for kind in ("corpus", "queries"):  # one shard per task
        assert sorted(p.name for p in (out / f"{kind}-emb").glob("emb-*.npy")) == ["emb-0-of-2.npy", "emb-1-of-2.npy"]
    report = json.loads((out / "report.json").read_text())["metrics"]
    # A shared, normalised encoder finds every query's own sentence first (cosine 1).
    assert report["all"]["num_queries"] == 26 and report["all"]["mrr@10"] == pytest.approx(1.0)
    assert len((out / "run.trec").read_text().splitlines()) == 26 * 10
