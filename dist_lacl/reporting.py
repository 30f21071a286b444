"""Where the logged scalars go (train.report_to): TensorBoard and/or Weights & Biases, on rank 0 only.

The trainer calls one `Reporter`: `write(scalars, step)` with a dict of scalars, `close()` at the end.
Every writer gets the same scalars at the same steps. wandb is an optional extra, imported only when
asked for; its project is $WANDB_PROJECT (default dist-lacl), its run named after the run directory
(other settings, such as WANDB_MODE=offline or WANDB_ENTITY, as wandb reads them from the environment).
A resumed launch starts a new wandb run from the resumed step; TensorBoard continues its own curve.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from . import distributed as dist
from .errors import ConfigError, UserError

WANDB_EXTRA = "pip install 'dist-lacl[wandb]'"


def check_available(report_to: list[str]) -> None:
    """Before the long set-up: a writer whose package is missing is one line naming the extra."""
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.report_to: wandb is not installed; install the extra ({WANDB_EXTRA}) or "
                          "leave wandb out of train.report_to")


class Reporter:
    """The writers of train.report_to on rank 0; on every other rank, none (writing is then a no-op)."""

    def __init__(self, writers: list):
        self.writers = writers

    def write(self, scalars: dict[str, float], step: int) -> None:
        for writer in self.writers:
            writer.write(scalars, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def open_reporter(cfg, run_dir: Path, resumed_step: int) -> Reporter:
    """*Collective.* The Reporter of `cfg` (a config.RunConfig), continuing at `resumed_step` (0: a new
    run). Rank 0 opens the writers; a writer that cannot start stops every rank, not rank 0 alone."""
    kinds = {"tensorboard": TensorBoardWriter, "wandb": WandbWriter}
    writers = []

    def start() -> None:
        writers.extend(kinds[name](cfg, run_dir, resumed_step) for name in cfg.train.report_to)

    dist.main_decides(start)
    return Reporter(writers)


class TensorBoardWriter:
    """<run_dir>/tensorboard. After a resume, events a crashed run logged past its last checkpoint are
    marked stale (purge_step), so the curve shows each step once."""

    def __init__(self, cfg, run_dir: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """A wandb run with the resolved config; its local files under <run_dir>/wandb."""

    def __init__(self, cfg, run_dir: Path, resumed_step: int):
        import wandb

        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "dist-lacl", name=run_dir.name,
                                  dir=str(run_dir), config=cfg.to_dict(),
                                  # The trainer logs to the console itself; wandb's capture would wrap tqdm.
                                  settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:  # not logged in, no network, a bad setting
            raise UserError(f"train.report_to: wandb could not start a run ({e}); WANDB_MODE=offline logs "
                            "locally, to sync later") from None

    def write(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()
