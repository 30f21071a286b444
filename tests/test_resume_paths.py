"""Paths in a run's config mean the same files from anywhere: relative paths are resolved when the config is
built, so a resume from another working directory cannot silently train on other files, one file spelled
two ways is one file, and a run directory moved elsewhere is still its run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers_cli import assert_clean_failure
from helpers_launch import launch_env

from dist_lacl.config import load_config

REPO = Path(__file__).resolve().parents[1]


def train(cwd, model, out, train_ir, *extra):
    cmd = [sys.executable, "-m", "dist_lacl.cli", "train", f"model.name_or_path={model}", "model.pooling=mean",
           f"data.train_ir={train_ir}", "data.parallel=data/parallel.jsonl", "data.monolingual=data/mono.jsonl",
           "data.train_group_size=2", f"train.output_dir={out}", "train.ir_batch_size=8",
           "train.parallel_batch_size=8", "train.monolingual_batch_size=8", "train.chunk_size=4",
           "train.num_threads=1", *extra]
    return subprocess.run(cmd, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_relative_paths_are_resolved_and_resume_follows_the_files(tmp_path, tiny_model_dir, training_data):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for folder in (here, elsewhere):  # two working directories, each with its own data/ (other text there)
        (folder / "data").mkdir(parents=True)
        for name, key in (("ir.jsonl", "train_ir"), ("parallel.jsonl", "parallel"), ("mono.jsonl", "monolingual")):
            shutil.copy(training_data[key], folder / "data" / name)
    (elsewhere / "data" / "ir.jsonl").write_text((here / "data" / "ir.jsonl").read_text().replace("title", "heading"))

    first = train(here, tiny_model_dir, "run", "data/ir.jsonl", "train.max_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = yaml.safe_load((here / "run" / "config.yaml").read_text())
    assert saved["data"]["train_ir"] == str((here / "data" / "ir.jsonl").resolve())
    assert saved["train"]["output_dir"] == str((here / "run").resolve())

    # The same file spelled another way resumes.
    again = train(here, tiny_model_dir, "run", "data/../data/ir.jsonl", "train.max_steps=2")
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-3000:]

    # The run directory moved: still the same run, resumed from its new place.
    shutil.move(here / "run", here / "moved")
    moved = train(here, tiny_model_dir, "moved", str(here / "data" / "ir.jsonl"), "train.max_steps=3")
    assert moved.returncode == 0 and "resumed from" in moved.stderr, moved.stderr[-3000:]

    # From another directory `data/ir.jsonl` is another file: refused, naming both, nothing changed.
    before = sorted(p.name for p in (here / "moved" / "checkpoints").iterdir())
    other = train(elsewhere, tiny_model_dir, here / "moved", "data/ir.jsonl", "train.max_steps=4")
    assert_clean_failure(other, f"data.train_ir: '{here / 'data' / 'ir.jsonl'}' -> '{elsewhere / 'data' / 'ir.jsonl'}'")
    assert sorted(p.name for p in (here / "moved" / "checkpoints").iterdir()) == before

    # The training file rewritten in place (as many records): the resume says so, naming the file.
    ir = here / "data" / "ir.jsonl"
    ir.write_text(ir.read_text().replace("title", "heading"))
    edited = train(here, tiny_model_dir, "moved", "data/ir.jsonl", "train.max_steps=4")
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert f"data.train_ir: {ir} changed since the checkpoint was saved" in edited.stderr

    # A finished run started again with fewer steps: says so and rewrites no checkpoint.
    stamps = {p: p.stat().st_mtime_ns for p in (here / "moved" / "checkpoints").rglob("*")}
    done = train(here, tiny_model_dir, "moved", "data/ir.jsonl", "train.max_steps=1")
    assert done.returncode == 0 and "already at step 4, train.max_steps is 1: nothing to train" in done.stderr
    assert "changed since" not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in (here / "moved" / "checkpoints").rglob("*")} == stamps


def test_an_empty_override_is_the_empty_text():
    cfg = load_config(None, ["data.train_ir=x.jsonl", "loss.semantic_weight=0", "loss.language_weight=0",
                             "model.query_prefix=", "model.passage_prefix="])
    assert cfg.model.query_prefix == cfg.model.passage_prefix == ""


def test_the_deepspeed_config_is_resolved_once(tmp_path, monkeypatch):
    """A relative DeepSpeed config is the file in the working directory, else the repository's shipped
    one; either way the saved config names it absolutely, so a resume elsewhere reads the same file."""
    base = ["data.train_ir=x.jsonl", "loss.semantic_weight=0", "loss.language_weight=0"]
    monkeypatch.chdir(tmp_path)
    shipped = load_config(None, base).train.deepspeed_config
    assert shipped == str(REPO / "ds_configs" / "zero2_fp32_cpu.json")
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2_fp32_cpu.json").write_text("{}")
    assert load_config(None, base).train.deepspeed_config == str(tmp_path / "ds_configs" / "zero2_fp32_cpu.json")
