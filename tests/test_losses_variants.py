"""The language loss's options (its own temperature, own-language pairs: dist_lacl/losses.py) against values
worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch
from equivalence import BY_HAND, FOUR_DECIMALS, FP32_LOSS

from dist_lacl.config import LossConfig
from dist_lacl.losses import language_ids, language_loss, language_temperature, same_language_mask


def _h(d: float) -> float:
    """The balanced loss of one (z, pair) entry with score difference d."""
    return 0.5 * (math.log1p(math.exp(d)) + math.log1p(math.exp(-d)))


def test_language_temperature_defaults_to_the_shared_one():
    assert language_temperature(LossConfig()) == LossConfig().temperature
    assert language_temperature(SimpleNamespace(temperature=0.05, language_temperature=None)) == 0.05
    assert language_temperature(SimpleNamespace(temperature=0.05, language_temperature=0.5)) == 0.5


def test_a_separate_temperature_by_hand():
    # z . e = 1, z . f = 0: diff = 1 / tau.
    z, e, f = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert language_loss(z, e, f, 1.0).item() == pytest.approx(_h(1.0), rel=BY_HAND)   # 0.8133
    assert language_loss(z, e, f, 0.5).item() == pytest.approx(_h(2.0), rel=BY_HAND)   # 1.1269
    # At tau 0.05 a gap of 0.1 sits where the gradient 0.5 tanh(diff / 2) is already 76% of its cap.
    assert 0.5 * math.tanh(0.1 / 0.05 / 2) / 0.5 == pytest.approx(0.7616, abs=FOUR_DECIMALS)


# Two monolingual rows (de = 0, ja = 2) and three pairs (de, fr = 1, de).
Z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
E = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
F_ = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
MONO, PAIRS = torch.tensor([0, 2]), torch.tensor([0, 1, 0])
# diff = sim(z, e) - sim(z, f) at tau 1: row de [1, 0, 0], row ja [0, 0, 1].


def test_same_language_mask_by_hand():
    assert same_language_mask(MONO, PAIRS, fallback=False).tolist() == [[True, False, True], [False, False, False]]
    # ja has no pair in the batch: it is compared with every pair.
    assert same_language_mask(MONO, PAIRS).tolist() == [[True, False, True], [True, True, True]]


def test_masked_language_loss_by_hand():
    with_fallback, strict = same_language_mask(MONO, PAIRS), same_language_mask(MONO, PAIRS, fallback=False)
    # squared: selected entries de (1, 0), ja (0, 0, 1) -> 2 / 5; strict: de only -> 1 / 2.
    assert language_loss(Z, E, F_, 1.0, "squared", mask=with_fallback).item() == pytest.approx(0.4)
    assert language_loss(Z, E, F_, 1.0, "squared", mask=strict).item() == pytest.approx(0.5)
    expected = (2 * _h(1.0) + 3 * math.log(2)) / 5
    assert language_loss(Z, E, F_, 1.0, mask=with_fallback).item() == pytest.approx(expected, rel=BY_HAND)
    # The unmasked loss: every entry, (1 + 1) / 6.
    assert language_loss(Z, E, F_, 1.0, "squared").item() == pytest.approx(1 / 3)


def test_all_true_mask_is_the_default_loss_and_an_empty_one_is_zero_with_a_graph():
    torch.manual_seed(0)
    z, e, f = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3), torch.randn(5, 3)
    full = torch.ones(4, 5, dtype=torch.bool)
    for variant in ("balanced", "squared"):
        assert language_loss(z, e, f, 0.1, variant, mask=full).item() == pytest.approx(
            language_loss(z, e, f, 0.1, variant).item(), rel=FP32_LOSS)
    empty = language_loss(z, e, f, 0.1, mask=torch.zeros(4, 5, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and z.grad.abs().max().item() == 0.0
    with pytest.raises(ValueError, match="variant"):
        language_loss(z, e, f, 0.1, "cubic", mask=full)


def test_language_ids_follow_the_vocabulary():
    assert language_ids(["ja", "de", "ja"], ["de", "fr", "ja"]).tolist() == [2, 0, 2]


def test_lacl_loss_uses_the_language_temperature():
    from dist_lacl.objective import PASSAGE, QUERY, Job, lacl_loss

    torch.manual_seed(0)
    z, e, f = Job("mono", "query"), Job("para_en", "query"), Job("para_xx", "query")
    reps = {job: torch.randn(n, 4) for job, n in ((QUERY, 2), (PASSAGE, 4), (e, 3), (f, 3), (z, 5))}
    own = lacl_loss(reps, LossConfig(temperature=0.05, language_temperature=0.5))
    shared = lacl_loss(reps, LossConfig(temperature=0.05))
    assert torch.allclose(own.language, language_loss(reps[z], reps[e], reps[f], 0.5))
    assert torch.allclose(shared.language, language_loss(reps[z], reps[e], reps[f], 0.05))
    assert torch.allclose(own.ir, shared.ir) and torch.allclose(own.semantic, shared.semantic)
