"""Two real gloo processes == one process on the concatenated global batch.

- plain torch.distributed with gathered negatives: loss and every parameter gradient;
- DeepSpeed ZeRO-2 with a several-chunk gradient cache: full gradients after backward and the
  weights after one optimizer step, against plain PyTorch (and the naive per-chunk backward fails);
- the same through accelerate's DDP.
Dropout is off here (each rank has its own RNG stream); test_grad_cache covers dropout replay. Mean
pooling: with CLS pooling a random tiny encoder gives every input nearly the same vector, and the
gradients below the last LayerNorm become near-cancelling sums whose fp32 rounding (1e-3 relative)
would hide real errors instead of revealing them.
"""

import json

import pytest
import torch
from equivalence import (
    CROSS_PROCESS,
    GRAD_NORM,
    REORDERED_LOSS,
    ZERO_GRAD_NOISE,
    ZERO_GRAD_UPDATE,
    assert_same_grads,
)
from helpers_launch import REPO, accelerate_launch
from helpers_reference_step import reference_step, run_worker, write_config

from dist_lacl.model import build_model

pytestmark = pytest.mark.slow


def test_two_ranks_with_gathered_negatives_equal_one_process(tmp_path, tiny_model_no_dropout, training_data):
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data)
    loss, grads, _, _ = reference_step(cfg)
    result = run_worker(tmp_path, config, "plain")
    assert result["loss"] == pytest.approx(loss, rel=REORDERED_LOSS)
    assert_same_grads(result["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)


def shipped_zero_block(tmp_path, name: str) -> str:
    """A DeepSpeed file with the `zero_optimization` block of shipped config `name` (overlap_comm,
    contiguous gradients, round-robin, bucket sizes, offload) and nothing else, so the run config's
    fp32 applies and only the device differs from a GPU run. Offload runs torch's AdamW on the
    offloaded master weights (DeepSpeed's CPU Adam is a JIT build; the gradient path is the same)."""
    block = json.loads((REPO / "ds_configs" / name).read_text())["zero_optimization"]
    block.get("offload_optimizer", {}).pop("pin_memory", None)  # page-locking is a CUDA notion
    path = tmp_path / f"zero-{name}"
    path.write_text(json.dumps({"zero_optimization": block, "zero_force_ds_cpu_optimizer": False}))
    return str(path)


SHIPPED = sorted(p.name for p in (REPO / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("grad_reduction, distill", [("coalesced", False), ("per_chunk", False), ("coalesced", True)],
                         ids=["coalesced", "per_chunk", "coalesced-distill"])
def test_zero2_grad_cache_equals_plain_pytorch(tmp_path, tiny_model_no_dropout, training_data,
                                               training_data_with_scores, grad_reduction, distill):
    """distill: with loss.distill_weight, the teacher-score KL term in the cached, gathered loss too."""
    loss = {"distill_weight": 0.6, "distill_temperature": 2.0} if distill else None
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data_with_scores if distill else training_data,
                               loss=loss, backend="deepspeed", deepspeed_config="ds_configs/zero2_fp32_cpu.json",
                               grad_reduction=grad_reduction)
    assert_engine_step_equals_reference(tmp_path, config, cfg)


def test_zero2_padding_free_token_budget_equals_padded_plain_pytorch(tmp_path, tiny_model_no_dropout, training_data):
    """model.padding_free on CPU (rows under SDPA's block-diagonal mask, of a fixed 128 positions) with a
    train.chunk_tokens budget over packed positions, through the trainer under ZeRO-2 on 2 ranks == the padded
    one-process reference. Rows as long as each chunk's longest: test_packing and test_grad_cache."""
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data, padding_free=True, packed_row_length=128,
                               backend="deepspeed", deepspeed_config="ds_configs/zero2_fp32_cpu.json", chunk_size=0,
                               chunk_tokens=256)
    assert_engine_step_equals_reference(tmp_path, config, cfg)


@pytest.mark.parametrize("shipped", [n for n in SHIPPED if n != "zero2_fp32_cpu.json"])
def test_zero2_with_each_shipped_zero_block_equals_plain_pytorch(tmp_path, tiny_model_no_dropout, training_data,
                                                                 shipped):
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data, backend="deepspeed",
                               deepspeed_config=shipped_zero_block(tmp_path, shipped))
    round_robin = json.loads((REPO / "ds_configs" / shipped).read_text())["zero_optimization"].get(
        "round_robin_gradients", False)
    assert_engine_step_equals_reference(tmp_path, config, cfg, read_grads=not round_robin)


def assert_engine_step_equals_reference(tmp_path, config, cfg, read_grads=True):
    loss, grads, params, grad_norm = reference_step(cfg)
    result = run_worker(tmp_path, config, "engine" if read_grads else "engine-norm")
    assert (result["packed_rows"] > 0) == cfg.model.padding_free
    if cfg.model.packed_row_length:
        assert result["packed_widths"] == [cfg.model.packed_row_length]
    assert result["loss"] == pytest.approx(loss, rel=REORDERED_LOSS)
    assert result["grad_norm"] == pytest.approx(grad_norm, rel=GRAD_NORM)
    if read_grads:
        assert_same_grads(result["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    assert_same_grads(result["params"], params, floor=ZERO_GRAD_UPDATE, **CROSS_PROCESS)
    # The step changed the weights, so the parameter comparison is not trivially true.
    assert any(not torch.equal(p, q) for p, q in zip(params.values(), build_model(cfg.model).state_dict().values()))


def test_zero2_naive_per_chunk_backward_loses_gradients(tmp_path, tiny_model_no_dropout, training_data):
    """The peers' failure, reproduced: without the accumulation boundary only the last chunk survives."""
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data, backend="deepspeed",
                               grad_reduction="per_chunk")
    _, grads, _, _ = reference_step(cfg)
    result = run_worker(tmp_path, config, "naive")
    with pytest.raises(AssertionError):
        assert_same_grads(result["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    errors = [float((result["grads"][n] - g).norm() / g.norm()) for n, g in grads.items() if g.norm() > 0]
    assert max(errors) > 0.1


@pytest.mark.parametrize("shared_encoder", [True, False], ids=["shared", "separate-towers"])
def test_accelerate_ddp_grad_cache_equals_plain_pytorch(tmp_path, tiny_model_no_dropout, training_data,
                                                        shared_encoder):
    """Separate towers: the last chunk runs through one tower only, so a reduction left to DDP's last
    backward would miss the other tower (replicas diverging, then DDP's 'Expected to have finished
    reduction' at the next step)."""
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data, backend="ddp",
                               shared_encoder=shared_encoder)
    loss, grads, params, grad_norm = reference_step(cfg)
    result = run_worker(tmp_path, config, "engine", launcher=accelerate_launch)
    assert result["loss"] == pytest.approx(loss, rel=REORDERED_LOSS)
    assert_same_grads(result["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    assert_same_grads(result["params"], params, floor=ZERO_GRAD_UPDATE, **CROSS_PROCESS)
