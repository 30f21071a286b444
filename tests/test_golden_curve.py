"""Golden curves: a fixed tiny 2-rank ZeRO-2 run (all three losses, the gradient cache with several chunks,
the prefetcher on, dropout on) logs exactly these losses and ends with exactly these weights.

The numbers were recorded once and are never edited by a refactor: code that moves must keep them.
Regenerate them only for a change meant to alter training, and say so in its commit
(`GOLDEN_PRINT=1 pytest tests/test_golden_curve.py -s` prints the current values).
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers_launch import torchrun
from helpers_tiny import make_tiny_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow
STEPS = 3
# Rounding only: the same arithmetic in another order may move the last float32 bits of a loss, and a
# weight's last bit moves its float64 checksum by ~1e-9 relative; a real change moves both by ~1e-3.
LOSS_REL, CHECKSUM_REL = 1e-6, 1e-7

# {layout: (loss/total per step, (sum, sum of |w|) of the final weights in float64)}
GOLDEN = {
    "shared": ([22.197145462036133, 25.746580123901367, 25.58084487915039],
               (162.6719090609824, 650.1906255029944)),
    "separate-query": ([22.197145462036133, 27.150482177734375, 28.952960968017578],
                       (325.185969684061, 1300.28430716225)),
    "separate-passage": ([22.197145462036133, 28.503517150878906, 23.910295486450195],
                         (325.53853647664107, 1300.5334172196804)),
    "separate-both": ([23.63437271118164, 21.47661018371582, 25.502010345458984],
                      (325.40963431325014, 1301.8933286670222)),
}

ASSETS = Path(__file__).parent / "assets"

LAYOUTS = {
    "shared": [],
    "separate-query": ["model.shared_encoder=false", "model.aux_towers=query"],
    "separate-passage": ["model.shared_encoder=false", "model.aux_towers=passage"],
    "separate-both": ["model.shared_encoder=false", "model.aux_towers=both"],
}


def run_layout(tmp_path, model_dir, data, layout):
    out = tmp_path / layout
    torchrun("-m", "dist_lacl.cli", "train", f"model.name_or_path={model_dir}", "model.pooling=mean",
             f"data.train_ir={data['train_ir']}", f"data.parallel={data['parallel']}",
             f"data.monolingual={data['monolingual']}", "data.train_group_size=2", "data.prefetch=1",
             f"train.output_dir={out}", "train.ir_batch_size=8", "train.parallel_batch_size=8",
             "train.monolingual_batch_size=8", "train.chunk_size=3", "train.lr=3e-3", "train.warmup_steps=1",
             "train.num_threads=1", f"train.max_steps={STEPS}", "train.log_every=1", "train.seed=7",
             *LAYOUTS[layout], timeout=600)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss/total")]
    latest = (out / "checkpoints" / "latest").read_text()
    weights = torch.load(out / "checkpoints" / latest / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    checksum = (sum(float(w.double().sum()) for w in weights.values()),
                sum(float(w.double().abs().sum()) for w in weights.values()))
    return losses, checksum


@pytest.fixture(scope="module")
def golden_model_dir(tmp_path_factory) -> Path:
    """The tiny encoder over the tokenizer kept in tests/assets (training a Unigram tokenizer is not
    deterministic across processes, so the session's tiny model cannot anchor exact numbers)."""
    path = tmp_path_factory.mktemp("golden-model")
    make_tiny_model(path, AutoTokenizer.from_pretrained(ASSETS / "tiny-tokenizer"), seed=0)
    return path


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_golden_curve(tmp_path, golden_model_dir, training_data, layout):
    losses, checksum = run_layout(tmp_path, golden_model_dir, training_data, layout)
    if os.environ.get("GOLDEN_PRINT"):
        print(f"    {layout!r}: ({losses!r}, {checksum!r}),", file=sys.stderr)
    expected_losses, expected_checksum = GOLDEN[layout]
    assert len(losses) == STEPS
    assert losses == pytest.approx(expected_losses, rel=LOSS_REL)
    assert checksum == pytest.approx(expected_checksum, rel=CHECKSUM_REL)
