"""False negatives masked in the IR and semantic losses (loss.mask_false_negatives), against a hand-written
reference: loops over anchor rows with each denominator's candidates listed explicitly.

One process: whole loss, shards (2, 4) and row blocks; the gradient cache against no cache; masking off
(or nothing to mask) gives today's numbers bit for bit; the counts logged equal the masks' sizes; the
batches carry keys that agree with their passages. Two gloo ranks (slow): every sharding mode, the
planted case of tests/workers/loss_sharding_worker.py, through the objective and through the gradient
cache's loss step, against this reference.
"""

import importlib.util

import pytest
import torch
from equivalence import (
    BY_HAND,
    FP32_GRADS,
    FP32_LOSS,
    RANK_REPS_GRADS,
    REORDERED_LOSS,
    SHARDED_LOSS_GRADS,
    assert_close_tensors,
)
from helpers_launch import WORKERS, torchrun
from helpers_loss_sharding import check_loss_cases

from dist_lacl.config import LossConfig
from dist_lacl.false_negatives import (
    BatchKeys,
    ir_count,
    ir_keys,
    ir_mask,
    pair_count,
    pair_mask,
    stable_key,
    text_keys,
)
from dist_lacl.grad_cache import GradCache
from dist_lacl.losses import language_loss
from dist_lacl.objective import PASSAGE, QUERY, Job, Objective, lacl_loss

EN, XX, MONO = Job("para_en", "query"), Job("para_xx", "query"), Job("mono", "query")


