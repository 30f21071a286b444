"""The issue-15 options wired into training: data.language_alpha (the parallel and monolingual streams
drawn by language, resumable on any world size, their mix logged) and loss.language_pairs=own (a
monolingual sentence compared with the pairs of its own language), against values worked out by hand."""

import math
import sys

import pytest
import torch
from equivalence import BY_HAND, FEW_STEPS_CURVE, FOUR_DECIMALS
from helpers_data import monolingual_records, write_jsonl
from helpers_launch import run, torchrun
from helpers_train import scalars, train_args
from transformers import AutoTokenizer

from dist_lacl.config import LossConfig, RunConfig, config_from_dict, load_config
from dist_lacl.data.batches import LanguageStream, TrainBatches
from dist_lacl.data.order import LanguageSampler
from dist_lacl.errors import ConfigError, UserError
from dist_lacl.objective import PASSAGE, QUERY, Job, Objective, lacl_loss, step_language_mask

# ------------------------------------------------------------------ config


@pytest.mark.parametrize("override,message", [
    ("data.language_alpha=-0.5", "data.language_alpha: expected a number >= 0 or null"),
    ("data.language_alpha=many", "data.language_alpha: expected float"),
    ("data.language_alpha=1e400", r"data.language_alpha: expected a finite number, got '1e400'"),
    ("loss.temperature=nan", r"loss.temperature: expected a finite number, got 'nan'"),
    ("loss.language_pairs=mine", "loss.language_pairs: expected one of all, own, got 'mine'"),
])
def test_bad_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.train_ir=x", "data.parallel=p", "data.monolingual=m", override])


def test_defaults_and_accepted_values():
    assert RunConfig().data.language_alpha is None and RunConfig().loss.language_pairs == "all"
    cfg = load_config(None, ["data.train_ir=x", "data.parallel=p", "data.monolingual=m", "data.language_alpha=0",
                             "loss.language_pairs=own"])
    assert cfg.data.language_alpha == 0.0 and cfg.loss.language_pairs == "own"


# ------------------------------------------------------------------ the streams drawn by language

# Parallel: 12 de then 4 fr (contiguous, the builders' layout); monolingual: de fr ru ja interleaved, 3 each.
PARALLEL = [{"en": f"english {i}", "text": f"deutsch {i}", "lang": "de"} for i in range(12)] + \
           [{"en": f"english {i}", "text": f"francais {i}", "lang": "fr"} for i in range(12, 16)]
MONO = monolingual_records(12)


@pytest.fixture(scope="module")
def sampled_data(tmp_path_factory, training_data):
    folder = tmp_path_factory.mktemp("sampled")
    return {"train_ir": training_data["train_ir"], "parallel": str(write_jsonl(folder / "para.jsonl", PARALLEL)),
            "monolingual": str(write_jsonl(folder / "mono.jsonl", MONO))}


def sampled_config(tiny_model_dir, data, prefetch=0, **loss):
    return config_from_dict({
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {**data, "train_group_size": 2, "language_alpha": 0.5, "prefetch": prefetch},
        "loss": loss,
        "train": {"ir_batch_size": 4, "parallel_batch_size": 6, "monolingual_batch_size": 4, "seed": 5}})


def test_streams_draw_the_samplers_global_batches_rank_by_rank(tiny_model_dir, sampled_data):
    cfg = sampled_config(tiny_model_dir, sampled_data)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ranks = [TrainBatches(cfg, tokenizer, r, 2) for r in (0, 1)]
    para, mono = ranks[0].streams["parallel"], ranks[0].streams["monolingual"]
    assert isinstance(para, LanguageStream) and isinstance(mono, LanguageStream)
    # Contiguous languages: the sampler holds two ranges, no per-example table; interleaved: one label each.
    assert para.sampler._order is None and para.sampler._label is None and para.sampler.counts == {"de": 12, "fr": 4}
    assert mono.sampler._label is not None and mono.sampler.counts == {"de": 3, "fr": 3, "ja": 3, "ru": 3}
    # The same draws as samplers built by hand with seeds train.seed + 1 and + 2.
    by_hand = {"parallel": (LanguageSampler.from_ranges({"de": (0, 12), "fr": (12, 16)}, 6, 0.5), 6),
               "monolingual": (LanguageSampler([r["lang"] for r in MONO], 7, 0.5), 4)}
    for step in range(3):
        plans = [data.plan() for data in ranks]
        for name, (sampler, batch) in by_hand.items():
            global_draws = sampler.indices(step * batch, batch)
            assert plans[0].indices[name][0] + plans[1].indices[name][0] == global_draws
            assert plans[0].draw_steps[name] == step
    # sqrt(12) = 3.464, sqrt(4) = 2: de 0.634, fr 0.366; the monolingual languages are equal: 0.25 each.
    assert ranks[0].expected_language_mix() == pytest.approx(
        {"mix/parallel/de": 0.6340, "mix/parallel/fr": 0.3660, **{f"mix/monolingual/{lang}": 0.25
                                                                     for lang in ("de", "fr", "ja", "ru")}}, abs=FOUR_DECIMALS)
    # The observed mix of step 1 is that of its 6 global draws.
    draws = by_hand["parallel"][0].indices(6, 6)
    de = sum(i < 12 for i in draws) / 6
    assert ranks[1].language_mix({"draw_step": {"parallel": 1}}) == pytest.approx(
        {"mix/parallel/de": de, "mix/parallel/fr": 1 - de})


