"""The `encode`, `search` and `evaluate` subcommands; `add_parsers` registers them on `dist-lacl`'s parser.

Import-light: torch, transformers and faiss are imported by the handlers, after every option is checked.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import DataError, UserError
from ..outputs import check_not_an_input, check_output_file
from .answers import aggregate_answers, answer_metrics
from .fields import language_label
from .index_spec import GPU_MODES, INDEX_KINDS, IndexSpec, check_positive
from .inputs import (
    DEFAULT_LANG,
    query_records,
    read_answers,
    read_corpus,
    read_passage_texts,
    read_qrels,
    read_queries,
    read_run,
)
from .metrics import DEFAULT_METRICS, max_cutoff, parse_metrics
from .report import format_table, write_report, write_run

log = logging.getLogger(__name__)


def add_parsers(subparsers) -> None:
    """Register `encode`, `search` and `evaluate` on an argparse subparsers object (handler in `func`)."""
    encode = subparsers.add_parser(
        "encode", help="encode queries or a corpus into embedding shards (one per rank; launch with torchrun)")
    encode.add_argument("--model", required=True,
                        help="exported model folder, transformers folder, or training run/checkpoint directory")
    encode.add_argument("--input", required=True, help="queries (.jsonl or .tsv) or a corpus file or folder (docs/formats.md)")
    encode.add_argument("--kind", required=True, choices=("queries", "corpus"),
                        help="queries use the query tower, the corpus the passage tower")
    encode.add_argument("--output", required=True,
                        help="directory for the shards (emb-/ids-/meta-<rank>-of-<world>); a directory holding "
                             "embeddings of another model or settings is refused")
    encode.add_argument("--max-len", type=int,
                        help="tokens per text (default: the length the model was trained with for the tower, as its "
                             "export or checkpoint records; else 32 for queries, 128 for a corpus)")
    encode.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default 128)")
    encode.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 (else fp16) on GPU, fp32 on CPU")
    encode.add_argument("--storage", default="fp32", choices=("fp32", "fp16"),
                        help="dtype of the stored vectors: fp16 halves the disk (search reads them as fp32)")
    encode.add_argument("--part-rows", type=int, default=65_536,
                        help="texts per part file: a killed job resumes at the first missing part (default 65536)")
    encode.add_argument("--no-length-sort", action="store_true",
                        help="batch texts in file order instead of by token length")
    encode.add_argument("--dist-timeout-s", type=int, default=1800, help="collective timeout in seconds")
    encode.set_defaults(func=run_encode)

    search = subparsers.add_parser("search", help="search query embeddings against corpus embeddings -> TREC run")
    _add_search_args(search, required=True)
    search.add_argument("--output", required=True, help="TREC run file to write")
    search.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    search.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    search.set_defaults(func=run_search)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a run (given, or searched from embeddings) against qrels; table + JSON report")
    evaluate.add_argument("--qrels", help="qrels: TREC (query_id iteration docid relevance) or BEIR tsv")
    evaluate.add_argument("--queries", help="queries file (.jsonl/.tsv): languages for the per-language table, "
                                            "and the query ids the qrels may name")
    evaluate.add_argument("--run", help="TREC run to score, instead of searching --query-emb/--corpus-emb")
    _add_search_args(evaluate, required=False)
    evaluate.add_argument("--output-run", help="with search: also write the TREC run here")
    evaluate.add_argument("--k", type=int, help="results per query (default: the largest metric cutoff)")
    evaluate.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                          help=f"comma-separated metric@cutoff (default {','.join(DEFAULT_METRICS)})")
    evaluate.add_argument("--lang", default=DEFAULT_LANG,
                          help=f"language of queries without a `lang` field (default {DEFAULT_LANG})")
    evaluate.add_argument("--answers", help="questions jsonl with `answers` (XOR-TyDi: id, question, answers, lang): "
                                            "also score R@2kt, R@5kt and answer accuracy@20/100")
    evaluate.add_argument("--passages", help="with --answers: the corpus the run's docids name (e.g. psgs_w100.tsv)")
    evaluate.add_argument("--report", help="JSON report to write")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output-run or --report")
    evaluate.set_defaults(func=run_evaluate)


def _add_search_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--query-emb", required=required, help="query embeddings directory (from `encode`)")
    parser.add_argument("--corpus-emb", required=required, help="corpus embeddings directory (from `encode`)")
    parser.add_argument("--index", default="flat", choices=INDEX_KINDS,
                        help="flat: exact (default); ivf, hnsw, ivfpq: approximate, for very large corpora")
    parser.add_argument("--gpus", default="auto", choices=GPU_MODES,
                        help="auto: all GPUs (index sharded) if faiss sees any, else CPU; none; one; all")
    parser.add_argument("--fp16", action="store_true", help="GPU: store vectors in float16 (half the memory)")
    parser.add_argument("--block-rows", type=int,
                        help="corpus rows per index block, merged exactly; memory is one block (default: what "
                             "fits in GPU memory; on CPU 512 MiB of float32)")
    parser.add_argument("--query-batch", type=int, default=4096, help="queries per faiss search call")
    defaults = IndexSpec()
    for name in ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "pq_bits"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                            help=f"default {getattr(defaults, name)}")
    parser.add_argument("--run-tag", default="dist-lacl", help="tag column of the TREC run")


def _index_spec(args) -> IndexSpec:
    return IndexSpec(kind=args.index, gpus=args.gpus, fp16=args.fp16, nlist=args.nlist, nprobe=args.nprobe,
                     hnsw_m=args.hnsw_m, ef_search=args.ef_search, pq_m=args.pq_m, pq_bits=args.pq_bits)


def run_encode(args) -> None:
    """*Collective* under a launcher: every rank encodes its shard of `--input`."""
    from .. import distributed as dist
    from ..loading import input_length, load_model
    from ..model import max_tokens
    from .encode import encode_to_shards, resolve_dtype

    check_positive("batch_size", args.batch_size)
    check_positive("part_rows", args.part_rows)
    check_positive("dist_timeout_s", args.dist_timeout_s)
    if args.max_len is not None and args.max_len < 2:
        raise UserError(f"--max-len: expected at least 2 tokens, got {args.max_len}")
    if not Path(args.input).exists():
        raise UserError(f"--input {args.input}: file not found")
    _input_path("--model", args.model, directory=True)
    output = Path(args.output)
    check_not_an_input(output, "--output", [("--input", args.input), ("--model", args.model)])
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: expected a directory for the embeddings, got a file")
    dist.init_process_group(args.dist_timeout_s)
    records = read_queries(args.input) if args.kind == "queries" else read_corpus(args.input)
    tower, default_len = ("query", 32) if args.kind == "queries" else ("passage", 128)
    model, tokenizer = load_model(args.model)
    max_len = input_length(model, tower, args.max_len, "--max-len", default_len)
    limit = max_tokens(model.tower(tower))
    if limit is not None and max_len > limit:
        raise UserError(f"--max-len: {max_len} tokens, but the model's position embeddings allow at most {limit}")
    device = dist.device()
    model.to(device)
    about = {"model": str(Path(args.model).resolve()), "input": str(Path(args.input).resolve())}
    encoded = encode_to_shards(model, tokenizer, records, output, tower, max_len, args.batch_size,
                               dtype=resolve_dtype(args.dtype, device), device=device,
                               sort_by_length=not args.no_length_sort, storage=args.storage,
                               part_rows=args.part_rows, about=about)
    log.info("rank %d of %d: %s its shard of the %d %s in %s", dist.rank(), dist.world_size(),
             "encoded" if encoded else "found complete", len(records), args.kind, args.output)


def run_search(args) -> None:
    spec = _checked_search_options(args, args.k)
    _input_path("--query-emb", args.query_emb, directory=True)
    _input_path("--corpus-emb", args.corpus_emb, directory=True)
    _output_path("--output", args.output, [], [("--query-emb", args.query_emb), ("--corpus-emb", args.corpus_emb)],
                 args.overwrite)
    from .evaluate import search_embeddings  # torch: after the checks

    run, _ = search_embeddings(args.query_emb, args.corpus_emb, args.k, spec, args.block_rows, args.query_batch)
    write_run(args.output, run, args.run_tag)
    log.info("wrote %s (%d queries, k=%d)", args.output, len(run), args.k)


def run_evaluate(args) -> None:
    """Every option and input is checked, and every input read, before the search and before any write."""
    metrics = parse_metrics(args.metrics)
    if not args.qrels and not args.answers:
        raise UserError("evaluate: expected --qrels FILE, or --answers FILE (with --passages) to score answers")
    if bool(args.answers) != bool(args.passages):
        raise UserError("--answers, --passages: give both (the questions' answers and the corpus to look them up in)")
    if not args.lang or any(c.isspace() for c in args.lang):
        raise UserError(f"--lang: expected a language code such as 'en', got {args.lang!r}")
    args.lang = language_label(args.lang)  # `deu` reports as `de`, as the files' codes do
    searching = bool(args.query_emb or args.corpus_emb)
    if args.run and searching:
        raise UserError("--run: give either a run file or --query-emb and --corpus-emb, not both")
    if not args.run and not (args.query_emb and args.corpus_emb):
        raise UserError("evaluate: expected --run FILE, or --query-emb DIR and --corpus-emb DIR to search")
    if args.output_run and not searching:
        raise UserError("--output-run: only with --query-emb and --corpus-emb (a search writes the run)")
    k = args.k if args.k is not None else max_cutoff(metrics)
    spec = _checked_search_options(args, k)
    if searching and k < max_cutoff(metrics):
        raise UserError(f"--k: expected at least {max_cutoff(metrics)}, the largest metric cutoff, got {k}")
    inputs = [(opt, path) for opt, path in (("--qrels", args.qrels), ("--queries", args.queries),
                                            ("--run", args.run), ("--answers", args.answers)) if path]
    for option, path in inputs:
        _input_path(option, path)
    if args.passages:
        inputs.append(("--passages", args.passages))
    emb_dirs = [(opt, path) for opt, path in (("--query-emb", args.query_emb), ("--corpus-emb", args.corpus_emb))
                if path]
    for option, path in emb_dirs:
        _input_path(option, path, directory=True)
    outputs = [(opt, path) for opt, path in (("--output-run", args.output_run), ("--report", args.report)) if path]
    for i, (option, path) in enumerate(outputs):
        _output_path(option, path, inputs + outputs[:i], emb_dirs, args.overwrite)
    from .evaluate import open_search_inputs, score_run, search_embeddings  # torch: after the checks

    queries = read_queries(args.queries, args.lang) if args.queries else None
    answers = read_answers(args.answers) if args.answers else None
    if args.run:
        run = read_run(args.run)
        qrels = read_qrels(args.qrels, queries.ids if queries else None) if args.qrels else None
    else:
        search_inputs = open_search_inputs(args.query_emb, args.corpus_emb)
        qrels = read_qrels(args.qrels, queries.ids if queries else search_inputs[0]) if args.qrels else None
        unknown = search_inputs[2].unknown({d for judged in qrels.values() for d in judged}) if qrels else ()
        if unknown:
            raise DataError(args.qrels, None, "docid", f"expected ids of the corpus in {args.corpus_emb}, got "
                            f"{len(unknown)} others ({', '.join(sorted(unknown)[:3])})")
        run, _ = search_embeddings(args.query_emb, args.corpus_emb, k, spec, args.block_rows, args.query_batch,
                                   inputs=search_inputs)
    langs = dict(zip(queries.ids, queries.langs)) if queries else {}
    report = {}
    if qrels is not None:
        report = score_run(run, qrels, metrics, langs, args.lang)
        if not report["metrics"]:
            raise UserError(f"{args.qrels}: no query of the run has judgements, so there is nothing to score")
        counts = report["num_queries"]
        _warn_coverage(args.qrels, "judged", counts["judged"], counts["judged"] - counts["judged_not_in_run"])
    if answers is not None:
        report["answer_metrics"] = _score_answers(args, run, answers, langs)
    if args.output_run:
        write_run(args.output_run, run, args.run_tag)
    if qrels is not None:
        print(format_table(report["metrics"], metrics))
    if answers is not None:
        summary = report["answer_metrics"]
        print(format_table(summary, [m for m in next(iter(summary.values())) if m != "num_queries"]))
    if args.report:
        write_report(args.report, report)


# --- checks before anything runs -----------------------------------------------------------------


def _checked_search_options(args, k: int) -> IndexSpec:
    """The index settings, every number range-checked (UserError naming the option)."""
    spec = _index_spec(args)
    spec.validate(k)
    check_positive("block_rows", args.block_rows)
    check_positive("query_batch", args.query_batch)
    if any(c.isspace() for c in args.run_tag) or not args.run_tag:
        raise UserError(f"--run-tag: expected a non-empty word without spaces, got {args.run_tag!r}")
    return spec


def _input_path(option: str, path, directory: bool = False) -> None:
    """UserError unless `path` exists and is a directory (`directory`) or a file."""
    path = Path(path)
    what = "directory" if directory else "file"
    if not path.exists():
        raise UserError(f"{option} {path}: {what} not found")
    if path.is_dir() != directory:
        raise UserError(f"{option} {path}: expected a {what}, got a {'file' if directory else 'directory'}")


def _output_path(option: str, path, inputs: list[tuple[str, str]], emb_dirs: list[tuple[str, str]],
                 overwrite: bool) -> None:
    """UserError unless output file `path` may be written by the rule of every command (`outputs`: never
    an input or an earlier output, an existing file only with --overwrite), nor inside an embeddings
    directory: writing it would destroy what is about to be read."""
    for dir_option, emb_dir in emb_dirs:
        if Path(path).resolve().parent == Path(emb_dir).resolve():
            raise UserError(f"{option} {path}: is inside the embeddings directory of {dir_option}; "
                            "choose another output file (nothing was written)")
    check_output_file(path, option, inputs, overwrite)


def _score_answers(args, run, answers, langs) -> dict:
    """Per-language answer metrics of `run` against `answers`; texts from --passages, languages from
    --queries or the answers file's `lang`."""
    if not langs:
        langs = {qid: lang for _, qid, _, lang in query_records(args.answers, "xor" if _is_xor(args.answers)
                                                                else "jsonl", args.lang)}
    needed = {d for qid in answers if qid in run for d in run[qid]}
    passages = read_passage_texts(args.passages, needed)
    missing = needed - passages.keys()
    if missing:
        raise UserError(f"{args.passages}: expected every docid of the run, missing {len(missing)} "
                        f"(e.g. {sorted(missing)[0]!r})")
    per_question = answer_metrics(run, answers, passages)
    if not per_question:
        raise UserError(f"{args.answers}: no question of the run has answers, so there is nothing to score")
    _warn_coverage(args.answers, "answered", len(answers), len(per_question))
    return aggregate_answers(per_question, langs, args.lang)


def _warn_coverage(path, what: str, total: int, covered: int) -> None:
    """One warning when the run leaves out some of the scored file's queries: they are left out of every
    average (trec_eval's default), so a run of 1 query in 8 can score 1.0."""
    if covered < total:
        log.warning("%s: the run covers %d of the %d %s queries (%.0f%%); the %d others are left out of every "
                    "average, not scored 0 (trec_eval's default; its -c would count them)", path, covered, total,
                    what, 100 * covered / total, total - covered)


def _is_xor(path) -> bool:
    from ..formats import io

    return "question" in (io.first_record(path) or {})
