"""Alignment diagnostics: values worked out by hand, and device placement checked on the `meta` device
(a tensor built on the CPU next to CUDA representations fails there the same way it would on a GPU)."""

import pytest
import torch

from dist_lacl.diagnostics import centroid_predictions, language_centroid_accuracy, parallel_similarity


def test_language_centroid_accuracy_by_hand():
    # Two tight language clusters: every point is nearest its own leave-one-out centroid.
    reps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert language_centroid_accuracy(reps, ["de", "de", "fr", "fr"]) == 1.0
    # Interleaved: each point's own centroid (without it) is the other language's point -> 0.
    assert language_centroid_accuracy(reps, ["de", "fr", "de", "fr"]) == 0.0
    assert torch.isnan(torch.tensor(language_centroid_accuracy(reps, ["de", "de", "de", "fr"])))


def test_centroid_predictions_stay_on_the_representations_device():
    x = torch.randn(6, 4, device="meta")
    label = torch.tensor([0, 0, 1, 1, 2, 2], device="meta")
    assert centroid_predictions(x, label, 3).device.type == "meta"
    with pytest.raises(RuntimeError, match="device"):  # the old CPU-built labels, next to device reps
        centroid_predictions(x, torch.tensor([0, 0, 1, 1, 2, 2]), 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_diagnostics_on_cuda_representations():
    reps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], device="cuda")
    assert language_centroid_accuracy(reps, ["de", "de", "fr", "fr"]) == 1.0
    assert parallel_similarity(reps[:2], reps[2:])["align/pair_cos"] < 1.0
    from dist_lacl.diagnostics import language_linear_probe_accuracy
    assert language_linear_probe_accuracy(reps.repeat(3, 1), ["de", "de", "fr", "fr"] * 3) == 1.0


def test_linear_probe_fits_separable_languages_and_not_xor():
    from dist_lacl.diagnostics import linear_probe_predictions

    # Three languages along three axes: a linear probe separates them, the held-out points included.
    torch.manual_seed(0)
    centers = torch.eye(3)
    x = (centers.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 3))
    y = torch.arange(3).repeat_interleave(4)
    assert linear_probe_predictions(x[::2], y[::2], x[1::2], 3).tolist() == y[1::2].tolist()
    # XOR: no line separates {(1,1), (-1,-1)} from {(1,-1), (-1,1)}, so at most 3 of the 4 training
    # points can be right, whatever the fit.
    xor = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert (linear_probe_predictions(xor, labels, xor, 2) == labels).sum().item() <= 3


def test_language_linear_probe_accuracy_by_hand():
    from dist_lacl.diagnostics import language_linear_probe_accuracy

    torch.manual_seed(0)
    # Separable: de near one axis, fr near the other; 10 each, 3 of each held out.
    reps = torch.cat([torch.tensor([1.0, 0.0]) + 0.1 * torch.randn(10, 2), torch.tensor([0.0, 1.0]) + 0.1 * torch.randn(10, 2)])
    langs = ["de"] * 10 + ["fr"] * 10
    assert language_linear_probe_accuracy(reps, langs) == 1.0
    assert language_linear_probe_accuracy(reps, langs + ["ja"]) == 1.0  # one ja: left out, like the centroid rule
    # No information at all: every row the same vector, so every held-out row gets the same class,
    # which is right for exactly the 3 held-out rows of one language out of 6.
    same = torch.ones(20, 2)
    acc = language_linear_probe_accuracy(same, langs)
    assert acc == 0.5
    assert language_linear_probe_accuracy(same, langs) == acc  # deterministic
    assert torch.isnan(torch.tensor(language_linear_probe_accuracy(reps[:2], ["de", "fr"])))


@pytest.mark.parametrize("towers", [{}, {"shared_encoder": False, "aux_towers": "query"},
                                    {"shared_encoder": False, "aux_towers": "passage"},
                                    {"shared_encoder": False, "aux_towers": "both"}],
                         ids=["shared", "separate-query", "separate-passage", "separate-both"])
def test_align_diagnostics_for_every_tower_layout(towers):
    """Every layout logs the align/* scalars (aux sentences encoded by the passage tower alone used to
    log none: the diagnostics looked only for the query tower's)."""
    from dist_lacl.config import ModelConfig
    from dist_lacl.objective import diagnostics, step_jobs

    inputs = {"input_ids": torch.ones(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    batch = {role: inputs for role in ("query", "passage", "para_en", "para_xx", "mono")}
    jobs = step_jobs(batch, ModelConfig(**towers))
    torch.manual_seed(0)
    reps = {job: torch.randn(4, 8) for job in jobs}
    meta = {"para_lang": ["de", "fr", "de", "fr"], "mono_lang": ["de", "fr", "ja", "ja"]}
    scalars = diagnostics(reps, meta)
    assert set(scalars) == {"align/pair_cos", "align/nonpair_cos", "align/gap", "align/lang_id_acc"}
    assert all(v == v for v in scalars.values())  # no NaN: every language appears twice


def test_held_out_language_id_keeps_translation_groups_whole():
    from dist_lacl.diagnostics import _split_by_group, held_out_language_id

    groups = [i % 10 for i in range(30)]  # ten meanings, three languages each
    train, test = _split_by_group(groups, 0.3, seed=5)
    assert sorted(train + test) == list(range(30)) and len(test) == 9
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    # Translations identical: a held-out sentence's twins are not in training, so neither rule beats chance.
    reps = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))[groups]
    langs = [("en", "de", "fr")[i // 10] for i in range(30)]
    found = held_out_language_id(reps, langs, groups=groups)
    assert found.names == ["de", "en", "fr"] and found.chance() == pytest.approx(1 / 3)
    assert found.accuracy(found.centroid) == found.accuracy(found.linear) == pytest.approx(1 / 3)


def test_translation_retrieval_by_hand():
    from dist_lacl.diagnostics import translation_retrieval

    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert translation_retrieval(e, e) == {"en_to_xx": 1.0, "xx_to_en": 1.0}
    swapped = e[[1, 0, 2]]  # the first two translations swapped: only the third is found
    assert translation_retrieval(e, swapped) == {"en_to_xx": pytest.approx(1 / 3), "xx_to_en": pytest.approx(1 / 3)}
