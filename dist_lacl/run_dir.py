"""The run directory: which run it belongs to, who may write it now, and that every rank sees it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from . import distributed as dist
from .atomic import write_bytes
from .checkpoint import has_complete_checkpoint
from .config import RunConfig, config_from_dict
from .config_checks import check_resume_compatible
from .errors import ConfigError, UserError
from .outputs import FolderLock, check_parent_writable

log = logging.getLogger(__name__)


def check_output_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse an output directory that holds a different run (resuming it would silently mix the two).

    Only a run that left a complete checkpoint binds the directory to its config: one that failed
    before its first checkpoint can be run again with corrected settings.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.output_dir: {run_dir} is a file; expected a directory")
    check_parent_writable(run_dir, "train.output_dir")
    saved = run_dir / "config.yaml"
    if saved.is_file():
        if not has_complete_checkpoint(run_dir / "checkpoints"):
            log.info("%s: no complete checkpoint yet; this run's config replaces the saved one", run_dir)
            return
        previous = config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved))
        check_resume_compatible(previous, cfg, str(saved))
    elif run_dir.is_dir() and any(p.name not in ("cache", FolderLock.NAME) for p in run_dir.iterdir()):
        raise ConfigError(f"train.output_dir: {run_dir} is not empty and holds no dist-lacl run; "
                          "choose another directory")


def claim(run_dir: Path, cfg: RunConfig) -> FolderLock | None:
    """*Collective.* Only with config and data validated does the run directory become this run's:
    rank 0 locks it (a second training into it is refused; the lock dies with the process) and
    writes the config; every rank then checks that it sees the same directory. Returns rank 0's lock
    (None on the other ranks), to be held for the whole run."""
    held = []

    def take() -> str:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.append(FolderLock(run_dir, "train.output_dir", "training"))
            write_bytes(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        except OSError as e:
            raise UserError(f"train.output_dir: {run_dir}: cannot be written ({e.strerror})") from None
        return held[0].token

    check_shared_run_dir(run_dir, dist.main_decides(take))
    return held[0] if held else None


def check_shared_run_dir(run_dir: Path, token: str, wait_s: float = 30.0) -> None:
    """*Collective.* Every rank must see rank 0's lock file: checkpoints are written by all ranks into one
    directory, so node-local output directories would scatter a checkpoint over several machines.
    A network filesystem may show a new file late: wait up to `wait_s`."""
    import socket

    deadline = time.monotonic() + wait_s
    seen = False
    while not seen:
        try:
            seen = (run_dir / FolderLock.NAME).read_text().strip() == token
        except OSError:
            seen = False
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems = [p for p in dist.all_gather_objects(None if seen else f"rank {dist.rank()} on "
                                                   f"{socket.gethostname()}") if p]
    if problems:
        raise UserError(f"train.output_dir: {run_dir} is not one shared directory: {', '.join(problems)} do(es) "
                        "not see rank 0's files; put the output directory on a filesystem all nodes share")
