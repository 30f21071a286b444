"""The bad-input catalogue: every case ends with exit status 2 and one readable line naming the file,
line or field and what was expected; no traceback; nothing in the output directory is damaged."""

import json
import sys
from pathlib import Path

import pytest
from helpers_cli import assert_clean_failure
from helpers_data import good_files, ir_records, write_jsonl
from helpers_launch import run
from helpers_train import train_args


def replace_line(path: Path, line_no: int, text: str | bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_no - 1] = (text.encode() if isinstance(text, str) else text) + b"\n"
    path.write_bytes(b"".join(lines))


def ir_line(**changes) -> str:
    record = ir_records(1)[0]
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


# (case id, how to break the good files / config, the message expected on stderr)
CASES = [
    ("malformed-json", lambda f: replace_line(f["train_ir"], 3, '{"query_id": "q2", "query": '),
     "ir.jsonl, line 3: not valid JSON"),
    ("missing-field", lambda f: replace_line(f["train_ir"], 4, ir_line(query=...)),
     "ir.jsonl, line 4: field 'query': missing; expected a non-empty string"),
    ("mistyped-field", lambda f: replace_line(f["train_ir"], 2, ir_line(positive_passages="d1")),
     "ir.jsonl, line 2: field 'positive_passages': expected a list"),
    ("empty-query", lambda f: replace_line(f["train_ir"], 5, ir_line(query="  ")),
     "ir.jsonl, line 5: field 'query': expected a non-empty string, got an empty one"),
    ("empty-passage", lambda f: replace_line(f["train_ir"], 6, ir_line(
        positive_passages=[{"docid": "d1", "title": "", "text": ""}])),
     "ir.jsonl, line 6: field 'text': expected a non-empty string"),
    ("no-positives", lambda f: replace_line(f["train_ir"], 7, ir_line(positive_passages=[])),
     "ir.jsonl, line 7: field 'positive_passages': expected at least one positive passage"),
    ("non-utf8", lambda f: replace_line(f["parallel"], 2, b'{"en": "a", "text": "\xff\xfe", "lang": "de"}'),
     "parallel.jsonl, line 2: not valid UTF-8"),
    ("unknown-language", lambda f: replace_line(f["parallel"], 3, '{"en": "a b", "text": "c d", "lang": "xx-klingon"}'),
     "parallel.jsonl, line 3: field 'lang': expected a language code such as 'de' or 'pt-br'"),
    ("mono-not-object", lambda f: replace_line(f["monolingual"], 1, '["text", "de"]'),
     "mono.jsonl, line 1: expected a JSON object"),
    ("empty-file", lambda f: f["monolingual"].write_text(""),
     "mono.jsonl: no valid monolingual records (empty file?)"),
    ("missing-file", lambda f: f["parallel"].unlink(), "parallel.jsonl: file not found (given as data.parallel)"),
    ("no-negatives", lambda f: write_jsonl(f["train_ir"], ir_records(16, num_negatives=0)),
     "ir.jsonl: query q0 has no negative_passages, but data.train_group_size=2 needs 1"),
]

CONFIG_CASES = [
    ("unknown-key", ["loss.temprature=0.1"], "did you mean 'loss.temperature'"),
    ("negative-lr", ["train.lr=-1e-5"], "train.lr: expected a positive number"),
    ("zero-temperature", ["loss.temperature=0"], "loss.temperature: expected a positive number"),
    ("chunk-larger-than-batch", ["train.chunk_size=999"], "train.chunk_size: expected at most the largest"),
    ("wrong-type", ["train.max_steps=ten"], "train.max_steps: expected int, got 'ten'"),
    ("bad-choice", ["model.pooling=max"], "model.pooling: expected one of cls, mean, got 'max'"),
    ("override-syntax", ["lr=1e-5"], "override 'lr=1e-5': expected section.key=value"),
    ("unknown-section", ["optim.lr=1"], "unknown section 'optim'"),
    ("missing-parallel-data", ["data.parallel=null"], "data.parallel: expected a parallel-sentences jsonl"),
    ("empty-output-dir", ["train.output_dir="], "train.output_dir: expected a folder for the run's checkpoints"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,break_files,message", CASES, ids=[c[0] for c in CASES])
def test_bad_training_data(tmp_path, tiny_model_dir, case, break_files, message):
    files = good_files(tmp_path / "data")
    break_files(files)
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, {k: str(v) for k, v in files.items()}, out,
                                            "train.max_steps=2", "train.backend=ddp")], expect_rc=None)
    assert_clean_failure(proc, message)
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("case,overrides,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, tiny_model_dir, training_data, case, overrides, message):
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, training_data, out, *overrides)], expect_rc=None)
    assert_clean_failure(proc, message)
    assert not out.exists()


