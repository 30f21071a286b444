"""The main job, shortened: `make demo`'s pipeline on the real offline data (Debian packages) and the
real all-MiniLM-L6-v2, with 3 training steps instead of the demo's budget."""

import json
import shutil
import sys

import pytest
from helpers_launch import run

pytestmark = pytest.mark.slow


def test_demo_pipeline_end_to_end(tmp_path):
    if shutil.which("dpkg") is None:
        pytest.skip("needs Debian packages (dpkg not found): run `make test`, which installs them")
    out = tmp_path / "demo"
    proc = run([sys.executable, "-m", "dist_lacl.demo", "--out", str(out), "train.max_steps=3",
                "train.log_every=1", "train.save_every=0"], timeout=1200)
    report = json.loads((out / "report.json").read_text())
    langs = {"en", "de", "fr", "it", "ja", "ko", "nl", "pt", "ru", "zh-cn"}
    assert langs <= set(report["before"]) and langs <= set(report["after"])
    assert 0.3 < report["before"]["en"] <= 1.0  # the untrained English model already retrieves English
    assert report["after"] != report["before"]  # the trained checkpoint was evaluated, not the base model
    assert "mean change, languages with parallel data" in proc.stdout
    assert (out / "mrr_by_language.png").stat().st_size > 10_000
    assert any((out / "run" / "tensorboard").iterdir())
    for name in ("train_ir.jsonl", "parallel.jsonl", "monolingual.jsonl", "manifest.json"):
        assert (out / "data" / name).stat().st_size > 0
