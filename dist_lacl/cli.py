"""Command line: `dist-lacl train|export|encode|search|evaluate|data ...`; user errors exit cleanly."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from . import distributed as dist
from .errors import NonFiniteError, ResumeRequested, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-lacl", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    # The `deepspeed` launcher inserts --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train under torchrun, deepspeed, accelerate launch or srun")
    train.add_argument("--config", help="YAML run config (sections model, data, loss, train)")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-5")
    train.set_defaults(func=run_train)

    for add_parsers in _optional_parsers():
        add_parsers(sub)
    return parser


def _optional_parsers():
    """Subcommands of the other subpackages, each registering its own parsers."""
    from .builders.cli import add_parsers as data_parsers
    from .evaluation.cli import add_parsers as eval_parsers
    from .export import add_parsers as export_parsers
    from .mine import add_parsers as mine_parsers

    return [export_parsers, eval_parsers, data_parsers, mine_parsers]


def run_train(args) -> None:
    from .config import adopt_launcher_settings, load_config
    from .trainer import train

    train(adopt_launcher_settings(load_config(args.config, args.overrides)))


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if dist.is_main() else logging.WARNING,
                        format=f"%(asctime)s [rank {dist.rank()}] %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (UserError, NonFiniteError, ResumeRequested) as e:
        if args.debug:
            raise
        print(f"dist-lacl {args.command}: error: {e}" if not isinstance(e, ResumeRequested)
              else f"dist-lacl {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        # A second Ctrl-C in training (or the first elsewhere): every write is atomic, so whatever was
        # complete before is intact; a half-written temporary file or checkpoint is ignored and replaced.
        print(f"dist-lacl {args.command}: interrupted; complete outputs and checkpoints are intact",
              file=sys.stderr)
        return 130
    except OSError as e:
        # The storage's problems (full, read-only, not permitted) are the user's to fix, not a bug.
        if args.debug or e.errno not in _STORAGE_ERRORS:
            raise
        print(f"dist-lacl {args.command}: error: {e.strerror}: {e.filename} ({os.strerror(e.errno)})",
              file=sys.stderr)
        return UserError.exit_code
    finally:
        dist.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
