"""End to end: `dist-lacl train` on 2 DeepSpeed ZeRO-2 ranks trains a tiny model (built locally) and logs
every loss term to TensorBoard; the CLI turns bad input into one readable line."""

import statistics
import sys

import pytest
from equivalence import LOGGED_SCALAR
from helpers_launch import run, torchrun
from helpers_train import scalars, train_args

from dist_lacl.engine import lr_lambda


@pytest.mark.slow
def test_two_rank_zero2_training_loss_falls_and_logs_every_term(tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    torchrun(*train_args(tiny_model_dir, training_data, out, "train.max_steps=40", "train.log_every=1"),
             timeout=600)
    logged = scalars(out)
    for tag in ("loss/total", "loss/ir", "loss/semantic", "loss/language", "train/lr", "train/grad_norm",
                "perf/examples_per_s", "perf/tokens_per_s", "align/pair_cos", "align/lang_id_acc"):
        assert tag in logged and len(logged[tag]) == 40, tag
    total = logged["loss/total"]
    assert statistics.mean(total[-8:]) < 0.8 * statistics.mean(total[:8])
    # Step s logs the rate it trained with: warm-up 1/3, 2/3 of the peak, then down to 1/38 of it at step 40.
    expected_lr = [3e-3 * lr_lambda(2, 40)(s) for s in range(40)]
    assert logged["train/lr"] == pytest.approx(expected_lr, rel=LOGGED_SCALAR)
    assert logged["train/lr"][:3] == pytest.approx([1e-3, 2e-3, 3e-3]) and logged["train/lr"][-1] == pytest.approx(3e-3 / 38)
    assert (out / "checkpoints" / "step-0000040" / "MANIFEST.json").is_file()
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", "train.lr: expected a positive number"),
    ("loss.temprature=0.1", "did you mean 'loss.temperature'"),
    ("loss.temperature=0", "loss.temperature: expected a positive number"),
    ("train.chunk_size=1000", "train.chunk_size: expected at most"),
])
def test_cli_reports_bad_config_in_one_line(tmp_path, tiny_model_dir, training_data, override, message):
    proc = run([sys.executable, *train_args(tiny_model_dir, training_data, tmp_path / "run", override)],
               expect_rc=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_periodic_dev_evaluation_is_logged(tmp_path, tiny_model_dir, training_data):
    from helpers_data import write_dev_set

    dev = write_dev_set(tmp_path / "dev")
    out = tmp_path / "run"
    run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=4", "train.eval_every=2",
                                     "train.log_every=4", *(f"data.{k}={v}" for k, v in dev.items()))],
        timeout=300)
    logged = scalars(out)
    for tag in ("eval/mrr@10/de", "eval/mrr@10/en", "eval/mrr@10/macro", "eval/recall@100/all"):
        assert len(logged[tag]) == 2, tag  # steps 2 and 4
        assert all(0 <= v <= 1 for v in logged[tag])
    assert logged["eval/recall@100/all"][-1] == 1.0  # 32 passages: every positive is in the top 100
