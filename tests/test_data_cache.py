"""The data cache when something else goes wrong: a rewritten file keeping its size and mtime, a damaged
or incomplete cache, an unusable cache root, a build killed with kill -9. Each ends in the right data,
or in one line and exit 2; the user's files are never changed."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers_cli import assert_clean_failure
from helpers_data import good_files, ir_records, write_jsonl
from helpers_launch import REPO, launch_env, run
from helpers_train import train_args

from dist_lacl.data import cache_parts
from dist_lacl.data.read import cache_entry, features, load_dataset, read_records


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ the key


@pytest.mark.parametrize("how", ["in-place", "renamed-over"])
def test_a_rewrite_with_the_same_size_and_mtime_builds_a_new_cache(tmp_path, how):
    """`touch -r` after rewriting (or `mv` of a copy made with `cp -p`) kept the old key of size and mtime."""
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(8))
    root = tmp_path / "cache"
    assert load_dataset(path, "ir", root)["query_id"][:2] == ["q0", "q1"]
    before = path.stat()
    lines = path.read_bytes().splitlines(keepends=True)
    rewritten = b"".join([lines[1], lines[0], *lines[2:]])  # the same bytes in another order
    if how == "in-place":
        with open(path, "r+b") as f:
            f.write(rewritten)
    else:
        (tmp_path / "new.jsonl").write_bytes(rewritten)
        os.replace(tmp_path / "new.jsonl", path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert load_dataset(path, "ir", root)["query_id"][:2] == ["q1", "q0"]
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 2


# ------------------------------------------------------------------ damage


def batch_ends(part: Path) -> list[int]:
    """The byte offset after each message of an Arrow stream (schema, record batches)."""
    with pa.OSFile(str(part)) as f:
        reader, ends = pa.ipc.MessageReader.open_stream(f), []
        while True:
            try:
                reader.read_next_message()
            except StopIteration:
                return ends
            ends.append(f.tell())


def cut(at):
    def damage(entry):
        part = entry.dir / entry.manifest()["parts"][0]
        part.write_bytes(part.read_bytes()[:at(batch_ends(part))])
    return damage


DAMAGE = {
    "cut-at-a-record-batch-boundary": (cut(lambda ends: ends[2]), "bytes, the manifest says"),
    "cut-inside-a-record-batch": (cut(lambda ends: ends[2] + 50), "bytes, the manifest says"),
    "part-deleted": (lambda e: (e.dir / e.manifest()["parts"][0]).unlink(), "part-00000.arrow is missing"),
    "manifest-garbage": (lambda e: (e.dir / "MANIFEST.json").write_text("{not json"), "MANIFEST.json is unreadable"),
    "manifest-deleted": (lambda e: (e.dir / "MANIFEST.json").unlink(), "MANIFEST.json is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_cache_is_rebuilt_with_one_line_saying_why(tmp_path, monkeypatch, caplog, case):
    monkeypatch.setattr(cache_parts, "RECORD_BATCH_ROWS", 10)  # several record batches in a tiny part
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(35))
    root, original = tmp_path / "cache", digest(path)
    expected = load_dataset(path, "ir", root, num_proc=1).to_list()
    entry = cache_entry(path, "ir", root)[0]
    damage, reason = DAMAGE[case]
    damage(entry)
    with caplog.at_level(logging.WARNING):
        assert load_dataset(path, "ir", root, num_proc=1).to_list() == expected
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"the data cache in {entry.dir} is damaged (" in line and reason in line and "rebuilding it" in line
    assert entry.ready() and digest(path) == original
    assert sorted(p.name for p in root.iterdir()) == [entry.name]  # nothing of the damaged one left


def test_a_part_cut_at_a_record_batch_boundary_holds_fewer_rows_and_is_not_used(tmp_path, monkeypatch):
    """Why bytes alone are checked first: such a part still opens in Arrow, silently shorter."""
    monkeypatch.setattr(cache_parts, "RECORD_BATCH_ROWS", 10)
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(35))
    load_dataset(path, "ir", tmp_path / "cache", num_proc=1)
    entry = cache_entry(path, "ir", tmp_path / "cache")[0]
    cut(lambda ends: ends[2])(entry)
    part = entry.dir / entry.manifest()["parts"][0]
    with pa.memory_map(str(part)) as source:
        assert sum(b.num_rows for b in pa.ipc.open_stream(source)) == 20
    assert "part-00000.arrow has" in entry.defect() and not entry.ready()


@pytest.mark.slow
def test_resume_with_a_damaged_cache_rebuilds_it_and_does_not_blame_the_data(tmp_path, tiny_model_dir):
    files = {k: str(v) for k, v in good_files(tmp_path / "data").items()}
    originals = {k: digest(Path(v)) for k, v in files.items()}
    root, out = tmp_path / "cache", tmp_path / "run"
    common = ["train.save_every=1", "train.backend=ddp", f"data.cache_dir={root}"]
    run([sys.executable, *train_args(tiny_model_dir, files, out, "train.max_steps=1", *common)], timeout=300)
    entry = cache_entry(files["train_ir"], "ir", root)[0]
    cut(lambda ends: ends[0])(entry)  # at the first boundary: the schema only, 0 rows
    proc = run([sys.executable, *train_args(tiny_model_dir, files, out, "train.max_steps=2", *common)], timeout=300)
    assert "resumed from" in proc.stderr
    damaged = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and "part-00000.arrow has" in damaged[0] and "rebuilding it" in damaged[0]
    assert "the data now has" not in proc.stderr and "Traceback" not in proc.stderr
    assert {k: digest(Path(v)) for k, v in files.items()} == originals


# ------------------------------------------------------------------ the cache root


def test_a_cache_root_that_is_a_file_is_one_line_naming_it(tmp_path, tiny_model_dir):
    files = {k: str(v) for k, v in good_files(tmp_path / "data").items()}
    root = tmp_path / "cache"
    root.write_text("my notes")
    out = tmp_path / "run"
    proc = run([sys.executable, *train_args(tiny_model_dir, files, out, "train.max_steps=1", "train.backend=ddp",
                                            f"data.cache_dir={root}")], expect_rc=None)
    assert_clean_failure(proc, f"the data cache root {root} (data.cache_dir) is a file, not a folder")
    assert root.read_text() == "my notes"
    # The same through $DIST_LACL_CACHE, a folder below the file:
    proc = run([sys.executable, *train_args(tiny_model_dir, files, out, "train.max_steps=1", "train.backend=ddp")],
               expect_rc=None, DIST_LACL_CACHE=root / "below")
    assert_clean_failure(proc, f"the data cache root {root / 'below'} ($DIST_LACL_CACHE) cannot be written")


def test_a_read_only_cache_root_is_one_line_naming_it_and_a_finished_cache_there_is_used(tmp_path, tiny_model_dir):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root and mount rights)")
    try:
        files = {k: str(v) for k, v in good_files(tmp_path / "data").items()}
        root = mnt / "cache"
        load_dataset(files["train_ir"], "ir", root)  # a finished cache, for the second half
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        args = train_args(tiny_model_dir, files, tmp_path / "run", "train.max_steps=1", "train.backend=ddp",
                          f"data.cache_dir={root}")
        proc = run([sys.executable, *args], expect_rc=None)
        assert_clean_failure(proc, f"the data cache root {root} (data.cache_dir) cannot be written "
                                   "(Read-only file system)")
        assert "failure marker" not in proc.stderr
        assert len(load_dataset(files["train_ir"], "ir", root)) == 16  # a finished cache needs no write
    finally:
        subprocess.run(["umount", str(mnt)])


# ------------------------------------------------------------------ a killed build


BUILD = """
import sys
from dist_lacl.data.read import load_dataset
load_dataset(sys.argv[1], "ir", sys.argv[2], num_proc=1)
"""


def test_a_build_killed_with_kill_9_is_taken_over_at_once(tmp_path, caplog):
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(8))
    root, original = tmp_path / "cache", digest(path)
    entry = cache_entry(path, "ir", root)[0]
    builder = subprocess.Popen([sys.executable, "-c", BUILD, str(path), str(root)], cwd=REPO,
                               env=launch_env(DIST_LACL_TEST_CACHE_DELAY_S=600), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (entry.lock / "progress.json").exists():  # parts built: it sleeps before publishing
        assert time.time() < deadline and builder.poll() is None
        time.sleep(0.2)
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    owner = json.loads((entry.lock / "owner.json").read_text())
    assert owner["pid"] == builder.pid
    start = time.time()
    with caplog.at_level(logging.WARNING):
        entry.build(features("ir"), read_records, 1, "n2", stale_s=120)
    assert time.time() - start < 10  # not stale_s: the owner is known to be dead
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"is gone (pid {builder.pid} on this host is not running); taking it over" in line
    assert entry.ready() and len(entry.load()) == 8 and digest(path) == original
    assert sorted(p.name for p in root.iterdir()) == [entry.name]  # the killed build's leftovers removed


def test_a_lock_of_a_live_process_or_another_host_is_not_taken_over(tmp_path):
    path = write_jsonl(tmp_path / "ir.jsonl", ir_records(4))
    entry = cache_entry(path, "ir", tmp_path / "cache")[0]
    from dist_lacl.data import cache_lock

    entry.lock.mkdir(parents=True)
    (entry.lock / "heartbeat").touch()
    owner = {**cache_lock._identity(), "pid": os.getpid(), "start": cache_lock._proc(os.getpid())[1]}
    elsewhere = [{**owner, "host": "elsewhere", "pid": 2**22 + 1}, {**owner, "pid_ns": "pid:[1]", "pid": 2**22 + 1}]
    for who in (owner, *elsewhere):
        (entry.lock / "owner.json").write_text(json.dumps(who))
        assert cache_lock.owner_gone(entry.lock) is None
        assert not cache_lock.take(entry.lock, "n", stale_s=120, source=path) and entry.lock.exists()
    (entry.lock / "owner.json").write_text(json.dumps({**owner, "start": "1"}))  # the pid reused since
    assert "is another process now" in cache_lock.owner_gone(entry.lock)
