"""Checkpoints on several nodes: the manifest is every rank's view together, re-saving a step never
leaves zero copies, and ranks that do not share the output directory are refused at start-up."""

import json

import pytest
from helpers_launch import WORKERS, rank_results, torchrun

from dist_lacl.atomic import publish_dir
from dist_lacl.checkpoint import MANIFEST, _manifest, merge_views, verify


def write_checkpoint(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_a_file_missing_from_rank_0s_view_is_in_the_manifest_and_verify_catches_it(tmp_path):
    ckpt = write_checkpoint(tmp_path / "step-0000001", {"model.pt": b"m" * 10, "optim-rank0.pt": b"o" * 7,
                                                        "optim-rank1.pt": b"p" * 7})
    rank1_view = _manifest(ckpt)
    (ckpt / "optim-rank1.pt").unlink()  # rank 0's (network filesystem) view has not caught up
    rank0_view = _manifest(ckpt)
    assert "optim-rank1.pt" not in rank0_view
    listed = merge_views([rank0_view, rank1_view])
    assert listed == {"model.pt": 10, "optim-rank0.pt": 7, "optim-rank1.pt": 7}
    (ckpt / MANIFEST).write_text(json.dumps({"step": 1, "files": listed}))
    assert verify(ckpt) == "optim-rank1.pt is missing"
    # Rank 0's listing alone would have called the partial checkpoint complete.
    (ckpt / MANIFEST).write_text(json.dumps({"step": 1, "files": rank0_view}))
    assert verify(ckpt) is None


def test_views_disagreeing_on_a_size_keep_the_larger(tmp_path):
    assert merge_views([{"a": 5, "b": 1}, {"a": 9}]) == {"a": 9, "b": 1}


def test_resaving_a_step_keeps_a_complete_copy_until_the_new_one_is_in_place(tmp_path):
    final = write_checkpoint(tmp_path / "step-0000004", {"old.pt": b"old"})
    tmp = write_checkpoint(tmp_path / ".tmp-step-0000004", {"new.pt": b"new"})
    publish_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new.pt"] and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000004"]


@pytest.mark.slow
def test_ranks_that_do_not_share_the_output_directory_are_refused(tmp_path):
    local = tmp_path / "node-local"
    local.mkdir()
    results = rank_results(torchrun(WORKERS / "shared_dir.py", tmp_path / "shared", local, timeout=120).stdout)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert "is not one shared directory: rank 1 on" in r["outcome"], r
        assert "put the output directory on a filesystem all nodes share" in r["outcome"]


@pytest.mark.slow
def test_ranks_that_share_the_output_directory_pass(tmp_path):
    results = rank_results(torchrun(WORKERS / "shared_dir.py", tmp_path / "shared", tmp_path / "shared",
                                    timeout=120).stdout)
    assert [r["outcome"] for r in results] == ["ok", "ok"]
