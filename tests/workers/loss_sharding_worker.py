"""The loss in every sharding mode on every rank, for tests/test_loss_sharding.py; rank 0 saves the results.

usage: loss_sharding_worker.py OUT.pt [TRAINER_CONFIG.yaml ...]
Part 1, always: for each case of CASES, random global representations (the same on every rank, from
the case's seed), each rank's slice of them as leaves, and for each mode of MODES the loss and the
leaves' gradients through objective.Objective; rank 0 saves the global representations, every rank's
loss values and the gradients concatenated in rank order.
Part 2, with trainer configs: one real Trainer step per config (the configured engine with the gradient
cache), the loss and the full parameter gradients after backward.
"""

import sys

import torch

from dist_lacl import distributed as dist
from dist_lacl.config import LossConfig
from dist_lacl.false_negatives import BatchKeys
from dist_lacl.objective import PASSAGE, QUERY, Job, Objective, step_jobs
from dist_lacl.trainer import Trainer

# Global sizes, divisible by 4 ranks: queries, passages per query, parallel pairs, monolingual, dim.
B, G, N, K, D = 8, 3, 8, 4, 16
CASES = {
    "ir": dict(weights=(0.0, 0.0), towers=["query"]),
    "all-shared": dict(weights=(0.7, 0.4), towers=["query"]),
    "all-shared-asym-squared": dict(weights=(0.7, 0.4), towers=["query"], semantic_symmetric=False,
                                    language_variant="squared"),
    "all-separate": dict(weights=(0.7, 0.4), towers=["query", "passage"]),
    "semantic-separate": dict(weights=(1.3, 0.0), towers=["query", "passage"]),
    # False negatives planted in the IR and parallel batches (planted_keys), masked by default.
    "masked": dict(weights=(0.7, 0.4), towers=["query"], planted=True),
}
NOT_LOSS_SETTINGS = ("weights", "towers", "planted")


def planted_keys() -> BatchKeys:
    """Global keys with false negatives within and across ranks' rows (of 2 and of 4 ranks).

    IR (B=8, G=3; passage j of query j // 3, its positive at 3i): query 0's positives are keys 0 and 100;
    query 1's hard negative (passage 5) and query 6's (passage 19) have key 0, query 7's positive key 100.
    Queries 2 and 3 share their positive (key 6). Semantic (N=8): pairs 0, 1, 7 share the English "Open"
    (0 and 7 their translation too), 2 and 4 the English "File", 2 and 6 the translation "Datei".
    """
    passages = torch.arange(B * G)
    passages[5] = passages[19] = 0
    passages[9] = 6
    passages[21] = 100
    positives = torch.stack([passages[::G], passages[::G]], dim=1)
    positives[0, 1] = 100
    en = torch.tensor([1, 1, 2, 3, 2, 4, 5, 1])
    xx = torch.tensor([10, 11, 12, 13, 14, 15, 12, 10])
    return BatchKeys(passages, positives, en, xx)


def local_keys(keys: BatchKeys) -> BatchKeys:
    """This rank's slice of the global keys (rows as local_slice cuts them)."""
    def cut(t):
        n = t.shape[0] // dist.world_size()
        return t[dist.rank() * n:(dist.rank() + 1) * n]

    return BatchKeys(cut(keys.passages), cut(keys.positives), cut(keys.para_en), cut(keys.para_xx))
# (sharding, block_rows): block_rows 1 splits every rank's rows into several blocks.
MODES = [("replicated", 0), ("replicated", 1), ("sharded", 0), ("sharded", 1)]


def global_reps(seed: int, case: dict) -> dict[Job, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    reps = {QUERY: torch.randn(B, D, generator=gen), PASSAGE: torch.randn(B * G, D, generator=gen)}
    sem, lang = case["weights"]
    for tower in case["towers"]:
        if sem > 0 or lang > 0:
            reps[Job("para_en", tower)] = torch.randn(N, D, generator=gen)
            reps[Job("para_xx", tower)] = torch.randn(N, D, generator=gen)
        if lang > 0:
            reps[Job("mono", tower)] = torch.randn(K, D, generator=gen)
    return reps


def loss_config(case: dict, sharding: str, block_rows: int) -> LossConfig:
    sem, lang = case["weights"]
    extra = {k: v for k, v in case.items() if k not in NOT_LOSS_SETTINGS}
    return LossConfig(temperature=0.5, semantic_weight=sem, language_weight=lang, sharding=sharding,
                      block_rows=block_rows, **extra)


def local_slice(t: torch.Tensor) -> torch.Tensor:
    n = t.shape[0] // dist.world_size()
    return t[dist.rank() * n:(dist.rank() + 1) * n].clone().requires_grad_()


def loss_cases() -> dict:
    out = {}
    for seed, (name, case) in enumerate(CASES.items()):
        reps = global_reps(seed, case)
        keys = planted_keys() if case.get("planted") else None
        out[name] = {"reps": reps, "case": case, "keys": keys}
        for sharding, block_rows in MODES:
            leaves = {k: local_slice(v) for k, v in reps.items()}
            loss_fn = Objective(loss_config(case, sharding, block_rows))
            loss, terms = loss_fn(leaves, keys=None if keys is None else local_keys(keys))
            loss.backward()
            grads = {k: torch.cat(dist.all_gather_objects(v.grad)) for k, v in leaves.items()}
            out[name][(sharding, block_rows)] = {
                "scalars": dist.all_gather_objects(terms.scalars()), "grads": grads}
        if keys is not None:
            out[name].update(cached_cases(case, reps, keys))
    return out


def cached_cases(case: dict, reps: dict, keys: BatchKeys) -> dict:
    """The gradient cache's loss step (loss on the cached representations, gradients into them) with
    the masks, replicated and sharded: {"cached-<sharding>": scalars of every rank, gradients}."""
    from dist_lacl.grad_cache import GradCache

    out = {}
    for sharding in ("replicated", "sharded"):
        cache = GradCache(lambda job, x: None, Objective(loss_config(case, sharding, 1)), lambda loss: None,
                          chunk_size=1)
        _, terms, grads = cache.build_cache({k: local_slice(v).detach() for k, v in reps.items()},
                                            keys=local_keys(keys))
        out[f"cached-{sharding}"] = {"scalars": dist.all_gather_objects(terms.scalars()),
                                     "grads": {k: torch.cat(dist.all_gather_objects(g)) for k, g in grads.items()}}
    return out


def trainer_step(config: str) -> dict:
    from dist_lacl.config import load_config

    cfg = load_config(config)
    trainer = Trainer(cfg)
    trainer.engine.train()
    batch, _ = trainer.data.next()
    cache = trainer.grad_cache.compute_loss(step_jobs(batch, cfg.model))
    trainer.grad_cache.backward(cache)
    return {"loss": cache.loss.item(), "scalars": cache.loss_out.scalars(), "grads": trainer.engine.full_grads()}


def main():
    out, configs = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group(600, backend="gloo")
    result = {"world_size": dist.world_size(), "losses": loss_cases(),
              "trainer": {config: trainer_step(config) for config in configs}}
    if dist.is_main():
        torch.save(result, out)
    dist.destroy()


if __name__ == "__main__":
    main()