def test_resume_is_exact_from_two_ranks_to_one_through_the_prefetcher(tiny_model_dir, sampled_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = sampled_config(tiny_model_dir, sampled_data, prefetch=2)
    uninterrupted = TrainBatches(sampled_config(tiny_model_dir, sampled_data), tokenizer, 0, 1)
    expected = [uninterrupted.plan().indices for _ in range(5)]
    two = [TrainBatches(cfg, tokenizer, r, 2) for r in (0, 1)]
    metas = [[data.next()[1] for _ in range(3)] for data in two]
    for step in range(3):  # the two ranks' languages, rank by rank, are the one-rank run's
        langs = [PARALLEL[i]["lang"] for i in expected[step]["parallel"][0]]
        assert metas[0][step]["para_lang"] + metas[1][step]["para_lang"] == langs
    state = two[0].state_dict()  # prefetched steps 4 and 5 are not counted
    assert state["parallel"]["step"] == state["monolingual"]["step"] == 3
    resumed = TrainBatches(cfg, tokenizer, 0, 1)
    resumed.load_state_dict(state)
    assert [resumed.plan().indices for _ in range(2)] == expected[3:]


def test_a_checkpoint_of_the_other_order_is_refused_either_way(tiny_model_dir, sampled_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = sampled_config(tiny_model_dir, sampled_data)
    epoch_cfg = config_from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "language_alpha": None}})
    sampled, epochs = TrainBatches(cfg, tokenizer, 0, 1), TrainBatches(epoch_cfg, tokenizer, 0, 1)
    for data, state in ((sampled, epochs.state_dict()), (epochs, sampled.state_dict())):
        with pytest.raises(UserError, match="data.language_alpha"):
            data.load_state_dict(state)


# ------------------------------------------------------------------ loss.language_pairs=own

def _h(d: float) -> float:
    """The balanced loss of one (z, pair) entry with score difference d."""
    return 0.5 * (math.log1p(math.exp(d)) + math.log1p(math.exp(-d)))


# Monolingual rows de, ja; pairs de, fr, de. At tau 1, diff = sim(z, e) - sim(z, f): de [1, 0, 0], ja [0, 0, 1].
REPS = {QUERY: torch.tensor([[1.0, 0.0]]), PASSAGE: torch.tensor([[1.0, 0.0]]),
        Job("mono", "query"): torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        Job("para_en", "query"): torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        Job("para_xx", "query"): torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])}
META = {"para_lang": ["de", "fr", "de"], "mono_lang": ["de", "ja"]}


def own_config(**loss):
    return RunConfig(loss=LossConfig(**{"temperature": 1.0, "language_pairs": "own", **loss}))


def test_own_pairs_by_hand():
    mask = step_language_mask(META, own_config().loss)
    # de is compared with pairs 0 and 2 (diffs 1, 0); ja has no pair in the batch: all three (0, 0, 1).
    assert mask.tolist() == [[True, False, True], [True, True, True]]
    own = lacl_loss(REPS, own_config().loss, language_mask=mask)
    assert own.language.item() == pytest.approx((2 * _h(1.0) + 3 * math.log(2)) / 5, rel=BY_HAND)
    squared = lacl_loss(REPS, own_config(language_variant="squared").loss, language_mask=mask)
    assert squared.language.item() == pytest.approx(2 / 5)  # (1 + 0) + (0 + 0 + 1) over 5 entries
    every = lacl_loss(REPS, own_config(language_variant="squared", language_pairs="all").loss)
    assert every.language.item() == pytest.approx(2 / 6)  # Eq. 3: all 6 entries
    assert step_language_mask(META, own_config(language_pairs="all").loss) is None
    # The objective takes the step's mask as a per-step argument; without one it refuses.
    objective = Objective(own_config().loss)
    assert objective(REPS, language_mask=mask)[1].terms.language.item() == pytest.approx(own.language.item())
    with pytest.raises(ValueError, match="language_mask"):
        objective(REPS)