def load_worker():
    spec = importlib.util.spec_from_file_location("loss_sharding_worker", WORKERS / "loss_sharding_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


WORKER = load_worker()
B, G, N = WORKER.B, WORKER.G, WORKER.N


# ---------------------------------------------------------------- the hand-written reference

def reference_ir(q, p, tau, passage_keys, positive_keys):
    """Mean over queries i of -log exp(s_i,pos) / sum over the kept candidates j of exp(s_ij): j is kept
    if it is i's own positive (column i*G) or its key is none of i's positives' keys."""
    total = 0
    for i in range(q.shape[0]):
        kept = [j for j in range(p.shape[0]) if j == i * G or passage_keys[j] not in positive_keys[i]]
        scores = torch.stack([q[i] @ p[j] / tau for j in kept])
        total = total - (scores[kept.index(i * G)] - torch.logsumexp(scores, 0))
    return total / q.shape[0]


def reference_semantic(e, f, tau, en_keys, xx_keys):
    """Both directions averaged; row i keeps candidate j if j == i or pair j shares neither text with i."""
    def direction(anchors, candidates):
        total = 0
        for i in range(anchors.shape[0]):
            kept = [j for j in range(anchors.shape[0]) if j == i or (en_keys[j] != en_keys[i]
                                                                     and xx_keys[j] != xx_keys[i])]
            scores = torch.stack([anchors[i] @ candidates[j] / tau for j in kept])
            total = total - (scores[kept.index(i)] - torch.logsumexp(scores, 0))
        return total / anchors.shape[0]

    return 0.5 * (direction(e, f) + direction(f, e))


def reference_terms(reps, keys, tau=0.5):
    ir = reference_ir(reps[QUERY], reps[PASSAGE], tau, keys.passages.tolist(),
                      [set(row) for row in keys.positives.tolist()])
    sem = reference_semantic(reps[EN], reps[XX], tau, keys.para_en.tolist(), keys.para_xx.tolist())
    return ir, sem


def reference_total(reps, keys, tau=0.5):
    """L_IR + 0.7 L_sem + 0.4 L_lang with the masked references; the language loss as it is (unmasked)."""
    ir, sem = reference_terms(reps, keys, tau)
    return ir + 0.7 * sem + 0.4 * language_loss(reps[MONO], reps[EN], reps[XX], tau)


def reps_and_keys(seed=3):
    case = WORKER.CASES["masked"]
    return WORKER.global_reps(seed, case), WORKER.planted_keys()


def config(**overrides):
    return LossConfig(**{"temperature": 0.5, "semantic_weight": 0.7, "language_weight": 0.4, **overrides})


def terms_and_grads(reps, cfg, keys, shards=1):
    leaves = {k: v.clone().requires_grad_() for k, v in reps.items()}
    terms = [lacl_loss(leaves, cfg, (i, shards), keys=keys) for i in range(shards)]
    sum(t.total for t in terms).backward()
    return (sum(t.ir for t in terms), sum(t.semantic for t in terms), sum(t.language for t in terms),
            {k: v.grad for k, v in leaves.items()})


# ---------------------------------------------------------------- one process

def test_the_planted_duplicates_are_found_by_hand():
    keys = WORKER.planted_keys()
    mask = ir_mask(keys, torch.arange(B), G)
    # Query 0 (positives 0 and 100): passages 5, 19 (key 0) and 21 (query 7's positive, key 100); queries
    # 2 and 3 each other's positive. Query 7's only positive is its own column: nothing masked for it.
    assert sorted(map(tuple, mask.nonzero().tolist())) == [(0, 5), (0, 19), (0, 21), (2, 9), (3, 6)]
    assert mask.sum() == ir_count(keys) == 5
    pairs = pair_mask(keys, torch.arange(N))
    assert pairs.equal(pairs.T) and not pairs.diagonal().any()
    assert {tuple(ij) for ij in pairs.nonzero().tolist() if ij[0] < ij[1]} == {(0, 1), (0, 7), (1, 7), (2, 4), (2, 6)}
    assert pairs.sum() == pair_count(keys) == 10


@pytest.mark.parametrize("shards", [1, 2, 4])
@pytest.mark.parametrize("block_rows", [0, 1, 3])
def test_masked_losses_equal_the_reference(shards, block_rows):
    """In float64: the reference's loops sum in another order, and fp32 would compare their rounding."""
    reps, keys = reps_and_keys()
    reps = {k: v.double() for k, v in reps.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in reps.items()}
    ir_ref, sem_ref = reference_terms(leaves, keys)
    reference_total(leaves, keys).backward()
    ir, sem, _, grads = terms_and_grads(reps, config(block_rows=block_rows), keys, shards)
    assert ir.item() == pytest.approx(ir_ref.item(), rel=BY_HAND)
    assert sem.item() == pytest.approx(sem_ref.item(), rel=BY_HAND)
    for job in reps:
        torch.testing.assert_close(grads[job], leaves[job].grad, **SHARDED_LOSS_GRADS)
    # Masking changed something: unmasked, both terms are larger (more candidates in each denominator).
    off, _, _, _ = terms_and_grads(reps, config(mask_false_negatives=False), keys)
    assert off.item() > ir.item()


def test_masking_off_or_nothing_to_mask_is_todays_loss_bit_for_bit():
    reps, keys = reps_and_keys()
    unique = BatchKeys(torch.arange(B * G), torch.arange(B * G)[::G, None], torch.arange(N), torch.arange(N) + N)
    for block_rows in (0, 3):
        today = terms_and_grads(reps, config(block_rows=block_rows), None)
        off = terms_and_grads(reps, config(block_rows=block_rows, mask_false_negatives=False), keys)
        nothing = terms_and_grads(reps, config(block_rows=block_rows), unique)
        for got in (off, nothing):
            assert all(torch.equal(a, b) for a, b in zip(got[:3], today[:3]))
            assert all(torch.equal(got[3][k], today[3][k]) for k in today[3])


def test_objective_logs_the_global_counts():
    reps, keys = reps_and_keys()
    _, out = Objective(config())(reps, keys=keys)
    assert out.scalars()["mask/ir"] == 5 and out.scalars()["mask/semantic"] == 10
    _, off = Objective(config(mask_false_negatives=False))(reps, keys=keys)
    assert not any(k.startswith("mask/") for k in off.scalars())
    _, ir_only = Objective(config(semantic_weight=0.0))(reps, keys=keys)
    assert "mask/semantic" not in ir_only.scalars() and ir_only.scalars()["mask/ir"] == 5


def test_cached_equals_uncached_with_masking():
    """The gradient cache computes the masked loss on cached representations: the same loss and
    parameter gradients as one pass with autograd (a toy embedding encoder, float64)."""
    reps, keys = reps_and_keys()
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(50, 16).double()
    batch = {}
    for job, r in reps.items():
        ids = torch.randint(1, 50, (r.shape[0], 5), generator=gen)
        lengths = torch.randint(1, 6, (r.shape[0], 1), generator=gen)
        mask = (torch.arange(5)[None, :] < lengths).long()  # right padding, as the tokenizer's
        batch[job] = {"input_ids": ids, "attention_mask": mask}

    def encode(job, x):
        m = x["attention_mask"].unsqueeze(-1).double()
        return (emb(x["input_ids"]) * m).sum(1) / m.sum(1) * 5

    def step(chunk_size, cfg):
        emb.zero_grad()
        gc = GradCache(encode, Objective(cfg), lambda loss: loss.backward(), chunk_size=chunk_size)
        cache = gc.compute_loss(batch, keys=keys)
        gc.backward(cache)
        return cache.loss.item(), cache.loss_out.scalars(), emb.weight.grad.clone()

    loss_u, scalars_u, grad_u = step(0, config())
    loss_c, scalars_c, grad_c = step(2, config(block_rows=1))
    assert loss_c == pytest.approx(loss_u, rel=FP32_LOSS) and scalars_c == pytest.approx(scalars_u, rel=FP32_LOSS)
    assert_close_tensors(grad_c, grad_u, **FP32_GRADS)
    unmasked, _, _ = step(2, config(mask_false_negatives=False))
    assert unmasked != pytest.approx(loss_c, rel=FP32_LOSS)


def test_keys_are_stable_and_namespaced():
    assert stable_key("doc1") == stable_key("doc1") != stable_key("doc1", "msmarco")
    assert stable_key("doc1", "msmarco") != stable_key("doc1", "miracl")
    # blake2b, not Python's salted hash(): this value is the same in every process and run.
    assert stable_key("doc1") == stable_key("doc1") and isinstance(stable_key("doc1"), int)
    assert text_keys(["Open", "Open", "Open "]).tolist()[:2] == [stable_key("Open", "text")] * 2
    keys = ir_keys([["a", "b"], ["c"]], ["a", "x", "c", "b"], "ds")
    assert keys.positives.tolist() == [[stable_key("a", "ds"), stable_key("b", "ds")], [stable_key("c", "ds")] * 2]
    both = BatchKeys.concat([keys, ir_keys([["q", "r", "s"]], ["q", "z"], "ds")])
    assert both.positives.shape == (3, 3) and both.positives[1].tolist() == [stable_key("c", "ds")] * 3
    assert ir_count(keys) == 1  # query 0's second positive "b" is query 1's hard negative


def test_batches_carry_keys_of_their_passages(tiny_model_dir, training_data, tmp_path):
    from transformers import AutoTokenizer

    from dist_lacl.config import config_from_dict
    from dist_lacl.data.batches import TrainBatches

    cfg = config_from_dict({"model": {"name_or_path": str(tiny_model_dir)}, "data": {**training_data,
                            "train_group_size": 3}, "train": {"ir_batch_size": 4, "parallel_batch_size": 4,
                                                              "monolingual_batch_size": 4,
                                                              "output_dir": str(tmp_path)}})
    data = TrainBatches(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), 0, 1, tmp_path / "cache")
    batch, meta = data.next()
    keys = meta["keys"]
    assert keys.passages.shape == (batch["passage"]["input_ids"].shape[0],)
    assert keys.positives[:, 0].equal(keys.passages[::3])  # the sampled positive first
    assert keys.para_en.shape == keys.para_xx.shape == (batch["para_en"]["input_ids"].shape[0],)


