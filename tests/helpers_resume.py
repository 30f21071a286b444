"""A resumable 2-rank training run for tests: its command line, a signal once it reaches a step, its final weights."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from helpers_launch import REPO, launch_env
from helpers_train import read_log_until_step, train_args

from dist_lacl.distributed import free_port

STEPS = 12


def resumable_args(model_dir, data, out, *extra):
    # fp32, dropout on (RNG state must be restored), gradient cache with several chunks.
    return train_args(model_dir, data, out, f"train.max_steps={STEPS}", "train.save_every=4",
                      "train.keep_last=5", *extra)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / "checkpoints" / "latest").read_text()
    return torch.load(out / "checkpoints" / latest / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def interrupt_after(cmd_args, out: Path, after_step: int) -> int:
    """Start a 2-rank run; once it has logged `after_step` steps, SIGUSR1 its ranks as SLURM would."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           *cmd_args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    logged = read_log_until_step(proc.stdout, after_step)
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        os.kill(child.pid, signal.SIGUSR1)
    rest, _ = proc.communicate(timeout=300)
    output = "".join(logged) + rest
    assert "stopped by signal" in output, output[-3000:]
    return proc.returncode
