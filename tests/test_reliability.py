"""Faults: non-finite losses are detected on every rank together and skipped; too many in a row stop
training with a clear message, and no checkpoint is written from a bad state."""


import pytest
import yaml
from helpers_launch import WORKERS, rank_results, torchrun

pytestmark = pytest.mark.slow


def config(tmp_path, model_dir, data):
    raw = {"model": {"name_or_path": str(model_dir), "pooling": "mean"},
           "data": {**data, "train_group_size": 2},
           "train": {"ir_batch_size": 8, "parallel_batch_size": 8, "monolingual_batch_size": 8, "chunk_size": 4,
                     "max_steps": 6, "lr": 1e-3, "warmup_steps": 0, "num_threads": 1, "max_nonfinite_steps": 2,
                     "output_dir": str(tmp_path / "run")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def result(proc):
    return rank_results(proc.stdout)[0]


def test_nonfinite_loss_on_one_rank_skips_the_step_everywhere(tmp_path, tiny_model_dir, training_data):
    out = result(torchrun(WORKERS / "nonfinite.py", config(tmp_path, tiny_model_dir, training_data), "3"))
    assert out["outcome"] == "finished"
    assert out["state"]["skipped_steps"] == 1 and out["state"]["step"] == 6
    w = out["weights"]
    assert w[2] == w[1] and w[3] != w[2]  # step 3 left the weights alone; step 4 trained again
    assert (tmp_path / "run" / "checkpoints" / "step-0000006").is_dir()


def test_too_many_nonfinite_steps_in_a_row_stop_training(tmp_path, tiny_model_dir, training_data):
    cfg = config(tmp_path, tiny_model_dir, training_data)
    out = result(torchrun(WORKERS / "nonfinite.py", cfg, "2,3", "train.save_every=1"))
    assert "2 consecutive steps had a non-finite loss or gradient (train.max_nonfinite_steps=2)" in out["outcome"]
    # Step 2 was skipped (a skipped step still consumes its batch and its place in the schedule); step 3,
    # the second bad one in a row, stops training before it counts. Nothing after it was saved.
    assert out["state"]["step"] == 2 and out["state"]["skipped_steps"] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-0000001",
                                                                                     "step-0000002"]


# ------------------------------------------------------------------ crashes, dead ranks, repeated restarts

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from helpers_launch import REPO, launch_env  # noqa: E402
from helpers_resume import STEPS, final_weights, interrupt_after, resumable_args  # noqa: E402
from helpers_train import read_log_until_step, scalars  # noqa: E402

from dist_lacl.distributed import free_port  # noqa: E402


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, training_data):
    """The reference: the same 2-rank run, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    torchrun(*resumable_args(tiny_model_dir, training_data, out), timeout=600)
    return final_weights(out), scalars(out)["loss/total"]


def assert_same_run(out, uninterrupted):
    weights, losses = uninterrupted
    resumed = final_weights(out)
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert scalars(out)["loss/total"] == losses


@pytest.mark.parametrize("phase", ["shards", "rng", "metadata", "rename", "latest"])
def test_crash_during_checkpoint_write_never_loads_a_partial_one(tmp_path, tiny_model_dir, training_data,
                                                                 uninterrupted, phase):
    out = tmp_path / "run"
    crashed = torchrun(WORKERS / "crash_in_checkpoint.py", phase, 8, *resumable_args(tiny_model_dir, training_data, out)[2:],
                       timeout=600, expect_rc=None)
    assert crashed.returncode != 0
    assert not (out / "checkpoints" / "step-0000012").exists()
    relaunch = torchrun(*resumable_args(tiny_model_dir, training_data, out), timeout=600)
    log = relaunch.stdout + relaunch.stderr
    # Renamed with its manifest, step 8 is complete even though `latest` was not moved yet.
    expected = "step-0000008" if phase == "latest" else "step-0000004"
    assert f"resumed from {out / 'checkpoints' / expected}" in log
    if phase in ("metadata", "rng", "shards", "rename"):
        assert "interrupted checkpoint write" in log  # the leftover .tmp-step-0000008 is named
    assert_same_run(out, uninterrupted)


def test_dead_rank_ends_the_job_and_a_relaunch_recovers(tmp_path, tiny_model_dir, training_data, uninterrupted):
    """SIGKILL one of two ranks mid-run: the other exits on its own (no launcher to kill it) within the
    collective timeout; a relaunch resumes from the last complete checkpoint and ends as if nothing happened."""
    out, port = tmp_path / "run", free_port()
    cmd = [sys.executable, *resumable_args(tiny_model_dir, training_data, out, "train.dist_timeout_s=30")]
    ranks = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=launch_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                                             MASTER_PORT=port)) for r in (0, 1)]
    logged = read_log_until_step(ranks[0].stderr, 6)  # rank 0's log: kill rank 1 the moment step 6 is logged
    assert ranks[0].poll() is None, "the run did not get going\n" + "".join(logged)[-2000:]
    ranks[1].kill()
    killed_at = time.time()
    _, err = ranks[0].communicate(timeout=180)
    assert ranks[0].returncode != 0 and time.time() - killed_at < 30 + 60, err[-2000:]
    torchrun(*resumable_args(tiny_model_dir, training_data, out), timeout=600)
    assert_same_run(out, uninterrupted)


def test_soak_interrupted_three_times_equals_uninterrupted(tmp_path, tiny_model_dir, training_data, uninterrupted):
    out = tmp_path / "run"
    for after_step in (3, 6, 9):  # signals at (about) these steps; the run stops wherever the flag is seen
        interrupt_after(resumable_args(tiny_model_dir, training_data, out), out, after_step=after_step)
    assert len(scalars(out)["loss/total"]) < STEPS
    torchrun(*resumable_args(tiny_model_dir, training_data, out), timeout=600)
    assert_same_run(out, uninterrupted)


def test_disk_full_during_checkpointing_keeps_the_previous_one(tmp_path, tiny_model_dir, training_data):
    """The output directory on a 1.5 MB filesystem: the third checkpoint does not fit. One clear line,
    exit 2, no partial checkpoint left, and the previous complete one still loads."""
    from helpers_launch import run

    from dist_lacl.checkpoint import Checkpointer, verify

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root and mount rights)")
    try:
        out = mnt / "run"
        proc = run([sys.executable, *resumable_args(tiny_model_dir, training_data, out, "train.save_every=1",
                                          "train.keep_last=3", f"data.cache_dir={tmp_path / 'cache'}")],
                   expect_rc=None, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "No space left on device" in proc.stderr and "the newest complete checkpoint is intact" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list((out / "checkpoints").glob(".tmp-*"))
        latest = Checkpointer(out / "checkpoints", 3).latest_complete()
        assert latest is not None and verify(latest) is None
    finally:
        subprocess.run(["umount", str(mnt)])


def test_disk_full_during_encoding(tmp_path, tiny_model_dir):
    from helpers_data import write_jsonl
    from helpers_launch import run

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": f"d{i}", "title": "", "text": f"passage {i}"}
                                                     for i in range(3000)])  # 3000 x 32 floats = 384 KB
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root and mount rights)")
    try:
        proc = run([sys.executable, "-m", "dist_lacl.cli", "encode", "--model", str(tiny_model_dir), "--input",
                    str(corpus), "--kind", "corpus", "--output", str(mnt / "emb")], expect_rc=None, timeout=300)
        assert proc.returncode == 2 and "No space left on device" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not [p for p in (mnt / "emb").rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)])
