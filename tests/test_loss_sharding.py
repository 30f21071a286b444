"""loss.sharding=sharded (each rank scores its own rows) == replicated == one process, exactly.

One process: the shards' shares add up to the whole loss, and row blocks change nothing.
World size 1 in this process; real gloo ranks (2 and 4; one launch each): for every loss, shared and separate towers, blocked or
not, the sharded and replicated modes give the global loss on every rank and, for every rank's
representations, world_size x the gradient of the one-process loss on the concatenated batch; on 2
ranks also a real Trainer step (DeepSpeed ZeRO-2, gradient cache over several chunks): full parameter
gradients sharded == replicated == plain PyTorch on one process.
"""

import pytest
import torch
import yaml
from equivalence import (
    BY_HAND,
    CROSS_PROCESS,
    FP32_LOSS,
    REORDERED_LOSS,
    SHARDED_LOSS_GRADS,
    ZERO_GRAD_NOISE,
    assert_same_grads,
)
from helpers_launch import WORKERS, torchrun
from helpers_loss_sharding import check_loss_cases, loss_and_grads, random_reps
from helpers_reference_step import reference_step, write_config

from dist_lacl.config import LossConfig, config_from_dict
from dist_lacl.losses import ir_loss, language_loss, semantic_loss
from dist_lacl.objective import PASSAGE, QUERY, Job


@pytest.mark.parametrize("towers", [("query",), ("query", "passage")], ids=["shared", "separate"])
def test_shards_add_up_to_the_whole_loss(towers):
    reps = random_reps(towers=towers)
    cfg = LossConfig(temperature=0.5, semantic_weight=0.7, language_weight=0.4)
    whole, whole_grads = loss_and_grads(reps, cfg)
    for shards in (2, 4):
        for block_rows in (0, 1, 3):
            cfg_b = LossConfig(temperature=0.5, semantic_weight=0.7, language_weight=0.4, block_rows=block_rows)
            parts, grads = loss_and_grads(reps, cfg_b, shards)
            assert parts == pytest.approx(whole, rel=FP32_LOSS)
            for k in grads:
                torch.testing.assert_close(grads[k], whole_grads[k], **SHARDED_LOSS_GRADS)


def test_one_shard_of_each_loss_by_hand():
    """Shard 1 of 2 scores global rows 2, 3 only: hand-written terms over the global count."""
    reps = random_reps(b=4, g=2, n=4, k=2)
    q, p, e, f, z = (reps[k] for k in (QUERY, PASSAGE, Job("para_en", "query"), Job("para_xx", "query"),
                                        Job("mono", "query")))
    ce = torch.nn.functional.cross_entropy
    ir = ce(q[2:] @ p.T, torch.tensor([4, 6]), reduction="sum") / 4
    assert ir_loss(q, p, 1.0, (1, 2)).item() == pytest.approx(ir.item(), rel=BY_HAND)
    sem = 0.5 * (ce(e[2:] @ f.T, torch.tensor([2, 3]), reduction="sum")
                 + ce(f[2:] @ e.T, torch.tensor([2, 3]), reduction="sum")) / 4
    assert semantic_loss(e, f, 1.0, True, (1, 2)).item() == pytest.approx(sem.item(), rel=BY_HAND)
    diff = z[1:] @ e.T - z[1:] @ f.T
    assert language_loss(z, e, f, 1.0, "squared", (1, 2)).item() == pytest.approx((diff ** 2).sum().item() / 8,
                                                                                     rel=BY_HAND)


