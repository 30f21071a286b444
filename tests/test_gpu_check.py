"""bench/gpu_check.py's dry run (`--device cpu --tiny`): every part runs in its own process group, the
JSON and the table exist after each part, and a part that fails leaves the others' results."""

import json
import subprocess
import sys
import time

import pytest
from helpers_launch import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


def test_a_part_past_its_limit_is_killed_with_its_children(tmp_path):
    child = tmp_path / "child.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); print('ROW {{\"kind\": \"x\"}}', flush=True); "
              f"time.sleep(60)")
    start = time.monotonic()
    part = gpu_check.run([sys.executable, "-c", script], 3, tmp_path / "part.log")
    assert time.monotonic() - start < 30
    assert part["state"] == "timed out" and part["rows"] == [{"kind": "x"}]
    pid = int(child.read_text())
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    assert state == "" or state.startswith("Z")  # gone, or dead and waiting to be reaped


def test_a_missing_package_skips_its_part():
    assert gpu_check.missing(("json", "surely_not_installed_here")) == ["surely_not_installed_here"]


@pytest.mark.slow
def test_dry_run_writes_after_every_part_and_survives_a_failing_part(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out), "--device", "cpu",
                             "--tiny", "--fail-part", "zero2"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        if line.startswith("[") and "]" in line and ":" in line.split("] ", 1)[-1]:
            name = line.split("] ", 1)[1].split(":")[0]
            seen.append(name)
            written = json.loads((out / "gpu.json").read_text())
            assert list(written["parts"]) == seen  # this part's result is on disk before the next one starts
            assert f"| {name} |" in (out / "gpu.md").read_text()
    assert proc.wait(timeout=900) == 1  # one part failed
    assert seen == [p.name for p in gpu_check.PARTS]
    parts = json.loads((out / "gpu.json").read_text())["parts"]
    assert parts["zero2"]["state"] == "failed (rc 1)" and "failing on purpose" in parts["zero2"]["output_tail"]
    others = {name: part for name, part in parts.items() if name != "zero2"}
    assert all(part["state"] == "ok" for part in others.values()), {n: p["output_tail"][-2000:] for n, p in others.items()}
    settings = [r["setting"] for name in ("smoke", "train", "uncached") for r in parts[name]["rows"]
                if r["kind"] == "setting"]
    assert settings == ["chunk32", *gpu_check.TRAIN_SETTINGS, "uncached"]
    assert all(r["median_step_s"] > 0 for name in ("train",) for r in parts[name]["rows"] if r["kind"] == "setting")
    kinds = [r["kind"] for r in parts["search"]["rows"]]
    assert kinds == ["encode", "search"] and parts["search"]["rows"][1]["torch_rows_equal_faiss_cpu"] == 1.0
    assert "passed" in parts["gpu_tests"]["output_tail"] or "skipped" in parts["gpu_tests"]["output_tail"]
