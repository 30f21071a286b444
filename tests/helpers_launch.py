"""Launch real multi-process jobs from tests (torchrun, accelerate launch), with readable failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dist_lacl.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "tests" / "workers"


# Set by a launcher around pytest (or leaked by a test): a child must rendezvous on its own terms.
RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def launch_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd: list[str], timeout: int = 300, expect_rc: int | None = 0, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch_env(**env), cwd=REPO)
    if expect_rc is not None and proc.returncode != expect_rc:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}, expected {expect_rc}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def torchrun(*args, nproc: int = 2, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}", *map(str, args)], **kwargs)


def accelerate_launch(*args, nproc: int = 2, extra: tuple = ("--multi_gpu",), **kwargs):
    return run([sys.executable, "-m", "accelerate.commands.launch", *extra, f"--num_processes={nproc}",
                f"--main_process_port={free_port()}", *map(str, args)], **kwargs)


def rank_results(stdout: str) -> list[dict]:
    """Every `RESULT {json}` the ranks printed, in rank order. The ranks share one pipe, so another
    rank's output (a progress bar without a newline) can run on after a result on the same line."""
    decoder = json.JSONDecoder()
    found = [decoder.raw_decode(part)[0] for part in stdout.split("RESULT ")[1:]]
    return sorted(found, key=lambda r: r.get("rank", 0))
