"""Commands misused as a stranger would: every case ends with exit 2 and one readable line (or, for the
run directory, the documented behaviour), and nothing the user owns is changed or lost.

Covers `export` and `data` outputs, unusable tokenizers, lengths past the model's positions, numeric
options out of range, Ctrl-C, two trainings in one directory, a run that died before its first
checkpoint, and a checkpoint that outlives its base model folder.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_cli import assert_clean_failure
from helpers_launch import REPO, launch_env, run
from helpers_train import read_log_until_step, train_args

from dist_lacl.checkpoint import verify

CLI = [sys.executable, "-m", "dist_lacl.cli"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its content hash: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("months of work")
    (path / "data").mkdir(exist_ok=True)
    (path / "data" / "results.csv").write_text("1,2,3\n")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir, training_data):
    """A 2-step run trained from a copy of the tiny model whose folder is then moved away: the checkpoint
    must be self-contained."""
    root = tmp_path_factory.mktemp("trained")
    base = root / "base-model"
    shutil.copytree(tiny_model_dir, base)
    out = root / "run"
    run([*CLI, *train_args(base, training_data, out, "train.max_steps=2", "train.backend=ddp")[2:]], timeout=300)
    base.rename(root / "moved-away")
    return out


# ---------------------------------------------------------------------------------------- export

@pytest.mark.slow
def test_export_refuses_folders_it_did_not_write_and_works_after_the_base_model_moved(tmp_path, trained_run):
    home = user_folder(tmp_path / "home")
    other = user_folder(tmp_path / "other")
    (tmp_path / "file.txt").write_text("a file")
    before = {"home": snapshot(home), "other": snapshot(other), "run": snapshot(trained_run)}

    def export(*args, cwd=REPO, **env):
        return subprocess.run([*CLI, "export", str(trained_run), *args], capture_output=True, text=True,
                              cwd=cwd, env=launch_env(**env), timeout=300)

    assert_clean_failure(export("--output", ".", cwd=home), "is not empty and is not a previous output")
    assert_clean_failure(export("--output", "~", HOME=str(home)), "is not empty and is not a previous output")
    assert_clean_failure(export("--output", str(other)), "is not empty and is not a previous output")
    assert_clean_failure(export("--output", str(trained_run)), "is (or contains) the input")
    assert_clean_failure(export("--output", str(tmp_path / "file.txt")), "is a file; expected a folder")
    assert before == {"home": snapshot(home), "other": snapshot(other), "run": snapshot(trained_run)}
    assert (tmp_path / "file.txt").read_text() == "a file"

    out = tmp_path / "exported"
    assert export("--out", str(out)).returncode == 0  # the old spelling still works
    assert (out / "config.json").is_file() and (out / "dist_lacl.json").is_file()
    assert_clean_failure(export("-o", str(out)), "holds a previous output; pass --overwrite")
    assert export("-o", str(out), "--overwrite").returncode == 0
    (out / "my-notes.txt").write_text("keep me")
    assert_clean_failure(export("-o", str(out), "--overwrite"), "holds files this command did not write (my-notes.txt)")
    assert (out / "my-notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


# ---------------------------------------------------------------------------------------- tokenizer, lengths

@pytest.mark.slow
def test_model_folder_without_tokenizer_files_is_refused(tmp_path, tiny_model_dir, training_data):
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    proc = run([*CLI, *train_args(bare, training_data, tmp_path / "run", "train.backend=ddp")[2:]], expect_rc=None)
    assert_clean_failure(proc, "the tokenizer has only 5 tokens: the folder holds no tokenizer files")
    assert not (tmp_path / "run").exists()
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\twhere is it\n")
    proc = run([*CLI, "encode", "--model", str(bare), "--input", str(queries), "--kind", "queries",
                "--output", str(tmp_path / "emb")], expect_rc=None)
    assert_clean_failure(proc, "the tokenizer has only 5 tokens")
    assert not (tmp_path / "emb").exists()


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["data.passage_max_len=4000"], "data.passage_max_len: 4000 tokens, but"),
    (["model.passage_prefix='passage: passage: passage: passage:'", "data.passage_max_len=4"],
     "data.passage_max_len: 4 tokens leave no room for text after model.passage_prefix"),
], ids=["past-positions", "prefix-fills-length"])
def test_lengths_the_model_cannot_hold_are_refused_before_training(tmp_path, tiny_model_dir, training_data,
                                                                   overrides, message):
    proc = run([*CLI, *train_args(tiny_model_dir, training_data, tmp_path / "run", "train.backend=ddp",
                                  *overrides)[2:]], expect_rc=None)
    assert_clean_failure(proc, message)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- data builders

@pytest.mark.parametrize("args,message", [
    (["python-docs", "--num-negatives", "-1"], "argument --num-negatives: expected an integer from 0 to 200, got '-1'"),
    (["python-docs", "--num-negatives", "100000000"], "expected an integer from 0 to 200"),
    (["python-docs", "--min-chars", "0"], "argument --min-chars: expected an integer from 1"),
    (["python-docs", "--min-chars", "500", "--max-chars", "100"], "--min-chars 500: expected at most --max-chars (100)"),
    (["gettext", "--min-words", "9", "--max-words", "3"], "--min-words 9: expected at most --max-words (3)"),
    (["gettext", "--cap", "-5"], "argument --cap: expected a count from 0 to 10^9"),
    (["manpages", "--seed", "-1"], "argument --seed: expected an integer from 0"),
    (["all", "--monolingual-cap", "99999999999"], "argument --monolingual-cap: expected a count from 0 to 10^9"),
], ids=["negatives-negative", "negatives-huge", "min-chars-zero", "chars-reversed", "words-reversed",
        "cap-negative", "seed-negative", "cap-huge"])
def test_data_numeric_options_are_range_checked(tmp_path, args, message):
    proc = run([*CLI, "data", args[0], "-o", str(tmp_path / "out.jsonl"), *args[1:]], expect_rc=None)
    assert_clean_failure(proc, message)
    assert list(tmp_path.iterdir()) == []


def test_data_outputs_never_replace_the_users_files(tmp_path):
    existing = tmp_path / "pairs.jsonl"
    existing.write_text("my own pairs\n")
    home = user_folder(tmp_path / "home")
    before = snapshot(tmp_path)
    assert_clean_failure(run([*CLI, "data", "gettext", "-o", str(existing), "--langs", "de"], expect_rc=None),
                         "pairs.jsonl: already exists; pass --overwrite")
    for command in ("all", "debian-faq", "debian-reference", "e5-model"):
        assert_clean_failure(run([*CLI, "data", command, "-o", str(home), "--overwrite"], expect_rc=None),
                             "is not empty and is not a previous output of this command")
    assert_clean_failure(run([*CLI, "data", "manpages", "-o", str(home)], expect_rc=None),
                         "is a folder; expected a file name")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- the run directory

def start_training(model_dir, data, out, *extra):
    """A single-process training in its own session, output merged into one pipe."""
    return subprocess.Popen([*CLI, *train_args(model_dir, data, out, "train.backend=ddp", *extra)[2:]], cwd=REPO,
                            env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_second_training_in_a_directory_is_refused_and_a_crashed_one_leaves_it_reusable(
        tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    first = start_training(tiny_model_dir, training_data, out, "train.max_steps=100000")
    try:
        read_log_until_step(first.stdout, 1)
        proc = run([*CLI, *train_args(tiny_model_dir, training_data, out, "train.backend=ddp",
                                      "train.max_steps=2")[2:]], expect_rc=None, timeout=300)
        assert_clean_failure(proc, "is in use by another training")
    finally:
        first.kill()  # a crash: no checkpoint written, the lock released by the kernel
        first.communicate()
    assert not (out / "checkpoints").exists()
    # The corrected command (another learning rate) may take the directory over: nothing was saved yet.
    run([*CLI, *train_args(tiny_model_dir, training_data, out, "train.backend=ddp", "train.max_steps=2",
                           "train.lr=1e-3")[2:]], timeout=300)
    assert "lr: 0.001" in (out / "config.yaml").read_text()
    assert verify(out / "checkpoints" / "step-0000002") is None


@pytest.mark.slow
def test_ctrl_c_checkpoints_once_and_the_run_resumes(tmp_path, tiny_model_dir, training_data):
    out = tmp_path / "run"
    # Long enough steps (128 passages in chunks of 2) that a signal lands while one is running.
    settings = ["train.save_every=1", "train.keep_last=100000", "train.ir_batch_size=32",
                "data.train_group_size=4", "train.chunk_size=2"]
    proc = start_training(tiny_model_dir, training_data, out, "train.max_steps=100000", *settings)
    logged = read_log_until_step(proc.stdout, 2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    rest, _ = proc.communicate(timeout=300)
    output = "".join(logged) + rest
    assert proc.returncode == 3, output[-3000:]
    assert "stopped by signal" in output and "Traceback" not in output
    saved = [line.split("saved ")[1].strip() for line in output.splitlines() if "dist_lacl.trainer: saved " in line]
    assert len(saved) == len(set(saved)) >= 2  # the signal's step, coinciding with save_every, saved once
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert all(verify(c) is None for c in checkpoints)

    # ... and the run resumes from its newest complete checkpoint. (A second Ctrl-C: the handler is
    # tested in-process below, the CLI's exit on KeyboardInterrupt on a long data build.)
    newest = checkpoints[-1].name
    step = int(newest.split("-")[1])
    proc = run([*CLI, *train_args(tiny_model_dir, training_data, out, "train.backend=ddp",
                                  f"train.max_steps={step + 1}", *settings)[2:]], timeout=300)
    assert f"resumed from {out / 'checkpoints' / newest} at step {step}" in proc.stderr
    json.loads((out / "checkpoints" / f"step-{step + 1:07d}" / "trainer_state.json").read_text())


def test_stop_signal_first_ctrl_c_asks_second_interrupts():
    """In-process: the handler as Python runs it (between bytecodes, right after os.kill)."""
    from dist_lacl.signals import StopSignal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        stop = StopSignal()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # at once: a launcher forwarding the same press
        time.sleep(StopSignal.SECOND_PRESS_S)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a real second press
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_ctrl_c_outside_training_exits_130_and_leaves_no_partial_output(tmp_path):
    """A KeyboardInterrupt (a second Ctrl-C in training, or the first anywhere else) is one line and exit
    130; the output of an interrupted write never appears, not even half-written."""
    out = tmp_path / "ir.jsonl"
    # SIGINT as a terminal gives it: a suite started in the background of a non-interactive shell hands its
    # children SIGINT ignored (POSIX), and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([*CLI, "data", "python-docs", "-o", str(out)], cwd=REPO, env=launch_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.wait(timeout=8)  # BM25 mining over the Python docs takes ~40 s: still running
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "dist-lacl data: interrupted; complete outputs and checkpoints are intact" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
