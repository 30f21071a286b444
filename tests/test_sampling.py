"""Language sampling: the mix worked out by hand, its limits (alpha 1 and 0), determinism and resume."""

from collections import Counter

import pytest
from equivalence import SAMPLED_SHARE

from dist_lacl.data.order import LanguageSampler, language_probabilities

# 810 de, 90 fr, 10 ja: interleaved on purpose (not the builders' contiguous layout).
LANGS = (["de"] * 9 + ["fr"]) * 90 + ["ja"] * 10


def test_probabilities_by_hand():
    counts = {"de": 900, "fr": 100, "ja": 0}
    assert language_probabilities(counts, 1.0) == pytest.approx({"de": 0.9, "fr": 0.1})
    assert language_probabilities(counts, 0.0) == pytest.approx({"de": 0.5, "fr": 0.5})
    # alpha 0.5: sqrt(900) = 30, sqrt(100) = 10 -> 0.75, 0.25.
    assert language_probabilities(counts, 0.5) == pytest.approx({"de": 0.75, "fr": 0.25})
    with pytest.raises(ValueError, match="alpha"):
        language_probabilities(counts, -1.0)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_empirical_mix_converges_to_n_alpha(alpha):
    sampler = LanguageSampler(LANGS, seed=3, alpha=alpha)
    n = {"de": 810, "fr": 90, "ja": 10}
    total = sum(v ** alpha for v in n.values())
    expected = {lang: v ** alpha / total for lang, v in n.items()}
    assert sampler.counts == n
    assert sampler.expected_mix() == pytest.approx(expected)
    draws = sampler.indices(0, 40_000)
    assert sampler.mix(draws) == pytest.approx(expected, abs=SAMPLED_SHARE)


def test_alpha_one_is_uniform_over_examples_and_alpha_zero_uniform_over_languages():
    sampler = LanguageSampler(LANGS, seed=0, alpha=1.0)
    hits = Counter(sampler.indices(0, 100_000))
    assert set(hits) == set(range(len(LANGS)))  # every example reachable, ja's too
    assert max(hits.values()) < 1.5 * 110 and min(hits.values()) > 0.5 * 110  # 100,000 / 910 = 110 each
    uniform = LanguageSampler(LANGS, seed=0, alpha=0.0)
    ja = [i for i in uniform.indices(0, 3000) if LANGS[i] == "ja"]
    assert 900 < len(ja) < 1100  # a third of the draws, from 1.1% of the examples


def test_draws_are_a_function_of_seed_and_position_only():
    sampler = LanguageSampler(LANGS, seed=7, alpha=0.3)
    run = sampler.indices(0, 300)
    # A resumed run (a fresh sampler) starting at position 120 draws what the first run drew there,
    # in any chunking: per rank or per step.
    resumed = LanguageSampler(LANGS, seed=7, alpha=0.3)
    assert resumed.indices(120, 180) == run[120:]
    assert sampler.indices(0, 100) + sampler.indices(100, 200) == run
    assert LanguageSampler(LANGS, seed=8, alpha=0.3).indices(0, 300) != run
    assert all(LANGS[i] == lang for i, lang in zip(run, sampler.languages_of(run)))


def test_ranges_and_labels_agree_on_contiguous_data():
    contiguous = ["de"] * 50 + ["fr"] * 30 + ["ja"] * 20
    by_labels = LanguageSampler(contiguous, seed=1, alpha=0.5)
    by_ranges = LanguageSampler.from_ranges({"ja": (80, 100), "de": (0, 50), "fr": (50, 80)}, seed=1, alpha=0.5)
    assert by_labels.indices(5, 500) == by_ranges.indices(5, 500)
    assert by_ranges.languages_of([0, 49, 50, 99]) == ["de", "de", "fr", "ja"]
    with pytest.raises(IndexError):
        by_ranges.languages_of([100])
