"""The paper's recipe: its configs load and validate, and slurm/paper_pipeline.sh parses and runs its stages
in order under `set -euo pipefail` (srun, scontrol and dist-lacl replaced by recorders)."""

import os
import subprocess
from pathlib import Path

import pytest

from dist_lacl.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "paper_pipeline.sh"


@pytest.mark.parametrize("name, backbone, group_size", [
    ("paper_mbert_nq.yaml", "bert-base-multilingual-cased", 2),
    ("paper_xlmr_base_msmarco.yaml", "xlm-roberta-base", 8),
])
def test_paper_configs_load(name, backbone, group_size):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.model.name_or_path == backbone and cfg.data.train_group_size == group_size
    assert cfg.loss.semantic_weight > 0 and cfg.loss.language_weight > 0  # the full method
    assert cfg.data.parallel and cfg.data.monolingual
    assert (REPO / cfg.train.deepspeed_config).is_file()
    # What the pipeline assumes (paths resolve against the working directory the pipeline runs in).
    assert cfg.train.output_dir == os.path.realpath(f"runs/{name.removesuffix('.yaml')}")


def test_pipeline_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _fake_slurm(tmp_path: Path) -> dict:
    """srun/scontrol on PATH that append their arguments to calls.log; srun runs nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": 'echo "srun $*" >>"$CALLS"', "scontrol": 'echo node1'}.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dist-lacl").write_text('#!/bin/bash\necho "dist-lacl $*" >>"$CALLS"\n')
    (bin_dir / "dist-lacl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", CALLS=str(tmp_path / "calls.log"), SLURM_JOB_ID="7",
               SLURM_JOB_NODELIST="node1", DIST_LACL_WORKDIR=str(tmp_path))
    return env


def test_pipeline_runs_its_stages_in_order(tmp_path):
    env = _fake_slurm(tmp_path)
    env.update(MINE_MODEL="m0", TRAIN_IR="nq.jsonl", CORPUS="corpus.jsonl", MRTYDI_DIR="mrtydi",
               MRTYDI_LANGS="swahili thai", XOR_DIR="xor", CONFIG="configs/paper_mbert_nq.yaml")
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    commands = [line.split(" dist-lacl-task dist-lacl ")[-1] if line.startswith("srun") else line for line in calls]
    run = "runs/paper_mbert_nq"
    assert [c.split()[0] if not c.startswith("dist-lacl") else c.split()[1] for c in commands] == [
        "mine", "train", "export", "encode", "encode", "evaluate", "encode", "encode", "evaluate",
        "encode", "encode", "search", "evaluate"]
    assert commands[0] == (f"mine --model m0 --train-ir nq.jsonl --corpus corpus.jsonl --output "
                           f"{run}/train.mined.jsonl --rank-range 10-100 --num-negatives 30")
    assert commands[1] == (f"train --config configs/paper_mbert_nq.yaml train.output_dir={run} "
                           f"data.train_ir={run}/train.mined.jsonl")
    assert "--qrels mrtydi/mrtydi-v1.1-thai/qrels.test.txt" in commands[8]
    assert commands[-1].startswith(f"dist-lacl evaluate --run {run}/model/eval/xor/run.trec --answers "
                                   "xor/xor_dev_retrieve_eng_span.jsonl --passages xor/psgs_w100.tsv")


def test_pipeline_stops_on_a_missing_input_and_on_an_unknown_stage(tmp_path):
    env = _fake_slurm(tmp_path)
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "paper_pipeline.sh: stage mine needs MINE_MODEL (see the top of slurm/paper_pipeline.sh)"
    env["STAGES"] = "train evaluate"
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "STAGES: expected words of" in proc.stderr
    assert not (tmp_path / "calls.log").exists()
