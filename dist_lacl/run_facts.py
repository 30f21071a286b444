"""What a run directory records for its model card: the data it trained on and each dev evaluation.

`data.json` (rank 0, at every start): per stream, its files' names, its valid records and its languages.
`metrics.jsonl` (rank 0, after every train.eval_every evaluation): one line {"step", "metrics"}. After a
resume a step may appear twice (a crashed run evaluated past its last checkpoint): the later line wins.
Both are plain JSON, read without TensorBoard; a fact they lack is left out of the card, never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text
from .checkpoint import has_complete_checkpoint

DATA = "data.json"
METRICS = "metrics.jsonl"

_PATHS = {"ir": "train_ir", "parallel": "parallel", "monolingual": "monolingual"}
"""Each training stream's data.* setting."""


def record_data(run_dir: Path, data_cfg, data) -> None:
    """Write `run_dir`/data.json: for each of `data`'s streams (a data.batches.TrainBatches), {files,
    records, languages (where the data has a lang column)}. A run starting afresh also drops the
    evaluations of an attempt that left no checkpoint (they were not this run's)."""
    if not has_complete_checkpoint(Path(run_dir) / "checkpoints"):
        (Path(run_dir) / METRICS).unlink(missing_ok=True)
    summary = {}
    for name, stream in data.streams.items():
        paths = getattr(data_cfg, _PATHS.get(name, name), None)
        # data.train_ir may be a list of datasets (config_ir.IRSource entries): their paths.
        paths = [paths] if isinstance(paths, str) else [getattr(p, "path", p) for p in paths or []]
        entry = {"files": [Path(p).name for p in paths], "records": int(stream.num_examples)}
        dataset = getattr(data, name, None)  # the stream's Arrow dataset
        if "lang" in getattr(dataset, "column_names", ()):
            entry["languages"] = sorted(str(x) for x in dataset.data.column("lang").unique().to_pylist())
        summary[name] = entry
    write_text(Path(run_dir) / DATA, json.dumps(summary, indent=1))


def record_eval(run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Append one evaluation to `run_dir`/metrics.jsonl (a torn last line is skipped when read)."""
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")


def read_data(run_dir: Path | None) -> dict | None:
    """data.json of `run_dir`, None where there is none (a run from before it, or a checkpoint alone)."""
    path = Path(run_dir) / DATA if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def read_evals(run_dir: Path | None, up_to_step: int | None = None) -> dict[int, dict[str, float]]:
    """{step: metrics} of every recorded evaluation (at or before `up_to_step`), the later line per step."""
    path = Path(run_dir) / METRICS if run_dir else None
    if path is None or not path.is_file():
        return {}
    evals = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            step, metrics = int(row["step"]), dict(row["metrics"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-write
        if up_to_step is None or step <= up_to_step:
            evals[step] = metrics
    return evals
