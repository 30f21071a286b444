"""Faults: non-finite losses are detected on every rank together and skipped; too many in a row stop
training with a clear message, and no checkpoint is written from a bad state."""

import json

import pytest
import yaml
from helpers_launch import WORKERS, torchrun

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
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


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