def test_own_pairs_is_eq_3_when_every_sentence_has_one_language_and_the_shards_add_up():
    torch.manual_seed(0)
    reps = {job: torch.randn(n, 4) for job, n in
            ((QUERY, 4), (PASSAGE, 8), (Job("para_en", "query"), 6), (Job("para_xx", "query"), 6),
             (Job("mono", "query"), 4))}
    one = {"para_lang": ["de"] * 6, "mono_lang": ["de"] * 4}
    cfg = own_config(temperature=0.1)
    own = lacl_loss(reps, cfg.loss, language_mask=step_language_mask(one, cfg.loss))
    every = lacl_loss(reps, own_config(temperature=0.1, language_pairs="all").loss)
    assert torch.allclose(own.language, every.language) and torch.allclose(own.total, every.total)
    # Sharded: each shard scores its monolingual rows against every pair, over the whole mask's count.
    mixed = {"para_lang": ["de", "fr", "de", "ja", "fr", "de"], "mono_lang": ["fr", "ko", "de", "ja"]}
    mask = step_language_mask(mixed, cfg.loss)
    whole = lacl_loss(reps, cfg.loss, language_mask=mask)
    shares = [lacl_loss(reps, cfg.loss, (i, 2), mask) for i in range(2)]
    blocks = lacl_loss(reps, own_config(temperature=0.1, block_rows=1).loss, (1, 2), mask)
    assert torch.allclose(shares[0].language + shares[1].language, whole.language)
    assert torch.allclose(blocks.language, shares[1].language)
    assert not torch.allclose(whole.language, every.language)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_own_pairs_on_cuda_with_the_mask_built_on_cpu():
    """The trainer builds the mask on the CPU; the loss moves it to the representations' device."""
    mask = step_language_mask(META, own_config().loss)
    cuda = lacl_loss({k: v.cuda() for k, v in REPS.items()}, own_config().loss, (1, 2), mask)
    cpu = lacl_loss(REPS, own_config().loss, (1, 2), mask)
    assert cuda.language.device.type == "cuda" and cuda.language.item() == pytest.approx(cpu.language.item())


# ------------------------------------------------------------------ through the trainer (2 ranks and 1)

@pytest.mark.slow
def test_two_sharded_ranks_train_like_one_and_log_the_language_mix(tmp_path, tiny_model_no_dropout, sampled_data):
    """The gathered languages line up with the gathered rows: 2 ranks (sharded loss, grad cache) log the
    losses of 1 rank (replicated, no cache) step by step, on the same sampled global batches; the
    logged mix is the sampler's, by hand."""
    common = ("train.max_steps=3", "train.log_every=1", "data.language_alpha=0.5", "loss.language_pairs=own",
              "train.parallel_batch_size=6", "train.seed=5")
    torchrun(*train_args(tiny_model_no_dropout, sampled_data, tmp_path / "two", *common, "loss.sharding=sharded"),
             timeout=300)
    run([sys.executable, *train_args(tiny_model_no_dropout, sampled_data, tmp_path / "one", *common,
                                     "train.chunk_size=0")], timeout=300)
    two, one = scalars(tmp_path / "two"), scalars(tmp_path / "one")
    for tag in ("loss/total", "loss/language", "mix/parallel/de", "mix/monolingual/ja"):
        assert len(one[tag]) == (4 if tag.startswith("mix/") else 3), tag
        assert two[tag] == pytest.approx(one[tag], rel=FEW_STEPS_CURVE), tag
    # Step 0: p(lang) = n^0.5 / sum; steps 1-3: the shares among the global draws of stream steps 0-2.
    sampler = LanguageSampler.from_ranges({"de": (0, 12), "fr": (12, 16)}, 6, 0.5)
    de = [sum(i < 12 for i in sampler.indices(6 * s, 6)) / 6 for s in range(3)]
    assert one["mix/parallel/de"] == pytest.approx([12 ** 0.5 / (12 ** 0.5 + 2), *de])
    assert one["mix/parallel/fr"] == pytest.approx([2 / (12 ** 0.5 + 2), *(1 - x for x in de)])
    assert one["mix/monolingual/ja"][0] == pytest.approx(0.25)