def test_bad_yaml_and_missing_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert_clean_failure(run([sys.executable, "-m", "dist_lacl.cli", "train", "--config", str(bad)],
                             expect_rc=None), "bad.yaml: not valid YAML")
    assert_clean_failure(run([sys.executable, "-m", "dist_lacl.cli", "train", "--config", str(tmp_path / "no.yaml")],
                             expect_rc=None), "no.yaml: config file not found")


def test_help_and_refused_options_import_no_torch(tmp_path):
    """The parser and the option/config checks come before torch, transformers and datasets: a typo is
    answered at once, not after seconds of imports (nor a model load)."""
    probe = ("import sys\nfrom dist_lacl.cli import main\nrc = main(sys.argv[1:])\n"
             "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'faiss') if m in sys.modules)\n"
             "print('imported:', heavy, 'rc:', rc)\n")
    script = tmp_path / "probe.py"
    script.write_text(probe)
    missing = str(tmp_path / "missing.tsv")
    for argv in (["train", "--config", "configs/demo.yaml", "train.lr=fast"],
                 ["evaluate", "--run", missing, "--qrels", missing],
                 ["search", "--query-emb", missing, "--corpus-emb", missing, "--output", missing, "--k", "0"]):
        proc = run([sys.executable, str(script), *argv], expect_rc=None)
        assert proc.stdout.strip().endswith("imported: [] rc: 2"), (argv, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "error:" in proc.stderr, (argv, proc.stderr)
    proc = run([sys.executable, "-c", "import sys\nfrom dist_lacl.cli import build_parser\nbuild_parser()\n"
                "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'faiss') if m in sys.modules))"])
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_deepspeed_config_contradicting_run_config(tmp_path, tiny_model_dir, training_data):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    proc = run([sys.executable, *train_args(tiny_model_dir, training_data, tmp_path / "run",
                                            f"train.deepspeed_config={ds}")], expect_rc=None)
    assert_clean_failure(proc, "'train_batch_size' is 64 but the run config gives 8 (train.ir_batch_size)")


@pytest.mark.slow
def test_tokenizer_larger_than_model_vocabulary(tmp_path, tiny_model_dir, training_data):
    model_dir = tmp_path / "small-vocab"
    model_dir.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["vocab_size"] = 50
    (model_dir / "config.json").write_text(json.dumps(config))
    proc = run([sys.executable, *train_args(model_dir, training_data, tmp_path / "run", "model.random_init=true",
                                            f"model.tokenizer={tiny_model_dir}")], expect_rc=None)
    assert_clean_failure(proc, "embedding rows; use the tokenizer the model was trained with")


@pytest.mark.slow
def test_output_dir_holding_another_run_is_refused_and_untouched(tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=2")], timeout=300)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = run([sys.executable, *train_args(tiny_model_dir, training_data, out, "train.max_steps=4",
                                            "loss.temperature=0.1")], expect_rc=None)
    assert_clean_failure(proc, "the output directory holds another run (loss.temperature: 0.05 -> 0.1)")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_clean_failure(run([sys.executable, *train_args(tiny_model_dir, training_data, foreign)], expect_rc=None),
                         "is not empty and holds no dist-lacl run")


@pytest.mark.slow
def test_bad_records_skip_policy_counts_and_continues(tmp_path, tiny_model_dir):
    files = good_files(tmp_path / "data")
    replace_line(files["train_ir"], 3, "{not json")
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, {k: str(v) for k, v in files.items()}, out,
                                            "train.max_steps=1", "data.bad_records=skip")], timeout=300)
    assert "ir.jsonl: skipped 1 malformed records" in proc.stderr
