"""train.report_to: wandb (offline) beside TensorBoard gets the same scalars at the same steps; a missing
wandb package is one line naming the extra."""

import sys

import pytest
from helpers_data import write_dev_set
from helpers_launch import run
from helpers_train import train_args
from helpers_wandb import history
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_lacl import reporting
from dist_lacl.errors import ConfigError


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_wandb_offline_gets_the_tensorboard_scalars(tmp_path, tiny_model_dir, training_data):
    dev = write_dev_set(tmp_path / "dev")
    out = tmp_path / "run"
    wandb_env = {f"WANDB_{k}": tmp_path / "wandb-home" / k.lower() for k in ("DIR", "CACHE_DIR", "CONFIG_DIR",
                                                                           "DATA_DIR")}
    run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=3", "train.log_every=1",
                                     "train.eval_every=2", "train.report_to=[tensorboard, wandb]",
                                     "data.language_alpha=0.3",  # mix/ scalars, logged at step 0 too
                                     *(f"data.{k}={v}" for k, v in dev.items()))],
        timeout=300, WANDB_MODE="offline", **wandb_env)
    board, wandb = tensorboard_scalars(out), history(out / "wandb")
    assert {"loss/total", "eval/mrr@10/macro", "mix/parallel/de"} <= board.keys(), sorted(board)
    assert 0 in board["mix/parallel/de"]
    assert wandb.keys() == board.keys()
    for tag, values in board.items():
        assert wandb[tag].keys() == values.keys(), tag
        assert wandb[tag] == pytest.approx(values, rel=1e-6), tag  # TensorBoard keeps float32


def test_missing_wandb_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec answers None
    with pytest.raises(ConfigError, match=r"train\.report_to: wandb is not installed; install the extra "
                                          r"\(pip install 'dist-lacl\[wandb\]'\)"):
        reporting.check_available(["tensorboard", "wandb"])
    reporting.check_available(["tensorboard"])


def test_wandb_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    import wandb

    from dist_lacl.config import load_config
    from dist_lacl.errors import UserError

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = load_config(None, ["data.train_ir=x", "loss.semantic_weight=0", "loss.language_weight=0",
                             "train.report_to=[wandb]"])
    with pytest.raises(UserError, match=r"train\.report_to: wandb could not start a run \(api_key not configured"):
        reporting.open_reporter(cfg, tmp_path, 0)