# ---------------------------------------------------------------- two ranks

@pytest.mark.slow
def test_two_ranks_masked_losses_equal_the_reference(tmp_path):
    """Every sharding mode on 2 gloo ranks (row blocks too): the global masked loss on every rank and each
    rank's gradients, against one process (helpers_loss_sharding.check_loss_cases) and against the hand
    reference."""
    out = tmp_path / "w2.pt"
    torchrun(WORKERS / "loss_sharding_worker.py", out, nproc=2, timeout=600)
    result = torch.load(out, weights_only=False)
    assert result["world_size"] == 2
    check_loss_cases(result)
    case = result["losses"]["masked"]
    leaves = {k: v.double().requires_grad_() for k, v in case["reps"].items()}
    ir_ref, sem_ref = reference_terms(leaves, case["keys"])
    reference_total(leaves, case["keys"]).backward()
    modes = [m for m in case if isinstance(m, tuple) or str(m).startswith("cached-")]
    assert len(modes) == 6
    for mode in modes:
        for scalars in case[mode]["scalars"]:  # every rank: the global terms and counts
            assert scalars["loss/ir"] == pytest.approx(ir_ref.item(), rel=REORDERED_LOSS)
            assert scalars["loss/semantic"] == pytest.approx(sem_ref.item(), rel=REORDERED_LOSS)
            assert scalars["mask/ir"] == 5 and scalars["mask/semantic"] == 10
        for k, g in case[mode]["grads"].items():  # each rank's rows: world_size x dL/d(rows)
            ref = 2 * leaves[k].grad.float()
            torch.testing.assert_close(g, ref, rtol=RANK_REPS_GRADS, atol=RANK_REPS_GRADS * float(ref.abs().max()))
