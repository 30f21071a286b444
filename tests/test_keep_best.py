"""train.keep_best: the best-scoring checkpoint outlives later saves and a resume, and `export --best`
exports it. The dev metric is scripted (tests/workers/scripted_dev_metric.py) so that it peaks mid-run."""

import json
import sys

import pytest
import torch
from helpers_data import write_dev_set
from helpers_launch import WORKERS, run
from helpers_train import scalars, train_args

from dist_lacl.checkpoint import read_trainer_state
from dist_lacl.cli import main
from dist_lacl.config import load_config
from dist_lacl.errors import ConfigError
from dist_lacl.loading import load_model, model_from_checkpoint

# Steps 1-8; the peak at step 3. The run stops (signal) after step 5 and resumes: step 6's 0.8 would be a
# new best to a trainer that forgot the best (0.9) across the resume.
SCORES = {1: 0.1, 2: 0.3, 3: 0.9, 4: 0.5, 5: 0.4, 6: 0.8, 7: 0.2, 8: 0.6}


def _checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def test_best_checkpoint_survives_later_saves_and_a_resume_and_is_exported(tmp_path, tiny_model_dir,
                                                                           training_data):
    dev = write_dev_set(tmp_path / "dev")
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, training_data, out, "train.max_steps=8", "train.eval_every=1",
                      "train.save_every=1", "train.keep_last=1", "train.keep_best=nDCG@10",
                      *(f"data.{k}={v}" for k, v in dev.items()))[2:]  # without `-m dist_lacl.cli`
    cmd = [sys.executable, str(WORKERS / "scripted_dev_metric.py"), json.dumps(SCORES)]

    run([*cmd, "5", *args], timeout=300, expect_rc=3)  # stopped after step 5
    assert _checkpoints(out) == ["step-0000003", "step-0000005"]
    state = read_trainer_state(out / "checkpoints" / "step-0000005")["train"]
    assert (state["best_step"], state["best_value"]) == (3, 0.9)

    run([*cmd, "0", *args], timeout=300)  # resumed: steps 6-8
    assert _checkpoints(out) == ["step-0000003", "step-0000008"]
    assert read_trainer_state(out / "checkpoints" / "step-0000008")["train"]["best_step"] == 3
    assert scalars(out)["eval/ndcg@10/macro"] == pytest.approx(list(SCORES.values()))  # each step once

    assert main(["export", "--best", str(out), "--output", str(tmp_path / "best")]) == 0
    exported = load_model(tmp_path / "best")[0].state_dict()
    best = model_from_checkpoint(out / "checkpoints" / "step-0000003")[0].state_dict()
    last = model_from_checkpoint(out / "checkpoints" / "step-0000008")[0].state_dict()
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert not all(torch.equal(exported[k], last[k]) for k in last)


def test_export_best_of_a_run_without_one_is_one_line(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"train": {"step": 2}}))
    (checkpoint / "MANIFEST.json").write_text(json.dumps({"step": 2, "files": {}}))
    assert main(["export", "--best", str(tmp_path / "run"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has no best checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides,message", [
    (["train.keep_best=ndcg@5", "train.eval_every=2"], "train.keep_best: expected a dev metric, one of mrr@10"),
    (["train.keep_best=ndcg@10"], "train.eval_every: expected a positive integer with train.keep_best"),
    (["train.report_to=[tensorboard, tb]"], "train.report_to: expected a list of distinct names"),
])
def test_bad_keep_best_or_report_to_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, ["data.train_ir=x", "loss.semantic_weight=0", "loss.language_weight=0", *overrides])
