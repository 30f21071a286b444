"""Command line: `dist-lacl train|export|push|mine|probe|encode|search|evaluate|data ...`; user errors exit cleanly.

Building the parser imports no torch, transformers or datasets: a handler imports its module when its
command runs, so `--help` and a refused option or config answer in well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import os
import sys

from .errors import ConfigError, NonFiniteError, ResumeRequested, UserError
from .evaluation.index_spec import GPU_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-lacl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    # The `deepspeed` launcher inserts --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train under torchrun, deepspeed, accelerate launch or srun")
    train.add_argument("--config", help="YAML run config (sections model, data, loss, train)")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-5")
    train.set_defaults(func=run_train)

    _add_export_parser(sub)
    _add_push_parser(sub)
    _add_mine_parser(sub)
    _add_probe_parser(sub)
    for add_parsers in _subpackage_parsers():
        add_parsers(sub)
    return parser


def _subpackage_parsers():
    """Subcommands of the other subpackages, each registering its own parsers (import-light modules)."""
    from .builders.cli import add_parsers as data_parsers
    from .evaluation.cli import add_parsers as eval_parsers

    return [eval_parsers, data_parsers]


def handler(module: str, name: str):
    """`args -> module.name(args)`, importing `module` (relative to dist_lacl) only when the command runs."""
    def run(args):
        return getattr(importlib.import_module(module, __package__), name)(args)
    return run


def run_train(args) -> None:
    from .config import load_config

    cfg = adopt_launcher_settings(load_config(args.config, args.overrides))
    from .trainer import train  # after the config check: a refused config costs no torch import

    train(cfg)


def adopt_launcher_settings(cfg, environ=None):
    """`cfg` (a config.RunConfig) as launched: under `accelerate launch` with a DeepSpeed config file,
    that file becomes train.deepspeed_config and the backend DeepSpeed, so the run config (saved with the
    run) names what actually ran."""
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return cfg
    ds_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not ds_file:
        raise ConfigError("accelerate launched DeepSpeed without a config file: set deepspeed_config_file in "
                          "the accelerate config (see configs/accelerate/deepspeed_zero2.yaml)")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, backend="deepspeed",
                                                              deepspeed_config=ds_file))


def _add_export_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="consolidate a checkpoint into a transformers model folder")
    export.add_argument("checkpoint", help="a run directory, its checkpoints/ folder, or one step-* checkpoint")
    export.add_argument("--output", "-o", "--out", dest="output", required=True,
                        help="the model folder to write (new, empty, or a previous export with --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace a previous export in --output")
    export.add_argument("--best", action="store_true",
                        help="export the run's best checkpoint (train.keep_best) instead of its newest")
    export.set_defaults(func=handler(".export", "run_export"))


def _add_push_parser(subparsers) -> None:
    push = subparsers.add_parser("push", help="upload an exported model folder to the Hugging Face Hub")
    push.add_argument("folder", help="a folder written by dist-lacl export (with its model card)")
    push.add_argument("repo", help="the Hub model repository, owner/name (created if it does not exist)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="the branch to commit to (created if needed; default main)")
    push.add_argument("--message", default="Upload a dist-lacl export", help="the commit message")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes it would send, and stop")
    push.set_defaults(func=handler(".push", "run_push"))


def _add_mine_parser(subparsers) -> None:
    p = subparsers.add_parser("mine", help="hard negatives from a model for a training set -> Tevatron jsonl "
                                           "(launch with torchrun to encode on every rank)")
    p.add_argument("--model", required=True,
                   help="exported model folder, transformers folder, or training run/checkpoint directory")
    p.add_argument("--corpus", required=True, help="corpus jsonl: docid, title, text")
    p.add_argument("--train-ir", help="Tevatron training jsonl: its queries and positive_passages")
    p.add_argument("--queries", help="queries (.jsonl or .tsv), with --qrels")
    p.add_argument("--qrels", help="TREC qrels: the positives (relevance >= --min-relevance)")
    p.add_argument("--output", required=True, help="Tevatron jsonl to write (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--work-dir", help="embeddings, kept for a rerun or resume (default <output>.work)")
    p.add_argument("--rank-range", default="10-100",
                   help="draw negatives from these 1-based positions of the retrieved list, positives counted "
                        "and then removed (default 10-100)")
    p.add_argument("--num-negatives", type=int, default=30, help="negatives per query (default 30)")
    p.add_argument("--k", type=int, help="passages retrieved per query (default: the rank range's end)")
    p.add_argument("--seed", type=int, default=0, help="the draw depends on (seed, query_id) only (default 0)")
    p.add_argument("--min-relevance", type=int, default=1, help="qrels relevance that makes a positive (default 1)")
    p.add_argument("--skip-unjudged", action="store_true",
                   help="leave out queries without a positive instead of stopping (MS MARCO's queries.train)")
    p.add_argument("--query-max-len", type=int,
                   help="tokens per query (default: the model's trained length, as recorded; else 32)")
    p.add_argument("--passage-max-len", type=int,
                   help="tokens per passage (default: the model's trained length, as recorded; else 128)")
    p.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default 128)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 (else fp16) on GPU, fp32 on CPU")
    p.add_argument("--chunk-passages", type=int, default=1_000_000,
                   help="corpus rows per encoded chunk: the unit of resume and of RAM per rank (default 1000000)")
    p.add_argument("--gpus", default="auto", choices=GPU_MODES, help="faiss placement (default auto)")
    p.add_argument("--block-rows", type=int, help="corpus rows per search block (default: what fits in GPU "
                                                  "memory; on CPU one block per shard)")
    p.add_argument("--query-batch", type=int, default=4096, help="queries per faiss search call")
    p.add_argument("--dist-timeout-s", type=int, default=1800,
                   help="collective timeout in seconds (with --score-with it must cover rank 0's search)")
    _add_score_options(p)
    p.set_defaults(func=handler(".mine", "run_mine"))


def _add_probe_parser(subparsers) -> None:
    p = subparsers.add_parser("probe", help="how much language identity is left in models' embeddings of "
                                            "parallel or multilingual text (models side by side)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="exported, sentence-transformers or transformers model folder, or a training run / checkpoint")
    p.add_argument("--texts", nargs="+", required=True, metavar="FILE",
                   help="parallel pairs (jsonl, tsv, Moses) and/or multilingual text (jsonl, .txt); see docs/formats.md")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "tsv", "moses", "text"),
                   help="the files' format (default: detected from names and first records)")
    p.add_argument("--lang", help="the non-English language of parallel files, or the language of plain text, "
                                  "where file names do not say")
    p.add_argument("--max-per-lang", type=int, default=1000, help="pairs (or texts) per language (default 1000)")
    p.add_argument("--held-out", type=float, default=0.3,
                   help="share of translation groups held out for language ID (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="draws the sample and the held-out split (default 0)")
    p.add_argument("--tower", default="passage", choices=("passage", "query"),
                   help="separate towers: which one encodes the sentences (default passage)")
    p.add_argument("--prompt", default="none", choices=("none", "query", "passage"),
                   help="the model's prefix to put before every sentence (default none)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default 64)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 (else fp16) on GPU, fp32 on CPU")
    p.add_argument("--names", nargs="+", help="the models' names in the table (default: their folder names)")
    p.add_argument("--output", "-o", help="folder for probe.md, probe.json and probe.png (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous probe output in --output")
    p.set_defaults(func=handler(".probe", "run_probe"))


def _add_score_options(p) -> None:
    p.add_argument("--score-with", metavar="MODEL",
                   help="a local cross-encoder folder (transformers AutoModelForSequenceClassification): every "
                        "passage written gets its logit for (query, passage) as 'score', for distillation "
                        "(the last label's logit for a model of several labels); scored on every rank, resumable")
    p.add_argument("--score-batch-size", type=int, default=64, help="pairs per cross-encoder forward pass (default 64)")
    p.add_argument("--score-max-len", type=int,
                   help="tokens per (query, passage) pair (default: what the model and its tokenizer take, at most 512)")
    p.add_argument("--score-chunk-queries", type=int, default=1024,
                   help="queries per scored chunk: the unit of resume and of sharding over ranks (default 1024)")
    p.add_argument("--drop-negatives-above-margin", type=float, metavar="M",
                   help="with --score-with: drop each negative scoring above (its query's positive score - M); "
                        "with several positives, the lowest positive score counts; the number dropped is logged")


def _env_rank() -> int:
    """The launcher's rank (torchrun, deepspeed, srun via adopt_launcher_settings): logging starts before
    any process group exists."""
    return int(os.environ.get("RANK", 0))


def _leave_process_group() -> None:
    if "torch" in sys.modules:  # a command that never imported torch never joined a group
        from . import distributed

        distributed.destroy()


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if args.command != "push":  # the one command that goes online; it refuses if the user set offline mode
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if _env_rank() == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {_env_rank()}] %(levelname)s %(name)s: %(message)s")
    # faiss, imported later by a handler, says at INFO which CPU build it loaded: noise for the user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
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
        _leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
