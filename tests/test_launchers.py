"""`accelerate launch` with the shipped DDP and DeepSpeed configs, and the `deepspeed` launcher, run
`dist-lacl train` end to end on 2 CPU processes."""

import sys

import pytest
from helpers_launch import REPO, accelerate_launch, run
from helpers_train import scalars, train_args

from dist_lacl.distributed import free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("accelerate_config,backend", [("ddp.yaml", "ddp"), ("deepspeed_zero2.yaml", "deepspeed")])
def test_accelerate_launch_with_shipped_config(tmp_path, tiny_model_dir, training_data, accelerate_config, backend):
    out = tmp_path / "run"
    config = REPO / "configs" / "accelerate" / accelerate_config
    accelerate_launch(*train_args(tiny_model_dir, training_data, out, "train.max_steps=4", "train.backend=ddp"),
                      extra=("--config_file", str(config)), timeout=600)
    assert len(scalars(out)["loss/total"]) == 4
    saved = (out / "config.yaml").read_text()
    assert f"backend: {backend}" in saved  # the DeepSpeed plugin's file took over train.backend
    marker = "mp_rank_00_model_states.pt" if backend == "deepspeed" else "ddp_state.pt"
    assert (out / "checkpoints" / "step-0000004" / marker).is_file()


def test_deepspeed_launcher(tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", f"--master_port={free_port()}",
         "--module", "dist_lacl.cli", *train_args(tiny_model_dir, training_data, out, "train.max_steps=3")[2:]],
        timeout=600)
    assert len(scalars(out)["loss/total"]) == 3
