"""`dist-lacl train` as tests run it: its command line, the scalars it logged, its live log."""

import re
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def train_args(model_dir, data, out, *extra):
    return ["-m", "dist_lacl.cli", "train",
            f"model.name_or_path={model_dir}", "model.pooling=mean",
            f"data.train_ir={data['train_ir']}", f"data.parallel={data['parallel']}",
            f"data.monolingual={data['monolingual']}", "data.train_group_size=2",
            f"train.output_dir={out}", "train.ir_batch_size=8", "train.parallel_batch_size=8",
            "train.monolingual_batch_size=8", "train.chunk_size=4", "train.lr=3e-3", "train.warmup_steps=2",
            "train.num_threads=1", *extra]


def scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def read_log_until_step(stream, step: int, timeout_s: float = 300) -> list[str]:
    """The lines of a live log up to the one where the trainer logs `step` (or EOF / the timeout): act
    the moment it happens. A tiny run takes ~0.1 s a step on an idle machine, too fast to poll
    TensorBoard's periodically flushed files."""
    logged, step_line, deadline = [], re.compile(r"dist_lacl\.trainer: step (\d+) "), time.time() + timeout_s
    for line in stream:
        logged.append(line)
        found = step_line.search(line)
        if (found and int(found.group(1)) >= step) or time.time() > deadline:
            break
    return logged
