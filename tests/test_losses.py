"""Each loss against values worked out by hand; the language loss's properties (docs/method.md, eq. 1-3)."""

import math

import pytest
import torch
from equivalence import AT_MINIMUM, BY_HAND, FP32_LOSS

from dist_lacl.config import LossConfig
from dist_lacl.losses import ir_loss, language_loss, semantic_loss, similarity
from dist_lacl.objective import PASSAGE, QUERY, Job, lacl_loss


def test_similarity_divides_dot_product_by_temperature():
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert similarity(a, b, 0.5).tolist() == [[22.0, 4.0]]


def test_ir_loss_by_hand():
    # Two queries, group size 2 (positive then hard negative): 4 candidates for each query.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # scores (tau = 1): q0 -> [1, 0, 0, 1], positive index 0; q1 -> [0, 0, 2, 1], positive index 2.
    l0 = -math.log(math.e / (math.e + 1 + 1 + math.e))
    l1 = -math.log(math.e**2 / (1 + 1 + math.e**2 + math.e))
    assert ir_loss(q, p, 1.0).item() == pytest.approx((l0 + l1) / 2, rel=BY_HAND)


def test_semantic_loss_by_hand_both_directions():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # scores e.f: [[2, 1], [0, 1]] (tau = 1); targets on the diagonal.
    e_to_f = (-math.log(math.e**2 / (math.e**2 + math.e)) - math.log(math.e / (1 + math.e))) / 2
    # transposed: [[2, 0], [1, 1]]
    f_to_e = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(math.e / (math.e + math.e))) / 2
    assert semantic_loss(e, f, 1.0, symmetric=False).item() == pytest.approx(e_to_f, rel=BY_HAND)
    assert semantic_loss(e, f, 1.0).item() == pytest.approx((e_to_f + f_to_e) / 2, rel=BY_HAND)


def test_language_loss_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    e = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    # sim(z, e) = [2, 0], sim(z, f) = [0, 0] (tau = 1) -> p = [e^2/(e^2+1), 1/2]
    p0 = math.e**2 / (math.e**2 + 1)
    balanced = -(0.5 * math.log(p0) + 0.5 * math.log(1 - p0) + math.log(0.5)) / 2
    assert language_loss(z, e, f, 1.0).item() == pytest.approx(balanced, rel=BY_HAND)
    assert language_loss(z, e, f, 1.0, "squared").item() == pytest.approx((4 + 0) / 2, rel=BY_HAND)


@pytest.mark.parametrize("variant,minimum", [("balanced", math.log(2)), ("squared", 0.0)])
def test_language_loss_minimal_with_zero_gradient_at_equal_similarities(variant, minimum):
    torch.manual_seed(0)
    z = torch.randn(3, 4)
    e = torch.randn(5, 4, requires_grad=True)
    f = e.detach().clone().requires_grad_()  # identical pair members: every sim(z, e) == sim(z, f)
    loss = language_loss(z, e, f, 0.05, variant)
    loss.backward()
    assert loss.item() == pytest.approx(minimum, abs=AT_MINIMUM)
    assert e.grad.abs().max().item() < AT_MINIMUM and f.grad.abs().max().item() < AT_MINIMUM
    # Anywhere else it is larger.
    assert language_loss(z, e.detach() + 0.1 * torch.randn(5, 4), f.detach(), 0.05, variant).item() > minimum


@pytest.mark.parametrize("variant", ["balanced", "squared"])
def test_language_loss_symmetric_in_pair_members(variant):
    torch.manual_seed(1)
    z, e, f = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6, 8)
    assert language_loss(z, e, f, 0.1, variant).item() == pytest.approx(
        language_loss(z, f, e, 0.1, variant).item(), rel=FP32_LOSS)


def test_language_loss_finite_and_correct_for_extreme_scores():
    z = torch.tensor([[1e4, 0.0]])
    e = torch.tensor([[1e4, 0.0]])
    f = torch.tensor([[-1e4, 0.0]])
    e.requires_grad_()
    loss = language_loss(z, e, f, 0.01)
    loss.backward()
    # diff = 2e10: -0.5 log p - 0.5 log(1-p) = 0.5 * softplus(diff) ~= diff / 2, exactly representable.
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(1e10, rel=BY_HAND)
    assert torch.isfinite(e.grad).all()


def test_weighted_total_and_zero_weights():
    torch.manual_seed(2)
    reps = {"query": torch.randn(2, 4), "passage": torch.randn(4, 4), "para_en": torch.randn(3, 4),
            "para_xx": torch.randn(3, 4), "mono": torch.randn(5, 4)}
    cfg = LossConfig(temperature=0.5, semantic_weight=0.3, language_weight=2.0)
    terms = lacl_loss({Job(role, "passage" if role == "passage" else "query"): r for role, r in reps.items()}, cfg)
    ir = ir_loss(reps["query"], reps["passage"], 0.5)
    sem = semantic_loss(reps["para_en"], reps["para_xx"], 0.5)
    lang = language_loss(reps["mono"], reps["para_en"], reps["para_xx"], 0.5)
    assert terms.total.item() == pytest.approx((ir + 0.3 * sem + 2.0 * lang).item(), rel=BY_HAND)
    ir_only = lacl_loss({QUERY: reps["query"], PASSAGE: reps["passage"]},
                        LossConfig(temperature=0.5, semantic_weight=0, language_weight=0))
    assert ir_only.total.item() == pytest.approx(ir.item()) and ir_only.semantic is None
    assert set(terms.scalars()) == {"loss/total", "loss/ir", "loss/semantic", "loss/language"}


def test_aux_losses_average_over_towers():
    torch.manual_seed(3)
    reps = {QUERY: torch.randn(2, 4), PASSAGE: torch.randn(4, 4)}
    for tower in ("query", "passage"):
        reps.update({Job("para_en", tower): torch.randn(3, 4), Job("para_xx", tower): torch.randn(3, 4),
                     Job("mono", tower): torch.randn(2, 4)})
    terms = lacl_loss(reps, LossConfig(temperature=1.0))
    expected = sum(semantic_loss(reps[Job("para_en", t)], reps[Job("para_xx", t)], 1.0) for t in ("query", "passage")) / 2
    assert terms.semantic.item() == pytest.approx(expected.item(), rel=BY_HAND)
