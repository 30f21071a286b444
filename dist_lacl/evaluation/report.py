"""Outputs of an evaluation: the TREC run file, the JSON report and the per-language table."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import Run, rank_docs
from .shards import write_file


def write_run(path: str | Path, run: Run, tag: str = "dist-lacl") -> None:
    """`query_id Q0 docid rank score tag` lines, ranks in trec_eval's order (so file and metrics agree).

    Scores are written with 9 significant digits, enough to give back every float32 exactly, so no
    ties appear that the search did not produce. Written to a temporary name, then renamed; a failed
    write leaves nothing behind.
    """
    if any(c.isspace() for c in tag) or not tag:
        raise ValueError(f"run tag must be a non-empty word, got {tag!r}")

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8")
        for qid, scores in run.items():
            for rank, docid in enumerate(rank_docs(scores), 1):
                text.write(f"{qid} Q0 {docid} {rank} {scores[docid]:.9g} {tag}\n")
        text.flush()
        text.detach()  # leave `f` open for write_file's fsync

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, write)


def write_report(path: str | Path, report: Mapping) -> None:
    """The report as indented JSON (non-ASCII language names kept readable), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: f.write((json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode()))


def format_table(summary: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """One row per language, then `macro` and `all`; columns: number of queries, then each metric.

    `summary` is `metrics.aggregate`'s output. For `macro` the count column is the number of languages.
    A metric a group does not define (None: `answers.aggregate_answers`) shows as n/a.
    """
    header = ["lang", "queries", *metrics]
    rows = [[group, str(int(values["num_queries"])),
             *(f"{values[m]:.4f}" if values[m] is not None else "n/a" for m in metrics)]
            for group, values in summary.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    body = [line(r) for r in rows]
    # a rule above the averages separates them from the languages
    return "\n".join([line(header), rule, *body[:-2], rule, *body[-2:]])