def test_block_rows_really_bound_the_saved_scores():
    """With blocks, autograd holds the inputs only: the saved tensors shrink from [B, B*G] to none."""
    q, p = torch.randn(64, 8, requires_grad=True), torch.randn(64 * 4, 8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    for block_rows in (0, 8):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = ir_loss(q, p, 0.5, block_rows=block_rows)
        if block_rows == 0:
            assert max(saved) == 64 * 64 * 4
        else:
            assert max(saved) <= q.numel() + p.numel() and 64 * 64 * 4 not in saved
        loss.backward()


def launch(tmp_path, nproc, *configs):
    out = tmp_path / f"w{nproc}.pt"
    torchrun(WORKERS / "loss_sharding_worker.py", out, *configs, nproc=nproc, timeout=600)
    result = torch.load(out, weights_only=False)
    assert result["world_size"] == nproc
    return result


def test_one_rank_sharded_equals_replicated():
    """World size 1 (no process group, as a 1-rank gloo group: gather_for_loss and sum_shares are the
    identity at world size 1), the worker's cases run in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loss_sharding_worker", WORKERS / "loss_sharding_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    check_loss_cases({"world_size": 1, "losses": worker.loss_cases()})


@pytest.mark.slow
def test_four_ranks_sharded_equals_replicated_equals_one_process(tmp_path):
    check_loss_cases(launch(tmp_path, 4))


def sharded_config(tmp_path, model_dir, data, name, loss=(), model=(), **train):
    path, _ = write_config(tmp_path / name, model_dir, data, backend="deepspeed",
                           deepspeed_config="ds_configs/zero2_fp32_cpu.json", **train)
    raw = yaml.safe_load(path.read_text())
    raw["loss"].update(loss)
    raw["model"].update(model)
    path.write_text(yaml.safe_dump(raw))
    return path, config_from_dict(raw)


@pytest.mark.slow
def test_two_ranks_losses_and_zero2_trainer_step(tmp_path, tiny_model_no_dropout, training_data):
    """The 2-rank loss cases, and Trainer steps under ZeRO-2 with the gradient cache: replicated,
    sharded (with row blocks), sharded with separate towers, against plain PyTorch on one process; and
    sharded without the cache (the reduce-scatter then runs inside the engine's backward)."""
    for name in ("rep", "shard", "shard-sep", "shard-nocache"):
        (tmp_path / name).mkdir()
    rep, rep_cfg = sharded_config(tmp_path, tiny_model_no_dropout, training_data, "rep")
    shard, _ = sharded_config(tmp_path, tiny_model_no_dropout, training_data, "shard",
                              loss={"sharding": "sharded", "block_rows": 1})
    sep, sep_cfg = sharded_config(tmp_path, tiny_model_no_dropout, training_data, "shard-sep",
                                  loss={"sharding": "sharded"}, model={"shared_encoder": False})
    nocache, _ = sharded_config(tmp_path, tiny_model_no_dropout, training_data, "shard-nocache",
                                loss={"sharding": "sharded"}, chunk_size=0)
    result = launch(tmp_path, 2, rep, shard, sep, nocache)
    check_loss_cases(result)
    steps = result["trainer"]
    for config, cfg in ((rep, rep_cfg), (shard, rep_cfg), (sep, sep_cfg), (nocache, rep_cfg)):
        loss, grads, _, _ = reference_step(cfg)
        assert steps[str(config)]["loss"] == pytest.approx(loss, rel=REORDERED_LOSS)
        assert_same_grads(steps[str(config)]["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    # Sharded against replicated directly, and the logged terms agree.
    assert_same_grads(steps[str(shard)]["grads"], steps[str(rep)]["grads"], floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    assert steps[str(shard)]["scalars"] == pytest.approx(steps[str(rep)]["scalars"], rel=REORDERED_LOSS)
    assert set(steps[str(shard)]["scalars"]) == {"loss/total", "loss/ir", "loss/semantic", "loss/language"}


@pytest.mark.parametrize("field,value,message", [
    ("sharding", "shard", "loss.sharding: expected one of replicated, sharded, got 'shard'"),
    ("block_rows", -1, "loss.block_rows: expected an integer >= 0"),
])
def test_bad_sharding_settings_name_the_field(field, value, message):
    from dist_lacl.errors import ConfigError

    raw = {"data": {"train_ir": "ir.jsonl", "parallel": "p.jsonl", "monolingual": "m.jsonl"}, "loss": {field: value}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
