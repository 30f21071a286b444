"""The `encode`, `search` and `evaluate` subcommands; `add_parsers` registers them on `dist-lacl`'s parser."""

from __future__ import annotations

import argparse
import logging

from .. import distributed as dist
from ..errors import UserError
from .answers import aggregate_answers, answer_metrics
from .encode import encode_to_shards, resolve_dtype
from .evaluate import DEFAULT_METRICS, score_run, search_embeddings
from .index import GPU_MODES, INDEX_KINDS, IndexSpec
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
from .metrics import max_cutoff, parse_metrics
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
    encode.add_argument("--output", required=True, help="directory for emb-<rank>-of-<world>.npy and ids-*.json")
    encode.add_argument("--max-len", type=int, help="tokens per text (default 32 for queries, 128 for a corpus)")
    encode.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default 128)")
    encode.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 (else fp16) on GPU, fp32 on CPU")
    encode.add_argument("--no-length-sort", action="store_true",
                        help="batch texts in file order instead of by token length")
    encode.add_argument("--dist-timeout-s", type=int, default=1800, help="collective timeout in seconds")
    encode.set_defaults(func=run_encode)

    search = subparsers.add_parser("search", help="search query embeddings against corpus embeddings -> TREC run")
    _add_search_args(search, required=True)
    search.add_argument("--output", required=True, help="TREC run file to write")
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
                        help="corpus rows per index block, merged exactly (default: what fits in GPU memory; "
                             "on CPU one block per shard)")
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
    from ..export import load_model

    if args.batch_size < 1 or (args.max_len is not None and args.max_len < 2):
        raise UserError("--batch-size, --max-len: expected a positive batch size and at least 2 tokens")
    dist.init_process_group(args.dist_timeout_s)
    records = read_queries(args.input) if args.kind == "queries" else read_corpus(args.input)
    tower, default_len = ("query", 32) if args.kind == "queries" else ("passage", 128)
    model, tokenizer = load_model(args.model)
    device = dist.device()
    model.to(device)
    encoded = encode_to_shards(model, tokenizer, records, args.output, tower, args.max_len or default_len,
                               args.batch_size, dtype=resolve_dtype(args.dtype, device), device=device,
                               sort_by_length=not args.no_length_sort)
    log.info("rank %d of %d: %s its shard of the %d %s in %s", dist.rank(), dist.world_size(),
             "encoded" if encoded else "found complete", len(records), args.kind, args.output)


def run_search(args) -> None:
    run, _ = search_embeddings(args.query_emb, args.corpus_emb, args.k, _index_spec(args), args.block_rows,
                               args.query_batch)
    write_run(args.output, run, args.run_tag)
    log.info("wrote %s (%d queries, k=%d)", args.output, len(run), args.k)


def run_evaluate(args) -> None:
    metrics = parse_metrics(args.metrics)
    if not args.qrels and not args.answers:
        raise UserError("evaluate: expected --qrels FILE, or --answers FILE (with --passages) to score answers")
    if bool(args.answers) != bool(args.passages):
        raise UserError("--answers, --passages: give both (the questions' answers and the corpus to look them up in)")
    queries = read_queries(args.queries, args.lang) if args.queries else None
    answers = read_answers(args.answers) if args.answers else None
    if args.run:
        if args.query_emb or args.corpus_emb:
            raise UserError("--run: give either a run file or --query-emb and --corpus-emb, not both")
        run, doc_ids = read_run(args.run), None
    elif args.query_emb and args.corpus_emb:
        k = args.k or max_cutoff(metrics)
        if k < max_cutoff(metrics):
            raise UserError(f"--k: expected at least {max_cutoff(metrics)}, the largest metric cutoff, got {k}")
        run, doc_ids = search_embeddings(args.query_emb, args.corpus_emb, k, _index_spec(args), args.block_rows,
                                         args.query_batch)
    else:
        raise UserError("evaluate: expected --run FILE, or --query-emb DIR and --corpus-emb DIR to search")
    langs = dict(zip(queries.ids, queries.langs)) if queries else {}
    report = {}
    if args.qrels:
        query_ids = queries.ids if queries else (None if args.run else list(run))
        qrels = read_qrels(args.qrels, query_ids, doc_ids)
        report = score_run(run, qrels, metrics, langs, args.lang)
        if not report["metrics"]:
            raise UserError(f"{args.qrels}: no query of the run has judgements, so there is nothing to score")
    if answers is not None:
        report["answer_metrics"] = _score_answers(args, run, answers, langs)
    if args.output_run and not args.run:
        write_run(args.output_run, run, args.run_tag)
    if args.qrels:
        print(format_table(report["metrics"], metrics))
    if answers is not None:
        summary = report["answer_metrics"]
        print(format_table(summary, [m for m in next(iter(summary.values())) if m != "num_queries"]))
    if args.report:
        write_report(args.report, report)


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
    return aggregate_answers(per_question, langs, args.lang)


def _is_xor(path) -> bool:
    from ..formats import io

    return "question" in (io.first_record(path) or {})
