"""Resume == uninterrupted: a 2-rank ZeRO-2 run stopped by a signal and relaunched logs exactly the losses
of an uninterrupted run and ends with exactly its weights; incomplete checkpoints are never loaded."""

import sys

import pytest
import torch
from equivalence import LOGGED_SCALAR, REORDERED_LOSS, RESUMED_CURVE, RESUMED_WEIGHTS
from helpers_launch import run, torchrun
from helpers_resume import STEPS, final_weights, interrupt_after, resumable_args
from helpers_train import scalars, train_args

from dist_lacl.checkpoint import Checkpointer
from dist_lacl.engine import lr_lambda

pytestmark = pytest.mark.slow


def test_resume_equals_uninterrupted_run(tmp_path, tiny_model_dir, training_data):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(*resumable_args(tiny_model_dir, training_data, straight), timeout=600)
    rc = interrupt_after(resumable_args(tiny_model_dir, training_data, resumed), resumed, after_step=5)
    assert rc != 0  # torchrun reports the ranks' "resume me" status (3) as a failure
    proc = torchrun(*resumable_args(tiny_model_dir, training_data, resumed), timeout=600)
    assert "resumed from" in proc.stderr + proc.stdout

    expected, got = scalars(straight), scalars(resumed)
    for tag in ("loss/total", "loss/ir", "loss/semantic", "loss/language", "train/lr"):
        assert len(got[tag]) == STEPS and got[tag] == expected[tag], tag  # bit-identical, every step
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_checkpoints_are_never_loaded(tmp_path, caplog):
    """A leftover temporary directory, a missing shard and a truncated file: the previous complete
    checkpoint is chosen, with a warning naming each bad one."""
    root = tmp_path / "checkpoints"
    ckpt = Checkpointer(root, keep_last=10)

    class FakeEngine:  # the engine's part of a checkpoint is opaque to the Checkpointer
        def save(self, directory, client_state):
            (directory / "model.pt").write_bytes(b"x" * 100)
            (directory / "optim_rank0.pt").write_bytes(b"y" * 50)

    for step in (1, 2, 3, 4):
        ckpt.save(FakeEngine(), step, {"step": step}, {})
    (root / "step-0000004" / "model.pt").write_bytes(b"x" * 10)          # truncated
    (root / "step-0000003" / "optim_rank0.pt").unlink()                 # a missing shard
    (root / "step-0000002" / "MANIFEST.json").unlink()                  # write never finished
    (root / ".tmp-step-0000005").mkdir()                                # interrupted write
    with caplog.at_level("WARNING"):
        assert ckpt.latest_complete() == root / "step-0000001"
    log = caplog.text
    assert "step-0000004: model.pt has 10 bytes, 100 expected" in log
    assert "step-0000003: optim_rank0.pt is missing" in log
    assert "step-0000002: no MANIFEST.json" in log
    assert ".tmp-step-0000005" in log


def test_resume_on_one_rank_continues_a_two_rank_run(tmp_path, tiny_model_no_dropout, training_data):
    """2 -> 1 ranks through DeepSpeed's universal checkpoint. The global batch is unchanged, so with
    dropout off the continuation must follow the uninterrupted 2-rank run: same examples, same
    gradients (gathered negatives), the optimizer state intact."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(*resumable_args(tiny_model_no_dropout, training_data, straight), timeout=600)
    interrupt_after(resumable_args(tiny_model_no_dropout, training_data, resumed), resumed, after_step=4)
    stopped = int((resumed / "checkpoints" / "latest").read_text().split("-")[1])
    assert 4 <= stopped < STEPS
    torchrun(*resumable_args(tiny_model_no_dropout, training_data, resumed), nproc=1, timeout=600)
    assert (resumed / "checkpoints" / f"step-{stopped:07d}" / "universal").is_dir()

    expected, got = scalars(straight)["loss/total"], scalars(resumed)["loss/total"]
    assert len(got) == STEPS
    # Continuous: the first step after the resume already matches (weights and Adam state were
    # restored exactly); later steps drift only by fp32 rounding of a different reduction order.
    assert got[stopped] == pytest.approx(expected[stopped], rel=REORDERED_LOSS)
    assert got == pytest.approx(expected, rel=RESUMED_CURVE)
    a, b = final_weights(straight), final_weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], **RESUMED_WEIGHTS)


@pytest.mark.parametrize("backend", ["deepspeed", "ddp"])
def test_raising_max_steps_on_resume_follows_the_new_schedule(tmp_path, tiny_model_dir, training_data, backend):
    """A finished 2-step run resumed with train.max_steps=4: steps 3 and 4 train at the 4-step schedule's
    rates (the restored rate was the 2-step schedule's 0, and step 3 used to train at it)."""
    out = tmp_path / "run"
    base = [sys.executable, *train_args(tiny_model_dir, training_data, out, "train.log_every=1",
                                        f"train.backend={backend}")]
    run([*base, "train.max_steps=2"], timeout=300)
    run([*base, "train.max_steps=4"], timeout=300)
    lr = scalars(out)["train/lr"]
    # warm-up 2: 1/3 and 2/3 of 3e-3 on the 2-step schedule, then steps 3 and 4 of the 4-step one.
    assert lr == pytest.approx([1e-3, 2e-3] + [3e-3 * lr_lambda(2, 4)(s) for s in (2, 3)], rel=LOGGED_SCALAR)
    assert lr[2:] == pytest.approx([3e-3, 1.5e-3], rel=LOGGED_SCALAR)
