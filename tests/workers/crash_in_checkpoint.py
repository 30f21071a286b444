"""Train, and die (os._exit, as SIGKILL would) at one phase of the checkpoint write for step CRASH_STEP.

usage: crash_in_checkpoint.py PHASE CRASH_STEP dist-lacl-train-args...
phases: shards (engine files written, nothing else), rng (mid per-rank files), metadata (before the
manifest), rename (manifest written, not yet renamed), latest (renamed, `latest` not yet moved)
"""

import os
import sys

import dist_lacl.checkpoint as ckpt
from dist_lacl import cli


def die():
    os._exit(137)


def main():
    phase, crash_step, *args = sys.argv[1:]
    crash_dir = ckpt.checkpoint_name(int(crash_step))
    save, write_bytes, torch_save = ckpt.Checkpointer.save, ckpt.write_bytes, ckpt.torch.save

    def is_crash_write(path) -> bool:
        return crash_dir in str(path)

    def patched_write_bytes(path, data):
        if is_crash_write(path) and phase == "metadata":  # the first metadata file of that checkpoint
            die()
        if phase == "latest" and path.name == "latest" and data.decode() == crash_dir:
            die()  # renamed and complete, but the pointer still names the previous one
        write_bytes(path, data)
        if is_crash_write(path) and phase == "rename" and path.name == ckpt.MANIFEST:
            die()

    def patched_torch_save(obj, path, *a, **k):
        torch_save(obj, path, *a, **k)
        if phase == "rng" and is_crash_write(path) and "rng-rank" in str(path):
            die()

    def patched_save(self, engine, step, trainer_state, extra_files, **options):
        if phase == "shards" and step == int(crash_step):
            original = engine.save

            def save_then_die(directory, client_state):
                original(directory, client_state)
                die()
            engine.save = save_then_die
        return save(self, engine, step, trainer_state, extra_files, **options)

    ckpt.write_bytes, ckpt.torch.save, ckpt.Checkpointer.save = patched_write_bytes, patched_torch_save, patched_save
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main()
