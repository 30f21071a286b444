"""Atomic, resumable checkpoints around the engine's own sharded format.

Layout under <output_dir>/checkpoints/:
  step-000100/            one complete checkpoint
    (engine files)        DeepSpeed: model states + one ZeRO optimizer shard per rank
    rng-rank<r>.pt        every rank's RNG state
    trainer_state.json    step, data position of each stream, counters (also in the engine's client state)
    config.yaml           the resolved run config
    MANIFEST.json         written last: every file and its size; a directory without it is incomplete
  latest                  name of the newest complete checkpoint (written after the rename; for users
                          and tools - loading scans for the newest complete one and warns if they differ)
A checkpoint is written under `.tmp-step-000100/` and renamed only when every rank has finished, so a
crash at any point leaves the previous complete checkpoint as the newest loadable one.
Offline, in one process: the full fp32 weights of a checkpoint (`consolidated_weights`, for export) and
DeepSpeed's world-size independent form (`convert_to_universal`, for a resume on another number of ranks).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .atomic import publish_dir, write_bytes
from .errors import write_failure

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def rng_state() -> dict:
    # The CUDA state of this rank's device only: a resumed task may be shown fewer GPUs than the saving one.
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, list):  # saved by an older version: every visible device's state
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() and cuda else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _manifest(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def verify(directory: Path) -> str | None:
    """None if `directory` is a complete checkpoint, else why it is not."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no MANIFEST.json (the write did not finish)"
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return "MANIFEST.json is unreadable"
    actual = _manifest(directory)
    for name, size in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != size:
            return f"{name} has {actual[name]} bytes, {size} expected (truncated?)"
    return None


def merge_views(views: list[dict[str, int]]) -> dict[str, int]:
    """The union of every rank's {file: size} listing; a file two ranks see with different sizes (one of
    them mid-write or stale) keeps the larger size, so a truncated copy fails `verify`."""
    merged: dict[str, int] = {}
    for view in views:
        for name, size in view.items():
            merged[name] = max(size, merged.get(name, 0))
    return merged


def has_complete_checkpoint(root: Path) -> bool:
    """One process: whether `root` holds at least one complete checkpoint."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and p.name.startswith(PREFIX) and verify(p) is None
                                 for p in root.iterdir())


def read_trainer_state(directory: Path) -> dict:
    """One process: a checkpoint's trainer state (step, counters, best checkpoint, data position)."""
    return json.loads((Path(directory) / "trainer_state.json").read_text())


