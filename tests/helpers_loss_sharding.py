"""The loss-sharding checks that test_loss_sharding and test_false_negatives share: random representations,
the one-process loss and gradients, and a worker's cases against them."""

import pytest
import torch
from equivalence import RANK_REPS_GRADS, REORDERED_LOSS

from dist_lacl.config import LossConfig
from dist_lacl.false_negatives import mask_counts
from dist_lacl.objective import PASSAGE, QUERY, Job, lacl_loss


def random_reps(seed=0, b=8, g=3, n=8, k=4, d=16, towers=("query",)):
    gen = torch.Generator().manual_seed(seed)
    reps = {QUERY: torch.randn(b, d, generator=gen), PASSAGE: torch.randn(b * g, d, generator=gen)}
    for t in towers:
        reps.update({Job("para_en", t): torch.randn(n, d, generator=gen), Job("para_xx", t): torch.randn(n, d, generator=gen),
                     Job("mono", t): torch.randn(k, d, generator=gen)})
    return reps


def loss_and_grads(reps, cfg, shards=1, keys=None):
    leaves = {k: v.clone().requires_grad_() for k, v in reps.items()}
    terms = [lacl_loss(leaves, cfg, (i, shards), keys=keys) for i in range(shards)]
    total = sum(t.total for t in terms)
    total.backward()
    scalars = {key: sum(t.scalars()[key] for t in terms) for key in terms[0].scalars()}
    return scalars, {k: v.grad for k, v in leaves.items()}


def check_loss_cases(result):
    world = result["world_size"]
    for name, case in result["losses"].items():
        cfg = LossConfig(temperature=0.5, semantic_weight=case["case"]["weights"][0],
                         language_weight=case["case"]["weights"][1],
                         **{k: v for k, v in case["case"].items() if k not in ("weights", "towers", "planted")})
        scalars, grads = loss_and_grads(case["reps"], cfg, keys=case.get("keys"))
        if case.get("keys") is not None:  # what the objective logs besides the terms
            scalars.update(mask_counts(case["keys"]))
        modes = [m for m in case if isinstance(m, tuple)]
        assert len(modes) == 4
        for mode in modes:
            got = case[mode]
            for rank_scalars in got["scalars"]:  # the global loss on every rank, whatever the mode
                assert rank_scalars == pytest.approx(scalars, rel=REORDERED_LOSS), (name, mode)
            for k, g in grads.items():
                torch.testing.assert_close(got["grads"][k], world * g, rtol=RANK_REPS_GRADS,
                                           atol=RANK_REPS_GRADS * float(g.abs().max()),
                                           msg=lambda m, n=name, mo=mode, key=k: f"{n} {mo} {key}: {m}")