class Checkpointer:
    """Saves and finds complete checkpoints in `root`; keeps the newest `keep_last` and the best one."""

    def __init__(self, root: Path, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last

    def save(self, engine, step: int, trainer_state: dict, extra_files: dict[str, bytes],
             best_step: int | None = None) -> Path:
        """*Collective.* Write checkpoint `step` atomically; returns its final path. Pruning keeps the
        newest `keep_last` and checkpoint `best_step`."""
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".tmp-{checkpoint_name(step)}"
        if dist.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted write
            for old in self.root.glob(f".{final.name}.old-*"):
                shutil.rmtree(old, ignore_errors=True)  # our own leftover of an interrupted re-save
            tmp.mkdir()
        dist.barrier()
        try:
            self._write(engine, tmp, final, step, trainer_state, extra_files, best_step)
        except (OSError, RuntimeError) as e:
            failure = write_failure(e, self.root, f"checkpoint {final.name}",
                                    "; the newest complete checkpoint is intact")
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write should not also keep a partial copy
            if failure is None:
                raise
            raise failure from None
        dist.barrier()
        return final

    def _write(self, engine, tmp: Path, final: Path, step: int, trainer_state: dict,
               extra_files: dict[str, bytes], best_step: int | None) -> None:
        engine.save(tmp, client_state={"trainer_state": trainer_state})
        torch.save(rng_state(), tmp / f"rng-rank{dist.rank()}.pt")
        # Each rank lists what it sees (its own files at least); on a network filesystem rank 0's view
        # alone may miss another node's shard, and a manifest without it would call a partial checkpoint
        # complete. The union is the manifest, so `verify` catches any file a later reader cannot see.
        views = dist.all_gather_objects(_manifest(tmp))
        if dist.is_main():
            files = {"trainer_state.json": json.dumps(trainer_state, indent=1).encode(), **extra_files}
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                write_bytes(tmp / name, data)
            listed = merge_views([*views, _manifest(tmp)])
            write_bytes(tmp / MANIFEST, json.dumps({"step": step, "files": listed}, indent=1).encode())
            publish_dir(tmp, final)  # re-saving a step: the old copy is deleted only once the new one is in place
            if (self.root / "latest").is_dir():  # not ours to replace; loading never needs the pointer
                log.warning("%s is a directory, so it does not name the newest checkpoint (%s); loading "
                            "scans for complete checkpoints and is unaffected", self.root / "latest", final.name)
            else:
                write_bytes(self.root / "latest", final.name.encode())
            self._prune(best_step)

    def _prune(self, best_step: int | None) -> None:
        complete = [p for p in self._candidates() if verify(p) is None]
        best = checkpoint_name(best_step) if best_step is not None else None
        for old in complete[self.keep_last:]:
            if old.name != best:
                shutil.rmtree(old, ignore_errors=True)

    def _candidates(self) -> list[Path]:
        """Checkpoint directories, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)),
                      key=lambda p: p.name, reverse=True)

    def latest_complete(self) -> Path | None:
        """*Collective.* The newest complete checkpoint (rank 0 decides); warns about each bad one skipped."""
        choice = None
        if dist.is_main():
            for leftover in self.root.glob(".tmp-*") if self.root.is_dir() else []:
                log.warning("ignoring %s: an interrupted checkpoint write", leftover)
            for candidate in self._candidates():
                problem = verify(candidate)
                if problem is None:
                    choice = str(candidate)
                    break
                log.warning("not loading checkpoint %s: %s", candidate, problem)
            pointer = self.root / "latest"
            named = _pointer_name(pointer)
            if choice and named and named != Path(choice).name:
                # The pointer moves after the rename: a crash in between leaves it one checkpoint behind.
                log.warning("%s names %s, but the newest complete checkpoint is %s: loading that one",
                            pointer, named, Path(choice).name)
        choice = dist.broadcast_object(choice)
        return Path(choice) if choice else None

    @staticmethod
    def load(engine, directory: Path, load_optimizer: bool = True) -> dict:
        """*Collective.* Restore engine state and this rank's RNG; returns the trainer state.

        On another world size, ranks that have no saved RNG keep their fresh (seed + rank) streams.
        """
        state = read_trainer_state(directory)
        engine.load(directory, load_optimizer=load_optimizer, saved_world_size=state.get("world_size"))
        rng_file = directory / f"rng-rank{dist.rank()}.pt"
        if state.get("world_size") == dist.world_size() and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return state


def _pointer_name(pointer: Path) -> str | None:
    """The checkpoint name `latest` holds, "" when it holds none (unreadable, binary, or a directory:
    warned; loading scans for complete checkpoints without it), None when there is no pointer."""
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if not name.startswith(PREFIX) or "/" in name or len(name) > 64:
        log.warning("%s does not hold a checkpoint name (%s); scanning for the newest complete checkpoint "
                    "instead", pointer, "a directory" if pointer.is_dir() else "unreadable or not a name")
        return ""
    return name


# ---------------------------------------------------------------- offline conversion (one process)

def convert_to_universal(checkpoint: Path) -> Path:
    """One process. `checkpoint`/universal: the world-size independent form of a ZeRO checkpoint."""
    from argparse import Namespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = checkpoint / "universal"
    if not out.is_dir():
        tmp = checkpoint / ".universal.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted conversion
        ds_to_universal(Namespace(input_folder=str(checkpoint), output_folder=str(tmp), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True))
        publish_dir(tmp, out)
    return out


def consolidated_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of a checkpoint directory written by either engine (one process).

    DeepSpeed: rebuilt from the ZeRO optimizer shards (the fp32 master weights, exact also for bf16 runs).
    """
    if (checkpoint / "ddp_state.pt").is_file():
        return torch.load(checkpoint / "ddp_state.pt", map_location="cpu", weights_only=False)["model"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
